"""Owns keyed fingerprints: a short, stable name for a key version that reveals nothing.

A fingerprint is HMAC-SHA256, under the cluster's fingerprint key, over a domain label,
the ApiKey's namespace, name and uid (each length-prefixed) and the plaintext, truncated
to 128 bits and written ``hs256:<32 hex digits>``.

What one reveals, exactly: whether two versions **of the same ApiKey** hold the same
value (a re-sealed ``secretRef`` keeps its fingerprint; a rotated generated key gets a
new one). It does not reveal whether two different ApiKeys hold the same value, in one
namespace or in two, nor an ApiKey and a deleted one of the same name (a new uid); and
nobody without the fingerprint key can test a guess against it offline. Someone who may
change an ApiKey's ``spec.source`` can still make the controller seal a guess as a new
version of that same key and compare fingerprints; that person can already replace the
key, so no new power is gained.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

__all__ = ["FINGERPRINT_PREFIX", "fingerprint", "fingerprints_match"]

FINGERPRINT_PREFIX = "hs256:"
_LABEL = b"securekeys.io/v2/fingerprint\x00"
_SIZE = 16
_MIN_KEY_SIZE = 32


def _field(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return len(encoded).to_bytes(2, "big") + encoded


def fingerprint(
    integrity_key: bytes | bytearray,
    plaintext: bytes | bytearray,
    *,
    namespace: str,
    name: str,
    uid: str,
) -> str:
    """The keyed fingerprint of ``plaintext`` as a version of ApiKey ``namespace/name``
    (the object with this ``uid``)."""
    if len(integrity_key) < _MIN_KEY_SIZE:
        raise ValueError(f"integrity key must be at least {_MIN_KEY_SIZE} bytes")
    mac = hmac.new(integrity_key, _LABEL, sha256)
    mac.update(_field(namespace))
    mac.update(_field(name))
    mac.update(_field(uid))
    mac.update(plaintext)
    return FINGERPRINT_PREFIX + mac.digest()[:_SIZE].hex()


def fingerprints_match(left: str, right: str) -> bool:
    """Compare two fingerprints in constant time."""
    return hmac.compare_digest(left.encode(), right.encode())
