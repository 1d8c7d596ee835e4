"""Owns where the local store lives and the file modes it insists on.

The directory is ``$XDG_CONFIG_HOME/secure-keys`` (``~/.config/secure-keys`` when the
variable is unset or not absolute, as the XDG Base Directory spec says). It must be
owned by the user and mode 0700, and every file in it 0600: a store that other users
can read or write is refused, with the ``chmod`` that fixes it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from secure_keys.store.errors import StoreNotFound, StorePermissions

__all__ = ["StoreLayout", "default_store_dir"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def default_store_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/secure-keys``, or ``~/.config/secure-keys``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "secure-keys"


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """The paths of one store's files."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "config.json"

    @property
    def database(self) -> Path:
        return self.directory / "keys.db"

    @property
    def lock(self) -> Path:
        return self.directory / "keys.db.lock"

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def files(self) -> tuple[Path, ...]:
        """Every file the store keeps, SQLite's WAL and shared-memory files included."""
        db = self.database
        return (
            self.config,
            db,
            db.with_name(db.name + "-wal"),
            db.with_name(db.name + "-shm"),
            self.lock,
            self.audit_log,
        )

    def exists(self) -> bool:
        return self.config.exists() or self.database.exists()

    def check(self) -> None:
        """Refuse a missing store, or one whose modes or owner let others in."""
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            raise StoreNotFound(
                f"no store at {self.directory}: create one with `secure-keys --store local init`"
            ) from None
        if not self.database.exists() or not self.config.exists():
            raise StoreNotFound(
                f"{self.directory} holds no store (config.json and keys.db): "
                "create one with `secure-keys --store local init`"
            )
        loose: list[str] = []
        if info.st_uid != os.getuid():
            raise StorePermissions(f"{self.directory} is not owned by you (uid {os.getuid()})")
        if stat.S_IMODE(info.st_mode) & 0o077:
            loose.append(f"chmod 700 {self.directory}")
        for path in self.files():
            try:
                file_info = os.stat(path)
            except FileNotFoundError:
                continue
            if file_info.st_uid != os.getuid():
                raise StorePermissions(f"{path} is not owned by you (uid {os.getuid()})")
            if stat.S_IMODE(file_info.st_mode) & 0o077:
                loose.append(f"chmod 600 {path}")
        if loose:
            raise StorePermissions(
                "the store is readable or writable by other users; refusing to use it. "
                "Fix it with: " + " && ".join(loose)
            )

    def make_directory(self) -> None:
        """Create the directory 0700 (its parents with the default mode)."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(self.directory, DIR_MODE)

    def touch_private(self, path: Path) -> None:
        """Create ``path`` 0600 if it is missing (never loosening an existing file)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
