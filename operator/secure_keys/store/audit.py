"""Owns ``audit.log``: one HMAC-chained JSON record per line (``core.auditchain``).

The audit key is derived from the store's own secret key, which only an opened store
holds, so a record cannot be forged, edited, reordered or deleted from the middle without
``verify`` naming it. Each opening of the store is one chain (its own id, counting from
1); several processes append whole lines under the writers' lock, with ``O_APPEND``, and
an fsync per record of a change (a read's record is not fsync'ed: see ``append``).
Records name keys and versions, never a value. What the chain cannot show alone: a log
cut off after its last record (``docs/local-store.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from secure_keys.core.auditchain import AuditChain, ChainBreak, verify
from secure_keys.store.errors import StoreCorrupt
from secure_keys.store.layout import FILE_MODE

__all__ = ["AuditLog"]

MAX_LINE = 16 * 1024


class AuditLog:
    """Appends chained records to ``audit.log`` and reads them back."""

    def __init__(
        self, path: Path, key: bytes | bytearray, lock: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self.path = path
        self._chain = AuditChain(key)
        self._key = bytes(key)
        self._lock = lock

    def append(self, record: dict[str, Any], *, durable: bool = True) -> None:
        """Append one record under the lock. ``durable``: fsync it (every change is); a
        read's record is written but not fsync'ed, so it survives the process being
        killed, though not a power cut in the next few seconds."""
        line = json.dumps(self._chain.link(record), sort_keys=True, separators=(",", ":"))
        data = (line + "\n").encode()
        with self._lock():
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
            try:
                os.write(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first. A line that is not a JSON object is ``StoreCorrupt``."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            for number, raw in enumerate(handle, start=1):
                if len(raw) > MAX_LINE:
                    raise StoreCorrupt(f"{self.path} line {number} is over {MAX_LINE} bytes")
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise StoreCorrupt(f"{self.path} line {number} is not JSON") from None
                if not isinstance(record, dict):
                    raise StoreCorrupt(f"{self.path} line {number} is not a JSON object")
                yield record

    def verify(self) -> tuple[int, ChainBreak | None]:
        """How many records there are, and the first that does not verify (or ``None``)."""
        records = list(self.records())
        return len(records), verify(records, self._key)
