"""Owns the ``local`` KMS provider: data keys wrapped under a password-derived KEK.

A *keyring* is the non-secret metadata of one local key: its id and a list of KEK
versions, each with its own KDF parameters (salt, iterations) and password verifier. It
is safe to store anywhere (a ConfigMap, a file in git). The KEK of each version comes from
the key hierarchy (``secure_keys.core.hierarchy``): password -> PBKDF2 -> master key ->
HKDF -> KEK. Unlocking a keyring with its password(s) gives a ``LocalKms``.

- New wraps use the newest version; older versions still unwrap; ``rewrap`` moves a DEK
  to the newest. Adding a version (same password, new salt, or a new password, or more
  iterations) is how the KEK rotates.
- A wrapped DEK is ``0x01 || nonce (12) || AES-256-GCM(KEK, DEK) with tag (48)``. The
  associated data binds the key id, the KEK version and the caller's wrap context, so a
  wrapped DEK moved to another ApiKey, version or keyring does not unwrap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_keys.core.aead import KEY_SIZE, NONCE_SIZE, TAG_SIZE, AeadKey, AuthenticationFailed
from secure_keys.core.binding import MAX_VERSION, WrapContext, length_prefixed
from secure_keys.core.errors import KmsCorrupt, KmsDenied
from secure_keys.core.hierarchy import DEFAULT_ITERATIONS, KdfParams, KeyHierarchy
from secure_keys.core.kms.base import HealthStatus, WrappedKey, probe_health
from secure_keys.core.memory import read_secret_file, zero

__all__ = ["PROVIDER", "KekVersion", "LocalKeyring", "LocalKms"]

PROVIDER = "local"
KEYRING_KIND = "secure-keys/local-keyring"
KEYRING_FORMAT = 1
MAX_KEYRING_SIZE = 64 * 1024
MAX_KEK_VERSIONS = 64
VERIFIER_SIZE = 32
WRAP_FORMAT = 0x01
WRAPPED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_AAD_DOMAIN = b"securekeys.io/local-wrap\x00"
_KEY_ID = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_WRAP_HEADER = bytes((WRAP_FORMAT,))
_AAD_MEMO_LIMIT = 256
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,9}\Z")


@dataclass(frozen=True, slots=True)
class KekVersion:
    """One KEK version of a keyring: how to derive it, and how to recognise the password."""

    version: int
    kdf: KdfParams
    verifier: bytes = field(repr=False)
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kdf": self.kdf.to_json(),
            "verifier": self.verifier.hex(),
            "created": self.created,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _derive_version(version: int, password: str | bytes | bytearray, iterations: int) -> KekVersion:
    params = KdfParams.generate(iterations)
    hierarchy = KeyHierarchy.derive(password, params)
    try:
        return KekVersion(version, params, hierarchy.verifier(), _now())
    finally:
        hierarchy.wipe()


@dataclass(frozen=True, slots=True)
class LocalKeyring:
    """The non-secret description of a local key: its id and its KEK versions, oldest first."""

    key_id: str
    versions: tuple[KekVersion, ...]

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise ValueError(f"invalid local key id {self.key_id!r}")
        if not self.versions:
            raise ValueError("a keyring needs at least one KEK version")
        numbers = [v.version for v in self.versions]
        if numbers != sorted(set(numbers)) or numbers[0] < 1 or numbers[-1] > MAX_VERSION:
            raise ValueError(f"KEK versions must be unique and ascending, 1 to {MAX_VERSION}")

    @classmethod
    def create(
        cls,
        key_id: str,
        password: str | bytes | bytearray,
        *,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> LocalKeyring:
        """A new keyring whose version 1 derives from ``password``."""
        return cls(key_id, (_derive_version(1, password, iterations),))

    @classmethod
    def from_params(
        cls,
        key_id: str,
        password: str | bytes | bytearray,
        params: KdfParams,
        created: str,
    ) -> LocalKeyring:
        """A one-version keyring from given KDF parameters: the same inputs always give
        the same keyring, so it can be kept as its inputs (the Helm chart keeps the
        password, the salt and the date in a Secret and derives this at pod start)."""
        hierarchy = KeyHierarchy.derive(password, params)
        try:
            return cls(key_id, (KekVersion(1, params, hierarchy.verifier(), created),))
        finally:
            hierarchy.wipe()

    @property
    def newest(self) -> KekVersion:
        return self.versions[-1]

    def with_new_version(
        self, password: str | bytes | bytearray, *, iterations: int | None = None
    ) -> LocalKeyring:
        """Rotate the KEK: add a version with a fresh salt (and the given password).

        The iteration count never falls below the newest version's.
        """
        count = max(iterations or DEFAULT_ITERATIONS, self.newest.kdf.iterations)
        added = _derive_version(self.newest.version + 1, password, count)
        return LocalKeyring(self.key_id, (*self.versions, added))

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": KEYRING_KIND,
                "format": KEYRING_FORMAT,
                "keyId": self.key_id,
                "versions": [v.to_json() for v in self.versions],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LocalKeyring:
        """Parse a keyring; raises ``ValueError`` naming what is wrong.

        Strict, because unlocking costs one PBKDF2 run per version and password: sizes
        and counts are capped, and nothing is coerced from the wrong JSON type.
        """
        if len(text) > MAX_KEYRING_SIZE:
            raise ValueError(f"keyring is larger than {MAX_KEYRING_SIZE} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError("keyring is not valid JSON") from None
        if not isinstance(data, dict) or data.get("kind") != KEYRING_KIND:
            raise ValueError(f"not a keyring: kind must be {KEYRING_KIND!r}")
        if data.get("format") != KEYRING_FORMAT:
            raise ValueError(f"unsupported keyring format {data.get('format')!r}")
        key_id, raw_versions = data.get("keyId"), data.get("versions")
        if not isinstance(key_id, str):
            raise ValueError("keyring keyId must be a string")
        if not isinstance(raw_versions, list) or not 1 <= len(raw_versions) <= MAX_KEK_VERSIONS:
            raise ValueError(f"keyring versions must be a list of 1 to {MAX_KEK_VERSIONS}")
        versions = []
        for item in raw_versions:
            try:
                version, verifier, created = item["version"], item["verifier"], item["created"]
                if isinstance(version, bool) or not isinstance(version, int):
                    raise TypeError("version must be an integer")
                if not isinstance(verifier, str) or len(verifier) != 2 * VERIFIER_SIZE:
                    raise TypeError(f"verifier must be {VERIFIER_SIZE} bytes in hex")
                if not isinstance(created, str):
                    raise TypeError("created must be a string")
                versions.append(
                    KekVersion(
                        version=version,
                        kdf=KdfParams.from_json(item["kdf"]),
                        verifier=bytes.fromhex(verifier),
                        created=created,
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"invalid keyring version entry: {exc}") from None
        return cls(key_id, tuple(versions))


def _wrap_aad(key_id: str, version: int, context: WrapContext) -> bytes:
    return b"".join(
        (
            _AAD_DOMAIN,
            bytes((WRAP_FORMAT,)),
            length_prefixed(key_id),
            struct.pack(">I", version),
            context.canonical,
        )
    )


class LocalKms:
    """An unlocked local keyring: wraps with the newest KEK, unwraps with any unlocked one."""

    __slots__ = ("_aads", "_by_text", "_keks", "_key_id", "_locked", "_newest", "_newest_text")

    def __init__(
        self, key_id: str, keks: Mapping[int, AeadKey], locked: Sequence[int] = ()
    ) -> None:
        if not keks:
            raise ValueError("no KEK version unlocked")
        self._key_id = key_id
        self._keks = dict(keks)
        self._locked = frozenset(locked)
        self._newest = max(self._keks)
        self._newest_text = str(self._newest)
        # Wrapped keys name their KEK version as canonical decimal text; an exact lookup
        # both finds the KEK and rejects every other spelling ("01", " 1", "1.0").
        self._by_text = {str(v): (v, kek) for v, kek in self._keks.items()}
        self._aads: dict[tuple[int, bytes], bytes] = {}
        if any(v > self._newest for v in self._locked):
            raise KmsDenied(PROVIDER, key_id, "the newest KEK version is locked")

    @classmethod
    def unlock(
        cls, keyring: LocalKeyring, passwords: Sequence[str | bytes | bytearray]
    ) -> LocalKms:
        """Derive the KEK of every version some password opens.

        Each version's stored verifier is checked in constant time. Versions no password
        opens stay locked: their wraps will not unwrap until a rewrap moves them. The
        newest version must open, or ``KmsDenied`` is raised.
        """
        keks: dict[int, AeadKey] = {}
        locked: list[int] = []
        for entry in keyring.versions:
            for password in passwords:
                hierarchy = KeyHierarchy.derive(password, entry.kdf)
                try:
                    if hierarchy.verify(entry.verifier):
                        keks[entry.version] = AeadKey(hierarchy.kek)
                        break
                finally:
                    hierarchy.wipe()
            else:
                locked.append(entry.version)
        if keyring.newest.version not in keks:
            raise KmsDenied(
                PROVIDER,
                keyring.key_id,
                f"no password given opens the newest KEK version {keyring.newest.version}",
            )
        import structlog  # off the import path of `secure-keys get`, which never unlocks

        structlog.get_logger(__name__).info(
            "kms.local.unlocked",
            key_id=keyring.key_id,
            unlocked=sorted(keks),
            locked=locked,
        )
        return cls(keyring.key_id, keks, locked)

    @classmethod
    def _from_keks(cls, key_id: str, keks: Mapping[int, bytes | bytearray]) -> LocalKms:
        # Private seam for known-answer vectors: raw KEKs instead of a password.
        return cls(key_id, {version: AeadKey(kek) for version, kek in keks.items()})

    def __repr__(self) -> str:
        return f"LocalKms(key_id={self._key_id!r}, versions={sorted(self._keks)}, keks=<redacted>)"

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._key_id

    def key_version(self) -> str:
        return self._newest_text

    def _aad(self, version: int, context: WrapContext) -> bytes:
        memo_key = (version, context.canonical)
        aad = self._aads.get(memo_key)
        if aad is None:
            if len(self._aads) >= _AAD_MEMO_LIMIT:
                self._aads.clear()
            aad = self._aads[memo_key] = _wrap_aad(self._key_id, version, context)
        return aad

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        return self._wrap_with_nonce(dek, context, os.urandom(NONCE_SIZE))

    def _wrap_with_nonce(
        self, dek: bytes | bytearray, context: WrapContext, nonce: bytes
    ) -> WrappedKey:
        # Private seam: known-answer vectors fix the nonce; ``wrap`` draws it at random.
        if len(dek) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")
        version = self._newest
        sealed = self._keks[version].encrypt(nonce, dek, self._aad(version, context))
        return WrappedKey(PROVIDER, self._key_id, self._newest_text, _WRAP_HEADER + nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        if wrapped.provider != PROVIDER or wrapped.key_id != self._key_id:
            raise KmsCorrupt(
                PROVIDER, self._key_id, f"wrapped by {wrapped.provider} key {wrapped.key_id[:64]!r}"
            )
        found = self._by_text.get(wrapped.key_version)
        if found is None:
            if not _VERSION_TEXT.match(wrapped.key_version):
                raise KmsCorrupt(PROVIDER, self._key_id, "malformed KEK version")
            version = int(wrapped.key_version)
            state = "locked" if version in self._locked else "unknown to this keyring"
            raise KmsDenied(PROVIDER, self._key_id, f"KEK version {version} is {state}")
        version, kek = found
        blob = wrapped.ciphertext
        if len(blob) != WRAPPED_SIZE or blob[0] != WRAP_FORMAT:
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed wrapped key")
        nonce = blob[1 : 1 + NONCE_SIZE]
        try:
            return kek.decrypt(nonce, blob[1 + NONCE_SIZE :], self._aad(version, context))
        except AuthenticationFailed:
            raise KmsCorrupt(
                PROVIDER, self._key_id, "wrapped key did not authenticate for this context"
            ) from None

    def health(self) -> HealthStatus:
        """Round-trip a throwaway key under the newest KEK. Never raises."""
        return probe_health(self, self.key_version)


def from_config(key_id: str, options: Mapping[str, str]) -> LocalKms:
    """Build a ``LocalKms`` from files: ``keyringPath`` and ``passwordFile`` options.

    The password file holds one password per line (the newest KEK's first; older lines
    open older versions). Its contents never reach a log or an error message.
    """
    try:
        keyring_path = Path(options["keyringPath"])
        password_path = Path(options["passwordFile"])
    except KeyError as exc:
        raise ValueError(f"local KMS option {exc.args[0]} is required") from None
    keyring = LocalKeyring.from_json(keyring_path.read_text())
    if keyring.key_id != key_id:
        raise ValueError(f"keyring {keyring_path} holds key {keyring.key_id!r}, not {key_id!r}")
    raw = read_secret_file(password_path)
    try:
        passwords = [line for line in raw.splitlines() if line]  # bytearrays, zeroed below
    finally:
        zero(raw)
    if not passwords:
        raise ValueError(f"password file {password_path} is empty")
    try:
        return LocalKms.unlock(keyring, passwords)
    finally:
        for password in passwords:
            zero(password)
