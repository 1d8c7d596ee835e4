"""Owns secret buffers: random key material read straight into ``bytearray`` and zeroing.

Python cannot promise that a secret leaves no copy behind (see ``docs/memory.md``). What
this module does promise: key material it hands out lives in a mutable ``bytearray`` that
the caller can zero, it is read from the kernel's CSPRNG without passing through an
immutable ``bytes`` object, and ``zero`` overwrites a buffer in place.
"""

from __future__ import annotations

import ctypes
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["random_secret", "wiped", "zero"]

_urandom_lock = threading.Lock()
_urandom_file: io.FileIO | None = None
_urandom_pid = -1


def _urandom_reader() -> io.FileIO:
    # One cached descriptor per process; reopened after fork.
    global _urandom_file, _urandom_pid
    reader = _urandom_file
    pid = os.getpid()
    if reader is None or _urandom_pid != pid:
        with _urandom_lock:
            reader = _urandom_file
            if reader is None or _urandom_pid != pid:
                # Unbuffered, so no copy of the bytes lingers in a userspace read buffer.
                reader = open("/dev/urandom", "rb", buffering=0)  # noqa: SIM115
                _urandom_file, _urandom_pid = reader, pid
    return reader


def random_secret(size: int) -> bytearray:
    """Return ``size`` bytes from the kernel CSPRNG in a fresh, zeroable ``bytearray``."""
    if size <= 0:
        raise ValueError("size must be positive")
    buf = bytearray(size)
    reader = _urandom_reader()
    view = memoryview(buf)
    filled = 0
    while filled < size:
        got = reader.readinto(view[filled:])
        if not got:
            raise OSError("short read from /dev/urandom")
        filled += got
    view.release()
    return buf


def zero(buf: bytearray | memoryview) -> None:
    """Overwrite ``buf`` with zero bytes in place."""
    size = len(buf)
    if size == 0:
        return
    if isinstance(buf, memoryview) and buf.readonly:
        raise TypeError("cannot zero a read-only buffer")
    ctypes.memset((ctypes.c_char * size).from_buffer(buf), 0, size)


@contextmanager
def wiped(buf: bytearray) -> Iterator[bytearray]:
    """Yield ``buf`` and zero it on the way out, whether or not the block raised."""
    try:
        yield buf
    finally:
        zero(buf)
