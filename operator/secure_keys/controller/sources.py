"""Where a new version's plaintext comes from: generated here, or decoded from a source.

``generate`` draws from the OS CSPRNG into a ``bytearray`` by rejection sampling, so
every character of the alphabet is equally likely. Reading a ``secretRef`` and opening a
``sealed`` source need the API and the recipient key; the service does that I/O and calls
``decode_secret_value`` / ``sealing.open_sealed`` on what it read.
"""

from __future__ import annotations

import base64
import binascii
import string

from secure_keys.controller.models import GenerateSource
from secure_keys.core.memory import random_secret, zero

ALPHABETS: dict[str, bytes] = {
    "base62": (string.digits + string.ascii_uppercase + string.ascii_lowercase).encode(),
    "hex": b"0123456789abcdef",
    "base64url": (string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_").encode(),
    "alphanumeric": (string.ascii_lowercase + string.digits).encode(),
}


class SourceUnavailable(Exception):
    """The source cannot be read now (missing Secret or key); retried with backoff."""


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
