"""Secret buffers: CSPRNG allocation and zeroing."""

from __future__ import annotations

import os

import pytest

from secure_keys.core.memory import random_secret, wiped, zero


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
    view_before = memoryview(buf)
    zero(buf)
    assert buf == bytearray(len(b"secret material"))
    assert view_before.obj is buf
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
