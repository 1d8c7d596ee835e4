"""Where a new version's plaintext comes from: generated here, or decoded from a source.

``generate`` draws from the OS CSPRNG into a ``bytearray`` by rejection sampling, so
every character of the alphabet is equally likely. Reading a ``secretRef`` and opening a
``sealed`` source need the API and the recipient key; the step executor (``steps``)
does that I/O and calls ``decode_secret_value`` / ``sealing.open_sealed`` on what it read.
"""

from __future__ import annotations

import base64
import binascii
import string

from secure_keys.controller.models import GenerateSource
from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.memory import random_secret, zero

ALPHABETS: dict[str, bytes] = {
    "base62": (string.digits + string.ascii_uppercase + string.ascii_lowercase).encode(),
    "hex": b"0123456789abcdef",
    "base64url": (string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_").encode(),
    "alphanumeric": (string.ascii_lowercase + string.digits).encode(),
}


class SourceUnavailable(Exception):
    """The source cannot be read now (missing Secret or key); retried with backoff."""


class SourceInvalid(Exception):
    """The source holds a value no ApiKey can hold (empty, or over 64 KiB); retried with
    backoff, since the Secret may be fixed without the ApiKey changing."""


class SourceForbidden(Exception):
    """spec.source names something the controller must never seal (its own Secrets)."""


def check_size(plaintext: bytearray, what: str) -> bytearray:
    """``plaintext`` if an envelope can hold it; otherwise zero it and say why."""
    size = len(plaintext)
    if 1 <= size <= MAX_PLAINTEXT_SIZE:
        return plaintext
    zero(plaintext)
    raise SourceInvalid(
        f"{what} holds {size} bytes; an ApiKey holds 1 to {MAX_PLAINTEXT_SIZE} bytes"
    )


def generate(spec: GenerateSource) -> bytearray:
    """``prefix`` followed by ``length`` characters drawn uniformly from the alphabet."""
    alphabet = ALPHABETS[spec.alphabet]
    size = len(alphabet)
    limit = 256 - (256 % size)  # bytes at or above this would bias the modulo
    out = bytearray(spec.prefix.encode("ascii"))
    while len(out) < len(spec.prefix) + spec.length:
        pool = random_secret(spec.length * 2)
        try:
            for byte in pool:
                if byte < limit:
                    out.append(alphabet[byte % size])
                    if len(out) == len(spec.prefix) + spec.length:
                        break
        finally:
            zero(pool)
    return out


def decode_secret_value(encoded: str, *, secret: str, key: str) -> bytearray:
    """The bytes of one base64 value of a Secret's ``data``, in a zeroable buffer."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SourceUnavailable(f"Secret {secret} key {key} is not valid base64") from None
    if not raw:
        raise SourceUnavailable(f"Secret {secret} key {key} is empty")
    return bytearray(raw)
