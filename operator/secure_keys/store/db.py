"""Owns ``keys.db`` and ``keys.db.lock``: the SQLite file, its schema and its transactions.

Durability: WAL journal, ``synchronous=FULL`` (every commit is fsync'ed before it
returns), one transaction per change. A writer first takes an exclusive ``flock`` on
``keys.db.lock`` and then ``BEGIN IMMEDIATE``, so writers from several processes queue
instead of failing with "database is locked"; the kernel drops the flock of a process
that dies, SIGKILL included, and SQLite rolls back its unfinished transaction on the next
open. Deleted rows are overwritten (``secure_delete``), so a destroyed envelope does not
linger in free pages.

Opening runs ``PRAGMA quick_check``: a damaged or truncated file is ``StoreCorrupt`` with
the path and what to do, never a half-read store.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from secure_keys.store.errors import StoreCorrupt, StoreError
from secure_keys.store.layout import FILE_MODE

__all__ = ["SCHEMA_VERSION", "Database"]

SCHEMA_VERSION = 2
"""2: each version row carries ``mac`` (``store.rowmac``). Version 1 (no MAC) lived for a
day in development and is not migrated: such a store is refused with "run init again"."""
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE versions (
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 1),
    state           TEXT    NOT NULL
                    CHECK (state IN ('Pending', 'Active', 'Archived', 'Destroyed')),
    created_at      TEXT    NOT NULL,
    activated_at    TEXT,
    archived_at     TEXT,
    destroyed_at    TEXT,
    kms_provider    TEXT    NOT NULL,
    kms_key_id      TEXT    NOT NULL,
    kms_key_version TEXT    NOT NULL,
    envelope        BLOB,
    mac             BLOB    NOT NULL CHECK (length(mac) = 32),
    PRIMARY KEY (name, version),
    CHECK ((state = 'Destroyed') = (envelope IS NULL))
) WITHOUT ROWID;
CREATE UNIQUE INDEX one_active ON versions (name) WHERE state = 'Active';
"""


def _corrupt(path: Path, detail: str) -> StoreCorrupt:
    return StoreCorrupt(
        f"{path} is damaged or is not a secure-keys store ({detail[:120]}); nothing was read "
        "from it. Restore it from a backup, or move it away and run `init` again."
    )


class Database:
    """One connection to ``keys.db``, and the lock file that serialises writers."""

    def __init__(self, connection: sqlite3.Connection, path: Path, lock_path: Path) -> None:
        self._conn = connection
        self.path = path
        self._lock_path = lock_path

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA trusted_schema = OFF")
        return conn

    @classmethod
    def create(cls, path: Path, lock_path: Path) -> Database:
        """A new, empty store database (the file created 0600 before SQLite opens it)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
        conn = cls._connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return cls(conn, path, lock_path)

    @classmethod
    def open(cls, path: Path, lock_path: Path) -> Database:
        """Open and check an existing store database. Raises ``StoreCorrupt``."""
        try:
            size = os.stat(path).st_size
            if size < 512:
                raise _corrupt(path, f"{size} bytes: truncated")
            conn = cls._connect(path)
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version == 1:
                    raise StoreCorrupt(
                        f"{path} was made by a development build of secure-keys whose version "
                        "rows carry no MAC (schema 1); it is not upgraded. Move the store "
                        "directory away, run `init` again and `add` the keys again."
                    )
                if version != SCHEMA_VERSION:
                    raise _corrupt(path, f"schema version {version}, expected {SCHEMA_VERSION}")
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise _corrupt(path, "; ".join(str(p) for p in problems))
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if mode != "wal":
                    raise _corrupt(path, f"journal mode {mode}, expected wal")
            except BaseException:
                conn.close()
                raise
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StoreError(f"{path} is busy: another process holds it too long") from None
            raise _corrupt(path, str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise _corrupt(path, str(exc)) from None
        return cls(conn, path, lock_path)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise StoreError(
                    f"{self.path} is busy: another process holds it too long"
                ) from None
            raise _corrupt(self.path, str(exc)) from None
        except sqlite3.IntegrityError as exc:
            raise _corrupt(self.path, f"constraint failed: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.path, str(exc)) from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The writers' lock (``keys.db.lock``), held until the block ends."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for the block."""
        with self._errors():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction under the writers' lock: all of the block, or none of it."""
        with self.lock(), self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text
