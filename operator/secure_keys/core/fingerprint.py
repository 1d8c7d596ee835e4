"""Owns keyed fingerprints: a short, stable name for a key version that reveals nothing.

A fingerprint is HMAC-SHA256 under the integrity key over a domain label and the
plaintext, truncated to 128 bits and written ``hs256:<32 hex digits>``. Without the
integrity key nobody can test a guess against it, unlike a bare hash, which anyone holding
a candidate key could confirm offline. Two ApiKeys holding the same plaintext get the same
fingerprint under one integrity key; that equality is the one thing a fingerprint tells.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

__all__ = ["FINGERPRINT_PREFIX", "fingerprint", "fingerprints_match"]

FINGERPRINT_PREFIX = "hs256:"
_LABEL = b"securekeys.io/v1/fingerprint\x00"
_SIZE = 16
_MIN_KEY_SIZE = 32


def fingerprint(integrity_key: bytes | bytearray, plaintext: bytes | bytearray) -> str:
    """The keyed fingerprint of ``plaintext``, safe for status fields, Events and logs."""
    if len(integrity_key) < _MIN_KEY_SIZE:
        raise ValueError(f"integrity key must be at least {_MIN_KEY_SIZE} bytes")
    mac = hmac.new(integrity_key, _LABEL, sha256)
    mac.update(plaintext)
    return FINGERPRINT_PREFIX + mac.digest()[:_SIZE].hex()


def fingerprints_match(left: str, right: str) -> bool:
    """Compare two fingerprints in constant time."""
    return hmac.compare_digest(left.encode(), right.encode())
