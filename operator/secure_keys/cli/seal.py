"""``secure-keys seal``: encrypt a plaintext to the cluster's recipient key, client side.

The output is an ApiKey manifest whose ``spec.source.sealed`` only the controller can
open, and only for that namespace and name: safe to commit to git. The plaintext is
read from stdin or ``--from-file`` into a ``bytearray`` and zeroed after sealing.
"""

from __future__ import annotations

import os
import sys
import termios
from pathlib import Path
from typing import IO, Any

import yaml

from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.memory import zero
from secure_keys.core.sealing import Recipient, seal_to_recipient


class SealError(Exception):
    """A user-facing error: the message says what to fix."""


def _read_all(source: IO[bytes]) -> bytearray:
    """Read to EOF into one zeroable buffer; refuse more than MAX_PLAINTEXT_SIZE (+ newline)."""
    limit = MAX_PLAINTEXT_SIZE + 2  # room for a trailing CRLF that will be stripped
    buffer = bytearray(limit + 1)
    view = memoryview(buffer)
    filled = 0
    try:
        while filled < len(buffer):
            count = source.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                break
            filled += count
    finally:
        view.release()
    if filled > limit:
        zero(buffer)
        raise SealError(f"the plaintext is larger than {MAX_PLAINTEXT_SIZE} bytes")
    result = buffer[:filled]
    zero(buffer)
    return result


def _read_terminal(source: IO[bytes]) -> bytearray:
    """A key typed at a terminal: no echo, ended by Enter."""
    fd = source.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    print("key (not echoed; Enter to finish): ", end="", file=sys.stderr, flush=True)
    termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
    try:
        line = bytearray(os.read(fd, MAX_PLAINTEXT_SIZE + 2))
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        print(file=sys.stderr)
    return line


def read_plaintext(source: IO[bytes] | None, path: Path | None, *, keep_newline: bool) -> bytearray:
    if path is not None:
        # Unbuffered, and read like a stream so pipes and process substitution work.
        with open(path, "rb", buffering=0) as handle:
            buffer = _read_all(handle)
    elif source is None:
        raise SealError("no plaintext: pipe it on stdin or use --from-file")
    elif source.isatty():
        buffer = _read_terminal(source)
    else:
        buffer = _read_all(source)
    if not keep_newline and buffer.endswith(b"\n"):
        del buffer[-1:]
        if buffer.endswith(b"\r"):
            del buffer[-1:]
    if not buffer:
        zero(buffer)
        raise SealError("the plaintext is empty")
    if len(buffer) > MAX_PLAINTEXT_SIZE:
        zero(buffer)
        raise SealError(f"the plaintext is larger than {MAX_PLAINTEXT_SIZE} bytes")
    return buffer


def manifest(
    name: str,
    namespace: str,
    recipient: Recipient,
    ciphertext: str,
    *,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"sealed": {"recipient": recipient.key_id, "ciphertext": ciphertext}}
    }
    spec.update(extra_spec or {})
    return {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def seal_command(
    *,
    name: str,
    namespace: str,
    recipient: Recipient,
    plaintext: bytearray,
    extra_spec: dict[str, Any] | None,
) -> str:
    try:
        ciphertext = seal_to_recipient(recipient, plaintext, namespace=namespace, name=name)
    finally:
        zero(plaintext)
    document = manifest(name, namespace, recipient, ciphertext, extra_spec=extra_spec)
    header = (
        f"# Sealed for {recipient.key_id}; only the controller can open it, and only as\n"
        f"# ApiKey {namespace}/{name}. Safe to commit.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=1 << 20)


def stdin_bytes() -> IO[bytes]:
    return sys.stdin.buffer
