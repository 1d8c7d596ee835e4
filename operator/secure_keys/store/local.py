"""Owns ``LocalStore``: keys kept in the local store, opened, read and changed.

Every key version is sealed with the cluster's envelope (``core.envelope``): a fresh
AES-256-GCM data key per version, the binding (store id, key name, version) in the
associated data, the data key wrapped by the store's KMS provider. That provider is the
local password-derived keyring (``core.kms.local``; the keyring itself, which holds no
secret, is kept in ``keys.db``) or any provider of the registry (``core.kms.registry``:
the OS keychain, AWS, Google Cloud, Azure, PKCS#11), as ``config.json`` says.

Opening the store unwraps its own secret key (sealed the same way, in ``keys.db``); the
audit log's key comes from it. A wrong password is refused after the KDF. Guessing is
throttled across processes (``_begin_attempt``): under the writers' lock, each attempt
is counted in ``keys.db`` *before* its KDF runs and sets the earliest time of the next
one (from the third in a row: 1 s, 2 s, 4 s, ... up to 30 s later); an attempt before
that time is refused at once (``TooManyAttempts``, saying when to retry), nothing is
slept on, and a right password (and TOTP code) resets the count. With TOTP on, a code
is checked (and a code already used is refused) after the password.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secure_keys.core import envelope
from secure_keys.core.auditchain import ChainBreak, derive_audit_key
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.local import PROVIDER as LOCAL_PROVIDER
from secure_keys.core.kms.local import LocalKeyring, LocalKms
from secure_keys.core.kms.registry import KmsConfig, KmsRegistry, default_registry
from secure_keys.core.memory import random_secret, zero
from secure_keys.core.stamps import format_stamp, parse_stamp
from secure_keys.store import lifecycle, totp
from secure_keys.store.audit import AuditLog
from secure_keys.store.config import StoreConfig, new_store_id
from secure_keys.store.db import Database
from secure_keys.store.errors import (
    AuthenticationFailed,
    KeyExists,
    KeyNotFound,
    MfaRequired,
    StoreCorrupt,
    StoreError,
    StoreExists,
    TooManyAttempts,
    quoted,
)
from secure_keys.store.layout import FILE_MODE, StoreLayout
from secure_keys.store.lifecycle import VersionRow
from secure_keys.store.rowmac import derive_row_key, row_mac, row_mac_valid

__all__ = ["KeyInfo", "LocalStore", "VersionInfo", "failure_delay"]

Password = str | bytes | bytearray
Clock = Callable[[], dt.datetime]

_STORE_KEY = "store-key"
_TOTP_SECRET = "totp-secret"  # noqa: S105 - the name of a meta row
_META_KEYRING = "keyring"
_META_FAILURES = "auth.failures"
_META_NOT_BEFORE = "auth.not-before"
_META_TOTP_STEP = "totp.last-step"
_COLUMNS = (
    "name, version, state, created_at, activated_at, archived_at, destroyed_at, "
    "kms_provider, kms_key_id, kms_key_version"
)


MAX_DELAY = 30.0


def failure_delay(failures: int) -> float:
    """Seconds before the next attempt is allowed after ``failures`` in a row."""
    return 0.0 if failures < 3 else float(min(2 ** (failures - 3), MAX_DELAY))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What ``list`` shows of one version: no secret."""

    version: int
    state: lifecycle.State
    created_at: dt.datetime
    kms_provider: str
    kms_key_id: str
    kms_key_version: str
    activated_at: dt.datetime | None
    archived_at: dt.datetime | None
    destroyed_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    versions: tuple[VersionInfo, ...]

    @property
    def active(self) -> VersionInfo | None:
        return next((v for v in self.versions if v.state == "Active"), None)


def _row(values: Sequence[Any]) -> VersionRow:
    def stamp(value: Any) -> dt.datetime | None:
        return None if value is None else parse_stamp(str(value))

    name, version, state, created, activated, archived, destroyed, provider, kid, kver = values
    if state not in lifecycle.STATES:
        raise ValueError(f"unknown state {str(state)[:16]!r}")
    return VersionRow(
        name=str(name),
        version=int(version),
        state=state,
        created_at=parse_stamp(str(created)),
        kms_provider=str(provider),
        kms_key_id=str(kid),
        kms_key_version=str(kver),
        activated_at=stamp(activated),
        archived_at=stamp(archived),
        destroyed_at=stamp(destroyed),
    )


def _info(row: VersionRow) -> VersionInfo:
    return VersionInfo(
        row.version,
        row.state,
        row.created_at,
        row.kms_provider,
        row.kms_key_id,
        row.kms_key_version,
        row.activated_at,
        row.archived_at,
        row.destroyed_at,
    )


def _stamp(value: dt.datetime | None) -> str | None:
    return None if value is None else format_stamp(value)


def _read_config(layout: StoreLayout) -> StoreConfig:
    try:
        text = layout.config.read_text()
    except UnicodeDecodeError:
        raise StoreCorrupt(f"{layout.config} is not UTF-8 text") from None
    return StoreConfig.from_json(text, where=str(layout.config))


def _write_private(path: Path, data: str) -> None:
    """Write a new file 0600, fsync'ed, then fsync its directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LocalStore:
    """An opened local store. Build one with ``init`` or ``open``; ``close`` when done."""

    def __init__(
        self,
        layout: StoreLayout,
        config: StoreConfig,
        db: Database,
        kms: KmsProvider,
        store_key: bytearray,
        *,
        clock: Clock,
    ) -> None:
        self.layout = layout
        self.config = config
        self._db = db
        self._kms = kms
        self._clock = clock
        audit_key = derive_audit_key(store_key)
        self._row_key = derive_row_key(store_key)
        zero(store_key)
        self._audit = AuditLog(layout.audit_log, audit_key, db.lock)
        zero(audit_key)

    @property
    def kms_key_version(self) -> str:
        """The KMS key version new data keys are wrapped with."""
        return self._kms.key_version()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.layout.directory)!r}, kms={self._kms.name})"

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        zero(self._row_key)

    # Creating and opening ------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        kms_provider: str = LOCAL_PROVIDER,
        kms_key_id: str | None = None,
        kms_options: dict[str, str] | None = None,
        password: Password | None = None,
        iterations: int = DEFAULT_ITERATIONS,
        grace_seconds: int | None = None,
        retain: int | None = None,
        totp_secret: str | None = None,
        registry: KmsRegistry | None = None,
        clock: Clock = _utcnow,
    ) -> LocalStore:
        """Create a store in ``directory`` (0700) and return it opened.

        With the ``local`` provider a ``password`` is required; other providers are built
        from the registry with ``kms_key_id`` and ``kms_options``. ``totp_secret`` (base32)
        turns the TOTP second factor on.
        """
        layout = StoreLayout(directory)
        if layout.exists():
            raise StoreExists(f"{directory} already holds a store; nothing was changed")
        store_id = new_store_id()
        extra: dict[str, Any] = {}
        if grace_seconds is not None:
            extra["grace_seconds"] = grace_seconds
        if retain is not None:
            extra["retain"] = retain
        keyring: LocalKeyring | None = None
        if kms_provider == LOCAL_PROVIDER:
            if password is None:
                raise StoreError("the local keyring needs a password (--password-file)")
            keyring = LocalKeyring.create(store_id, password, iterations=iterations)
            kms: KmsProvider = LocalKms.unlock(keyring, [password])
            kms_key_id = store_id
        else:
            if not kms_key_id:
                raise StoreError(f"the {kms_provider!r} provider needs a key id (--kms-key-id)")
            kms = _registry_kms(registry, kms_provider, kms_key_id, kms_options or {})
        try:
            config = StoreConfig(
                store_id,
                kms_provider,
                kms_key_id,
                kms_options or {},
                mfa=totp_secret is not None,
                **extra,
            )
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        if totp_secret is not None:
            totp.check_secret(totp_secret)
        layout.make_directory()
        db = Database.create(layout.database, layout.lock)
        layout.touch_private(layout.lock)
        store_key = random_secret(32)
        try:
            with db.write() as conn:
                if keyring is not None:
                    _set_meta(conn, _META_KEYRING, keyring.to_json().encode())
                _set_meta(conn, _META_FAILURES, b"0")
                _set_meta(conn, _STORE_KEY, _seal_internal(store_id, _STORE_KEY, store_key, kms))
                if totp_secret is not None:
                    secret = bytearray(totp_secret.encode())
                    try:
                        sealed = _seal_internal(store_id, _TOTP_SECRET, secret, kms)
                    finally:
                        zero(secret)
                    _set_meta(conn, _TOTP_SECRET, sealed)
            # config.json last: a directory without it is not yet a store.
            _write_private(layout.config, config.to_json())
            store = cls(layout, config, db, kms, bytearray(store_key), clock=clock)
        except BaseException:
            db.close()
            raise
        finally:
            zero(store_key)
        store._record("store.init", kms=kms_provider, mfa=config.mfa)
        return store

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        password: Password | None = None,
        mfa_token: str | None = None,
        registry: KmsRegistry | None = None,
        clock: Clock = _utcnow,
    ) -> LocalStore:
        """Open the store in ``directory``: check modes and the file, unlock, check TOTP.

        When a password or a TOTP code is checked, the attempt is counted first and may be
        refused at once (``TooManyAttempts``): see the module's docstring."""
        layout = StoreLayout(directory)
        layout.check()
        config = _read_config(layout)
        local = config.kms_provider == LOCAL_PROVIDER
        if local and password is None:
            raise AuthenticationFailed(
                "this store needs its password (--password-file, or a prompt)"
            )
        if config.mfa and mfa_token is None:
            raise MfaRequired("this store asks for a TOTP code (from your authenticator app)")
        db = Database.open(layout.database, layout.lock)
        try:
            gated = local or config.mfa
            failures = _begin_attempt(db, clock) if gated else 0
            with db.read() as conn:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            sealed_store_key = meta.get(_STORE_KEY)
            if not isinstance(sealed_store_key, bytes):
                raise StoreCorrupt(f"{db.path} has no store key: not a complete store")
            if local:
                assert password is not None  # noqa: S101 - checked above
                kms: KmsProvider = _unlock_local(db, meta, password)
            else:
                kms = _registry_kms(
                    registry, config.kms_provider, config.kms_key_id, config.kms_options
                )
            store_key = _open_internal(config.store_id, _STORE_KEY, sealed_store_key, kms)
            if config.mfa:
                assert mfa_token is not None  # noqa: S101 - checked above
                _check_totp(db, config, meta, kms, mfa_token, clock)
            if gated:
                _end_attempts(db)
            store = cls(layout, config, db, kms, store_key, clock=clock)
        except BaseException:
            db.close()
            raise
        if failures:
            store._record("auth.failures", count=failures)
        return store

    # Keys ---------------------------------------------------------------------------

    def _binding(self, name: str, version: int) -> KeyBinding:
        return KeyBinding(self.config.store_id, name, version)

    def _check_name(self, name: str) -> None:
        try:
            KeyBinding(self.config.store_id, name, 1)
        except ValueError:
            raise StoreError(
                f"key name {quoted(name)} is not valid: lowercase letters, digits, '-' and "
                "'.', starting and ending with a letter or digit (as a Kubernetes name)"
            ) from None

    def _seal(self, name: str, version: int, value: bytes | bytearray) -> envelope.Envelope:
        if not 1 <= len(value) <= envelope.MAX_PLAINTEXT_SIZE:
            raise StoreError(f"a value must be 1 to {envelope.MAX_PLAINTEXT_SIZE} bytes")
        try:
            return envelope.seal(value, self._binding(name, version), self._kms)
        except KmsError as exc:
            raise _kms_error(exc) from None

    def _checked(self, values: Sequence[Any]) -> VersionRow:
        """A row read with ``_COLUMNS`` and then ``mac``, parsed and its MAC checked."""
        try:
            row = _row(values[:-1])
        except (ValueError, TypeError) as exc:
            raise StoreCorrupt(f"{self._db.path}: a version row is malformed ({exc})") from None
        if not row_mac_valid(self._row_key, self.config.store_id, row, values[-1]):
            raise StoreCorrupt(
                f"{self._db.path}: key {quoted(row.name)} version {row.version} fails its "
                "integrity check (its state or times were changed outside secure-keys); "
                "nothing was returned. Restore keys.db from a backup."
            )
        return row

    def _rows(self, conn: sqlite3.Connection, name: str) -> list[VersionRow]:
        cursor = conn.execute(
            f"SELECT {_COLUMNS}, mac FROM versions WHERE name = ? ORDER BY version",  # noqa: S608
            (name,),
        )
        return [self._checked(values) for values in cursor]

    def _mac(self, row: VersionRow) -> bytes:
        return row_mac(self._row_key, self.config.store_id, row)

    def _insert(self, conn: sqlite3.Connection, row: VersionRow, sealed: envelope.Envelope) -> None:
        conn.execute(
            f"INSERT INTO versions ({_COLUMNS}, envelope, mac) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                row.version,
                row.state,
                format_stamp(row.created_at),
                _stamp(row.activated_at),
                _stamp(row.archived_at),
                _stamp(row.destroyed_at),
                row.kms_provider,
                row.kms_key_id,
                row.kms_key_version,
                sealed.to_bytes(),
                self._mac(row),
            ),
        )

    def _update(self, conn: sqlite3.Connection, rows: Sequence[VersionRow]) -> None:
        """Write the new state and times of ``rows`` (each read and checked before), with
        their new MAC, in the caller's transaction."""
        for row in rows:
            destroyed = row.state == "Destroyed"
            conn.execute(
                "UPDATE versions SET state = ?, activated_at = ?, archived_at = ?, "
                "destroyed_at = ?, envelope = CASE WHEN ? THEN NULL ELSE envelope END, "
                "mac = ? WHERE name = ? AND version = ?",
                (
                    row.state,
                    _stamp(row.activated_at),
                    _stamp(row.archived_at),
                    _stamp(row.destroyed_at),
                    destroyed,
                    self._mac(row),
                    row.name,
                    row.version,
                ),
            )

    def _grace(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.config.grace_seconds)

    def _new_version(
        self, name: str, value: bytes | bytearray, *, first: bool, stage: bool = False
    ) -> int:
        self._check_name(name)
        now = self._clock()
        with self._db.write() as conn:
            rows = self._rows(conn, name)
            current = lifecycle.active(rows)
            if first and current is not None:
                raise KeyExists(f"key {name!r} exists; `rotate` gives it a new value")
            if not first and current is None:
                raise KeyNotFound(f"no key {name!r}; `add` creates it")
            if any(r.state == "Pending" for r in rows):
                raise StoreError(f"key {name!r} has a staged version: `promote` it first")
            version = lifecycle.next_version(rows)
            sealed = self._seal(name, version, value)
            wrapped = sealed.wrapped
            row = VersionRow(
                name,
                version,
                "Pending",
                now,
                wrapped.provider,
                wrapped.key_id,
                wrapped.key_version,
            )
            self._insert(conn, row, sealed)
            if not stage:
                self._promote(conn, [*rows, row], version, now)
        event = "key.add" if first else ("key.stage" if stage else "key.rotate")
        self._record(event, key=name, version=version)
        return version

    def _promote(
        self, conn: sqlite3.Connection, rows: list[VersionRow], version: int, now: dt.datetime
    ) -> None:
        changed = lifecycle.promote(rows, version, now)
        self._update(conn, changed)
        by_version = {r.version: r for r in rows} | {r.version: r for r in changed}
        self._update(
            conn,
            lifecycle.sweep(list(by_version.values()), now, self._grace(), self.config.retain),
        )

    def add(self, name: str, value: bytes | bytearray) -> int:
        """Store a new key; its version 1 is Active. The caller still owns ``value``."""
        return self._new_version(name, value, first=True)

    def rotate(self, name: str, value: bytes | bytearray, *, stage: bool = False) -> int:
        """A new version of ``name``: Active now (the old one Archived), or Pending."""
        return self._new_version(name, value, first=False, stage=stage)

    def promote(self, name: str) -> int:
        """Make the staged (Pending) version of ``name`` Active."""
        self._check_name(name)
        now = self._clock()
        with self._db.write() as conn:
            rows = self._rows(conn, name)
            pending = [r for r in rows if r.state == "Pending"]
            if not pending:
                raise KeyNotFound(f"key {name!r} has no staged version")
            version = pending[-1].version
            self._promote(conn, rows, version, now)
        self._record("key.promote", key=name, version=version)
        return version

    def get(self, name: str, *, previous: bool = False) -> bytearray:
        """The value of the Active version (or of the previous one in its grace period),
        in a fresh ``bytearray`` the caller zeroes."""
        now = self._clock()
        with self._db.read() as conn:
            rows = self._rows(conn, name)
            row = (
                lifecycle.previous(rows, now, self._grace()) if previous else lifecycle.active(rows)
            )
            if row is None:
                what = "previous version in its grace period" if previous else "live version"
                raise KeyNotFound(f"key {quoted(name)} has no {what}")
            (blob,) = conn.execute(
                "SELECT envelope FROM versions WHERE name = ? AND version = ?",
                (name, row.version),
            ).fetchone()
        if not isinstance(blob, bytes):
            raise StoreCorrupt(f"{self._db.path}: {name} v{row.version} has no envelope")
        try:
            value = envelope.open(blob, self._binding(name, row.version), self._kms)
        except InvalidEnvelope as exc:
            self._record("key.get", key=name, version=row.version, result=exc.reason)
            raise StoreCorrupt(
                f"key {name!r} version {row.version} does not open ({exc.reason}): the "
                f"database was altered or damaged; no value was returned"
            ) from None
        except KmsError as exc:
            raise _kms_error(exc) from None
        self._record("key.get", key=name, version=row.version, previous=previous, durable=False)
        return value

    @contextmanager
    def value(self, name: str, *, previous: bool = False) -> Iterator[bytearray]:
        """``get`` for a ``with`` block: the value is zeroed when the block ends."""
        buffer = self.get(name, previous=previous)
        try:
            yield buffer
        finally:
            zero(buffer)

    def list_keys(self) -> list[KeyInfo]:
        """Every key with a version that is not Destroyed, by name."""
        with self._db.read() as conn:
            cursor = conn.execute(
                f"SELECT {_COLUMNS}, mac FROM versions ORDER BY name, version"  # noqa: S608
            )
            rows = [self._checked(values) for values in cursor]
        keys: dict[str, list[VersionRow]] = {}
        for row in rows:
            keys.setdefault(row.name, []).append(row)
        return [
            KeyInfo(name, tuple(_info(r) for r in versions))
            for name, versions in keys.items()
            if any(r.state != "Destroyed" for r in versions)
        ]

    def remove(self, name: str) -> list[int]:
        """Destroy every version of ``name``: their envelopes (and data keys) are deleted.

        Version numbers are kept, so a later ``add`` of the name goes on from them."""
        self._check_name(name)
        now = self._clock()
        with self._db.write() as conn:
            rows = self._rows(conn, name)
            live = [r for r in rows if r.state != "Destroyed"]
            if not live:
                raise KeyNotFound(f"no key {quoted(name)}")
            self._update(conn, [replace(r, state="Destroyed", destroyed_at=now) for r in live])
        versions = [r.version for r in live]
        self._record("key.rm", key=name, versions=versions)
        return versions

    # The KEK ------------------------------------------------------------------------

    def rewrap(self) -> int:
        """Move every envelope to the KMS key's newest version (a KEK rotation); the
        sealed values are kept byte for byte. Returns how many envelopes moved."""
        moved = self._rewrap_all(self._kms)
        self._record("store.rewrap", moved=moved, kms_key_version=self._kms.key_version())
        return moved

    def _rewrap_all(
        self,
        kms: KmsProvider,
        *,
        first: Callable[[sqlite3.Connection], None] | None = None,
        then: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        moved = 0
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            cursor = conn.execute(
                f"SELECT envelope, {_COLUMNS}, mac FROM versions "  # noqa: S608
                "WHERE envelope IS NOT NULL"
            )
            for blob, *values in cursor.fetchall():
                row = self._checked(values)  # never re-MAC a row that was altered
                new = self._rewrap_one(blob, self._binding(row.name, row.version), kms)
                if new is not None:
                    moved_row = replace(row, kms_key_version=new.wrapped.key_version)
                    conn.execute(
                        "UPDATE versions SET envelope = ?, kms_key_version = ?, mac = ? "
                        "WHERE name = ? AND version = ?",
                        (
                            new.to_bytes(),
                            moved_row.kms_key_version,
                            self._mac(moved_row),
                            row.name,
                            row.version,
                        ),
                    )
                    moved += 1
            for meta_key in (_STORE_KEY, _TOTP_SECRET):
                found = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key,)).fetchone()
                if found is None:
                    continue
                binding = _internal_binding(self.config.store_id, meta_key)
                new = self._rewrap_one(found[0], binding, kms)
                if new is not None:
                    _set_meta(conn, meta_key, new.to_bytes())
            if then is not None:
                then(conn)
        return moved

    def _rewrap_one(
        self, blob: bytes, binding: KeyBinding, kms: KmsProvider
    ) -> envelope.Envelope | None:
        try:
            old = envelope.Envelope.from_bytes(blob)
            new = envelope.rewrap(old, binding, kms)
        except envelope.EnvelopeFormatError as exc:
            raise StoreCorrupt(f"{binding}: {exc}") from None
        except InvalidEnvelope as exc:
            raise StoreCorrupt(f"{binding} does not open ({exc.reason}); nothing changed") from None
        except KmsError as exc:
            raise _kms_error(exc) from None
        return None if new is old else new

    def change_password(
        self, current: Password, new: Password, *, iterations: int | None = None
    ) -> None:
        """Move the local keyring to a new password: a new KEK version derived from
        ``new``, every envelope rewrapped to it, and the old version dropped, in one
        transaction. Only for the ``local`` provider."""
        if self.config.kms_provider != LOCAL_PROVIDER:
            raise StoreError(
                f"this store's data keys are wrapped by {self.config.kms_provider!r}, not by a "
                "password: there is no password to change"
            )
        with self._db.read() as conn:
            found = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (_META_KEYRING,)
            ).fetchone()
        keyring = _parse_keyring(found, self._db.path)
        try:
            LocalKms.unlock(keyring, [current])  # passwd leaves the keyring one version
        except KmsDenied:
            raise AuthenticationFailed("the current password is wrong; nothing changed") from None
        grown = keyring.with_new_version(new, iterations=iterations)
        both = LocalKms.unlock(grown, [new, current])
        trimmed = LocalKeyring(grown.key_id, (grown.newest,))

        def unchanged(conn: sqlite3.Connection) -> None:
            now = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_KEYRING,)).fetchone()
            if now != found:
                raise StoreError("another process changed the password meanwhile; nothing changed")

        def save(conn: sqlite3.Connection) -> None:
            _set_meta(conn, _META_KEYRING, trimmed.to_json().encode())

        self._rewrap_all(both, first=unchanged, then=save)
        self._kms = both  # can also unwrap the old version: harmless, and dropped on close
        self._record("store.passwd", kek_version=grown.newest.version)

    # Audit --------------------------------------------------------------------------

    def _record(self, event: str, *, durable: bool = True, **fields: Any) -> None:
        record = {
            "time": format_stamp(self._clock()),
            "event": event,
            "store": self.config.store_id,
            "pid": os.getpid(),
            "uid": os.getuid(),
            **fields,
        }
        self._audit.append(record, durable=durable)

    def audit_records(self) -> list[dict[str, Any]]:
        return list(self._audit.records())

    def verify_audit(self) -> tuple[int, ChainBreak | None]:
        """How many audit records there are, and the first that does not verify."""
        return self._audit.verify()


# Helpers ---------------------------------------------------------------------------


def _set_meta(conn: sqlite3.Connection, key: str, value: bytes) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _int_meta(meta: dict[str, Any], key: str, path: Path) -> int:
    raw = meta.get(key, b"0")
    try:
        return int(bytes(raw).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise StoreCorrupt(f"{path}: meta {key} is malformed") from None


def _internal_binding(store_id: str, name: str) -> KeyBinding:
    # A namespace of its own, so no key the user adds can be confused with these.
    return KeyBinding(f"{store_id}-internal", name, 1)


def _seal_internal(store_id: str, name: str, value: bytearray, kms: KmsProvider) -> bytes:
    try:
        return envelope.seal(value, _internal_binding(store_id, name), kms).to_bytes()
    except KmsError as exc:
        raise _kms_error(exc) from None


def _open_internal(store_id: str, name: str, blob: bytes, kms: KmsProvider) -> bytearray:
    try:
        return envelope.open(blob, _internal_binding(store_id, name), kms)
    except InvalidEnvelope as exc:
        raise StoreCorrupt(
            f"the store's {name} does not open ({exc.reason}): keys.db was altered, or "
            "config.json names another KMS key than the one the store was made with"
        ) from None
    except KmsError as exc:
        raise _kms_error(exc) from None


def _kms_error(exc: KmsError) -> StoreError:
    if isinstance(exc, KmsUnavailable):
        error = StoreError(f"the KMS cannot be reached ({exc.provider}): {exc.detail[:200]}")
        error.exit_status = 1
        return error
    if isinstance(exc, KmsDenied):
        return AuthenticationFailed(f"the KMS refused ({exc.provider}): {exc.detail[:200]}")
    return StoreCorrupt(f"the KMS could not unwrap ({exc.provider}): {exc.detail[:200]}")


def _registry_kms(
    registry: KmsRegistry | None, provider: str, key_id: str, options: Any
) -> KmsProvider:
    from secure_keys.core.kms.registry import UnknownProviderError

    try:
        return (registry or default_registry()).create(KmsConfig(provider, key_id, dict(options)))
    except UnknownProviderError as exc:
        raise StoreError(str(exc)) from None
    except KmsError as exc:
        raise _kms_error(exc) from None
    except (ValueError, OSError) as exc:
        raise StoreError(f"cannot set up the {provider!r} KMS provider: {str(exc)[:200]}") from None


def _parse_keyring(found: Any, path: Path) -> LocalKeyring:
    if found is None or not isinstance(found[0], bytes):
        raise StoreCorrupt(f"{path} has no keyring for its local provider")
    try:
        return LocalKeyring.from_json(found[0])
    except ValueError as exc:
        raise StoreCorrupt(f"{path}: the keyring is invalid ({exc})") from None


def _begin_attempt(db: Database, clock: Clock) -> int:
    """Count one attempt at the password (or TOTP code) before it is checked; return
    how many failed in a row before it. Refuses at once, holding nothing afterwards,
    when the previous attempt's delay has not run out.

    Counting first, under the writers' lock, is what makes the delay hold against
    attempts in parallel: each one sees the count and the time its predecessors left,
    so N processes started together get one KDF between them, not N."""
    with db.write() as conn:
        now = clock()  # under the lock: a wait for it must not make the time stale
        meta = dict(
            conn.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?)",
                (_META_FAILURES, _META_NOT_BEFORE),
            ).fetchall()
        )
        failures = _int_meta(meta, _META_FAILURES, db.path)
        not_before = _stamp_meta(meta, _META_NOT_BEFORE, db.path)
        if not_before is not None and now < not_before:
            # A clock set back never makes the wait longer than the schedule's.
            wait = min((not_before - now).total_seconds(), failure_delay(failures))
            if wait > 0:
                retry = now + dt.timedelta(seconds=wait)
                raise TooManyAttempts(
                    f"{failures} wrong attempts in a row: the next one is allowed at "
                    f"{_precise_stamp(retry)} (in {wait:.1f} s); the password was not checked",
                    retry_after=wait,
                )
        counted = failures + 1
        _set_meta(conn, _META_FAILURES, str(counted).encode())
        allowed = now + dt.timedelta(seconds=failure_delay(counted))
        _set_meta(conn, _META_NOT_BEFORE, _precise_stamp(allowed).encode())
    return failures


def _end_attempts(db: Database) -> None:
    """A right password (and TOTP code): the count starts again from zero."""
    with db.write() as conn:
        _set_meta(conn, _META_FAILURES, b"0")
        conn.execute("DELETE FROM meta WHERE key = ?", (_META_NOT_BEFORE,))


def _precise_stamp(value: dt.datetime) -> str:
    # format_stamp is to the second; a delay of 1 s needs a finer time.
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _stamp_meta(meta: dict[str, Any], key: str, path: Path) -> dt.datetime | None:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return parse_stamp(bytes(raw).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise StoreCorrupt(f"{path}: meta {key} is malformed") from None


def _unlock_local(db: Database, meta: dict[str, Any], password: Password) -> LocalKms:
    keyring = _parse_keyring((meta.get(_META_KEYRING),), db.path)
    try:
        return LocalKms.unlock(keyring, [password])
    except KmsDenied:
        raise AuthenticationFailed("wrong password") from None
    except ValueError:
        raise AuthenticationFailed("the password is empty") from None


def _check_totp(
    db: Database,
    config: StoreConfig,
    meta: dict[str, Any],
    kms: KmsProvider,
    code: str,
    clock: Clock,
) -> None:
    sealed = meta.get(_TOTP_SECRET)
    if not isinstance(sealed, bytes):
        raise StoreCorrupt(f"{db.path}: TOTP is on in config.json but keys.db has no secret")
    secret = _open_internal(config.store_id, _TOTP_SECRET, sealed, kms)
    try:
        last = _int_meta(meta, _META_TOTP_STEP, db.path)
        step = totp.matching_step(secret, code, clock())
    finally:
        zero(secret)
    if step is None or step <= last:
        raise AuthenticationFailed("wrong or already used TOTP code")
    with db.write() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_TOTP_STEP,)).fetchone()
        if row is not None and _int_meta({"n": row[0]}, "n", db.path) >= step:
            raise AuthenticationFailed("wrong or already used TOTP code")
        _set_meta(conn, _META_TOTP_STEP, str(step).encode())
