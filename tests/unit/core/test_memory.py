"""Secret buffers: CSPRNG allocation and zeroing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secure_keys.core.memory import (
    MAX_SECRET_FILE_SIZE,
    random_secret,
    read_secret_file,
    wiped,
    zero,
)


def test_random_secret_is_a_fresh_bytearray() -> None:
    a, b = random_secret(32), random_secret(32)
    assert isinstance(a, bytearray)
    assert len(a) == 32
    assert a != b
    assert a != bytearray(32)
    with pytest.raises(ValueError, match="positive"):
        random_secret(0)


def test_random_secret_survives_fork() -> None:
    random_secret(8)  # open the descriptor in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child process
        os.close(read)
        os.write(write, bytes(random_secret(16)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != bytes(random_secret(16))


def test_zero_overwrites_in_place() -> None:
    buf = bytearray(b"secret material")
    with memoryview(buf) as exported:
        # While a view is exported the bytearray cannot be reallocated, so this succeeding
        # shows the zeroing happened in the very storage the view sees.
        zero(buf)
        assert bytes(exported) == bytes(len(b"secret material"))
    key = bytearray(os.urandom(32))
    zero(key)
    assert key == bytearray(32)
    zero(bytearray())


def test_zero_accepts_a_writable_memoryview_and_refuses_readonly() -> None:
    buf = bytearray(b"abcdef")
    zero(memoryview(buf)[2:4])
    assert buf == bytearray(b"ab\x00\x00ef")
    with pytest.raises(TypeError):
        zero(memoryview(b"immutable"))


def test_wiped_zeroes_even_on_error() -> None:
    buf = bytearray(b"secret")
    with pytest.raises(RuntimeError), wiped(buf):
        raise RuntimeError("boom")
    assert buf == bytearray(6)


def test_read_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"line one\nline two\n")
    buf = read_secret_file(path)
    assert isinstance(buf, bytearray)
    assert buf == b"line one\nline two\n"
    path.write_bytes(b"")
    assert read_secret_file(path) == bytearray()
    path.write_bytes(bytes(MAX_SECRET_FILE_SIZE + 1))
    with pytest.raises(ValueError, match="over"):
        read_secret_file(path)


def test_a_forked_child_opens_its_own_reader() -> None:
    import secure_keys.core.memory as memory

    random_secret(8)
    assert memory._urandom_file is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child process
        os.close(read)
        fresh = memory._urandom_file is None
        random_secret(8)
        os.write(write, b"1" if fresh and memory._urandom_file is not None else b"0")
        os._exit(0)
    os.close(write)
    verdict = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert verdict == b"1"
