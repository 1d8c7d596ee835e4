"""Owns every write into the keys volume (the pod's tmpfs): the only module that does.

The layout is the kubelet's atomic writer's (``pkg/volume/util/atomic_writer.go``)::

    <dir>/..2026_01_02_03_04_05.ab12cd34/   one complete set of files, never edited
    <dir>/..data -> ..2026_01_02_03_04_05.ab12cd34
    <dir>/stripe-live -> ..data/stripe-live            (what the app opens)
    <dir>/stripe-live.previous -> ..data/stripe-live.previous
    <dir>/stripe-live.meta.json -> ..data/stripe-live.meta.json

An update writes a whole new timestamped directory, then renames a fresh ``..data_tmp``
symlink over ``..data`` (``rename(2)`` is atomic), then adds and removes the visible
symlinks, then deletes the old directory. A reader that opens ``<dir>/<name>`` resolves
``..data`` once and so sees one complete set, old or new, never a half-written file; a
reader that wants several files of the same set opens them through
``os.path.realpath(<dir>/..data)``.

Files of versions already on disk are hard-linked from the old directory into the new
one, so plaintext passes through this process only once, when it is delivered: each
plaintext buffer handed to ``KeyDirectory.apply`` is zeroed before it returns, and the
rendered file contents (``raw``, ``env``, ``json``) are built in ``bytearray`` buffers
that are zeroed too. Key files get mode 0400 or 0440 (the ApiKey's ``delivery.mode``;
the pod's fsGroup gives the group), the meta files 0444: they hold no secret.

File names are checked again here, whatever the caller checked: the CRD's pattern, no
``/``, no ``..``, no leading dot, and not ending in ``.previous`` or ``.meta.json``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from secure_keys.core import keyformat
from secure_keys.core.memory import zero

__all__ = [
    "DATA_LINK",
    "FileLayoutError",
    "HeldKey",
    "HeldVersion",
    "KeyDirectory",
    "KeyUpdate",
    "MissingMaterial",
    "VersionUpdate",
    "check_file_name",
    "render",
]

Format = keyformat.Format
DATA_LINK = "..data"
_DATA_TMP = "..data_tmp"
_STAMP_PREFIX = ".."
PREVIOUS_SUFFIX = ".previous"
META_SUFFIX = ".meta.json"
_META_MODE = 0o444
_DIR_MODE = 0o755
_MODES = {"0400": 0o400, "0440": 0o440}
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_STAMP = re.compile(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.[0-9a-f]{8,}\Z")


class FileLayoutError(ValueError):
    """A file name or a set of files that this module refuses to write."""


class MissingMaterial(Exception):
    """A version was sent without material (``have``) but no matching file is on disk."""

    def __init__(self, apikey: str, version: int) -> None:
        super().__init__(f"version {version} of ApiKey {apikey!r} is not on disk")
        self.apikey = apikey
        self.version = version


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a plain key file name; raise ``FileLayoutError``."""
    if (
        not isinstance(name, str)
        or not _FILE_NAME.match(name)
        or ".." in name
        or name.endswith((PREVIOUS_SUFFIX, META_SUFFIX))
    ):
        raise FileLayoutError("a key file name must be a plain file name (the CRD's rules)")
    return name


# --- rendering ----------------------------------------------------------------------------


def render(
    fmt: Format, plaintext: bytearray, *, apikey: str, env_name: str | None, version: int
) -> bytearray:
    """The file contents for one version (``core.keyformat.render``), in a fresh
    ``bytearray`` the caller zeroes; a refusal raises ``FileLayoutError``."""
    try:
        return keyformat.render(fmt, plaintext, apikey=apikey, env_name=env_name, version=version)
    except keyformat.KeyFormatError as exc:
        raise FileLayoutError(str(exc)) from None


# --- what is on disk ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldVersion:
    version: int
    fingerprint: str
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HeldKey:
    """One key as written: its file name and format, and the versions in its files."""

    apikey: str
    file_name: str
    format: Format
    env_name: str | None
    mode: Literal["0400", "0440"]
    current: HeldVersion | None
    previous: HeldVersion | None
    lease_expires_at: datetime

    def names(self) -> list[str]:
        """The files of this key, as they sit in the data directory."""
        if self.current is None:
            return []
        names = [self.file_name, self.file_name + META_SUFFIX]
        if self.previous is not None:
            names.append(self.file_name + PREVIOUS_SUFFIX)
        return names

    def same_rendering(self, other: HeldKey | KeyUpdate) -> bool:
        return (self.format, self.env_name, self.mode) == (other.format, other.env_name, other.mode)


@dataclass(frozen=True, slots=True)
class VersionUpdate:
    """One version to hold: ``plaintext`` is the material, or ``None`` if already held."""

    version: int
    fingerprint: str
    expires_at: datetime | None = None
    plaintext: bytearray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """The new state of one key (from a ``state`` line, with its material opened)."""

    apikey: str
    file_name: str
    format: Format
    env_name: str | None
    mode: Literal["0400", "0440"]
    current: VersionUpdate | None
    previous: VersionUpdate | None
    lease_expires_at: datetime

    def held(self) -> HeldKey:
        def strip(v: VersionUpdate | None) -> HeldVersion | None:
            return None if v is None else HeldVersion(v.version, v.fingerprint, v.expires_at)

        return HeldKey(
            apikey=self.apikey,
            file_name=self.file_name,
            format=self.format,
            env_name=self.env_name,
            mode=self.mode,
            current=strip(self.current),
            previous=strip(self.previous),
            lease_expires_at=self.lease_expires_at,
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta_document(held: HeldKey, written_at: datetime) -> bytes:
    """``<fileName>.meta.json``: versions, fingerprints, expiries; never material."""
    if held.current is None:
        raise FileLayoutError("a key without a current version has no meta file")
    previous = held.previous
    body: dict[str, Any] = {
        "apiKey": held.apikey,
        "version": held.current.version,
        "fingerprint": held.current.fingerprint,
        "previousVersion": None if previous is None else previous.version,
        "previousFingerprint": None if previous is None else previous.fingerprint,
        "previousExpiresAt": None if previous is None else _iso(previous.expires_at),
        "leaseExpiresAt": _iso(held.lease_expires_at),
        "updatedAt": _iso(written_at),
        "format": held.format,
        "envName": held.env_name,
        "mode": held.mode,
    }
    return json.dumps(body, indent=2).encode() + b"\n"


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def _held_from_meta(data: Mapping[str, Any]) -> HeldKey:
    """Rebuild what a previous run of the sidecar wrote (a restarted container)."""
    file_name = check_file_name(data["fileName"])
    fmt = data["format"]
    mode = data["mode"]
    if fmt not in ("raw", "env", "json") or mode not in _MODES:
        raise FileLayoutError("unknown format or mode in a meta file")
    previous = None
    if data.get("previousVersion") is not None:
        previous = HeldVersion(
            int(data["previousVersion"]),
            str(data["previousFingerprint"]),
            _parse_time(data.get("previousExpiresAt")),
        )
    lease = _parse_time(data.get("leaseExpiresAt"))
    if lease is None:
        raise FileLayoutError("a meta file without leaseExpiresAt")
    return HeldKey(
        apikey=str(data["apiKey"]),
        file_name=file_name,
        format=fmt,
        env_name=data.get("envName"),
        mode=mode,
        current=HeldVersion(int(data["version"]), str(data["fingerprint"])),
        previous=previous,
        lease_expires_at=lease,
    )


# --- the writer -----------------------------------------------------------------------------


def _write_new(path: Path, content: bytes | bytearray, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with memoryview(content) as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        os.fchmod(fd, mode)  # whatever the umask took away
    finally:
        os.close(fd)


class KeyDirectory:
    """The keys volume: what is held (``held``) and how it changes (``apply``).

    Not thread-safe: the sidecar has one writer, its stream loop.
    """

    def __init__(self, root: str | os.PathLike[str], *, now: Any = None) -> None:
        self.root = Path(root)
        self._now = now or (lambda: datetime.now(UTC))
        self._held: dict[str, HeldKey] = {}

    @property
    def held(self) -> Mapping[str, HeldKey]:
        return dict(self._held)

    def _data_dir(self) -> Path | None:
        try:
            target = os.readlink(self.root / DATA_LINK)
        except FileNotFoundError:
            return None
        if not _STAMP.match(target):
            raise FileLayoutError("..data does not point at a timestamped directory")
        return self.root / target

    def load(self) -> Mapping[str, HeldKey]:
        """Adopt what a previous run left on disk (a container restart keeps the emptyDir).

        Keys whose meta file does not parse or whose files are missing are dropped from
        the index, so the next ``apply`` leaves them out. Leftover timestamped directories
        of an interrupted update are removed.
        """
        self._held = {}
        data_dir = self._data_dir()
        if data_dir is not None:
            for meta in sorted(data_dir.glob("*" + META_SUFFIX)):
                try:
                    document = json.loads(meta.read_bytes())
                    document["fileName"] = meta.name[: -len(META_SUFFIX)]
                    held = _held_from_meta(document)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if all((data_dir / name).is_file() for name in held.names()):
                    self._held[held.apikey] = held
        self._remove_stale(keep=data_dir)
        return self.held

    def apply(self, updates: Iterable[KeyUpdate], removed: Iterable[str] = ()) -> bool:
        """Swap in a new set of files: ``updates`` replace keys, ``removed`` keys go.

        Every plaintext buffer in ``updates`` is zeroed before this returns, whether it
        succeeds or raises. Returns whether the set on disk changed. Raises
        ``MissingMaterial`` (a version sent as held is not on disk) or ``FileLayoutError``
        before anything visible changes.
        """
        updates = list(updates)
        try:
            return self._apply(updates, set(removed))
        finally:
            for update in updates:
                for version in (update.current, update.previous):
                    if version is not None and version.plaintext is not None:
                        zero(version.plaintext)

    def _apply(self, updates: list[KeyUpdate], removed: set[str]) -> bool:
        new_held = {k: v for k, v in self._held.items() if k not in removed}
        for update in updates:
            check_file_name(update.file_name)
            if update.mode not in _MODES:
                raise FileLayoutError("mode must be 0400 or 0440")
            new_held[update.apikey] = update.held()
        owners: dict[str, str] = {}
        for held in new_held.values():
            if held.file_name in owners:
                raise FileLayoutError("two keys ask for the same file name")
            owners[held.file_name] = held.apikey
        if new_held == self._held:
            return False
        old_dir = self._data_dir()
        old_names = set()
        for held in self._held.values():
            old_names.update(held.names())

        self.root.mkdir(parents=True, exist_ok=True)
        stamp = self._now().strftime("%Y_%m_%d_%H_%M_%S")
        new_dir = self.root / f"{_STAMP_PREFIX}{stamp}.{secrets.token_hex(4)}"
        new_dir.mkdir(mode=0o700)
        try:
            by_key = {u.apikey: u for u in updates}
            for apikey, held in new_held.items():
                changed = by_key.get(apikey)
                if changed is None:  # unchanged: every file comes from the old set
                    for name in held.names():
                        if old_dir is None:
                            raise FileLayoutError("..data vanished under the writer")
                        os.link(old_dir / name, new_dir / name)
                    continue
                self._write_key(changed, new_dir, old_dir)
            os.chmod(new_dir, _DIR_MODE)
            self._swap(new_dir)
        except BaseException:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        new_names = set()
        for held in new_held.values():
            new_names.update(held.names())
        for name in sorted(new_names):
            link = self.root / name
            if not link.is_symlink():
                if link.exists():
                    raise FileLayoutError("a key file name is taken by a non-symlink")
                os.symlink(f"{DATA_LINK}/{name}", link)
        for name in sorted(old_names - new_names):
            (self.root / name).unlink(missing_ok=True)
        self._held = new_held
        self._remove_stale(keep=new_dir)
        return True

    def _write_key(self, update: KeyUpdate, new_dir: Path, old_dir: Path | None) -> None:
        if update.current is None:
            return  # no version yet: no files, as with a key not granted
        old = self._held.get(update.apikey)
        mode = _MODES[update.mode]
        for version, name in (
            (update.current, update.file_name),
            (update.previous, update.file_name + PREVIOUS_SUFFIX),
        ):
            if version is None:
                continue
            if version.plaintext is not None:
                content = render(
                    update.format,
                    version.plaintext,
                    apikey=update.apikey,
                    env_name=update.env_name,
                    version=version.version,
                )
                try:
                    _write_new(new_dir / name, content, mode)
                finally:
                    zero(content)
                continue
            source = self._find(old, old_dir, version, update)
            if source is None:
                raise MissingMaterial(update.apikey, version.version)
            os.link(source, new_dir / name)
        _write_new(
            new_dir / (update.file_name + META_SUFFIX),
            meta_document(update.held(), self._now()),
            _META_MODE,
        )

    @staticmethod
    def _find(
        old: HeldKey | None, old_dir: Path | None, version: VersionUpdate, update: KeyUpdate
    ) -> Path | None:
        """The old file holding ``version``, rendered the way ``update`` wants it."""
        if old is None or old_dir is None or not old.same_rendering(update):
            return None
        if old.current is not None and old.current.version == version.version:
            return old_dir / old.file_name
        if old.previous is not None and old.previous.version == version.version:
            return old_dir / (old.file_name + PREVIOUS_SUFFIX)
        return None

    def _swap(self, new_dir: Path) -> None:
        tmp = self.root / _DATA_TMP
        tmp.unlink(missing_ok=True)
        os.symlink(new_dir.name, tmp)
        os.rename(tmp, self.root / DATA_LINK)  # the atomic step

    def _remove_stale(self, keep: Path | None) -> None:
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if _STAMP.match(entry.name) and (keep is None or entry.name != keep.name):
                shutil.rmtree(entry, ignore_errors=True)
        (self.root / _DATA_TMP).unlink(missing_ok=True)

    def remove_all(self) -> bool:
        """Remove every key's files (the lease ran out): fail closed."""
        return self.apply((), removed=list(self._held))
