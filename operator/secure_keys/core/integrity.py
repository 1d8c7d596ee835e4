"""Owns integrity tags: HMACs by which the controller recognises what it wrote itself.

Two stores of an ApiKey can be written by people other than the controller: its blob
Secret (by whoever may patch Secrets in the namespace) and its status (by whoever may
patch ``apikeys/status``). A tag, HMAC-SHA256 under a key only the controller holds,
lets the controller tell its own decisions from forged ones:

* ``blob`` tags, one per blob entry, over the ApiKey's uid, the version and a digest of
  the sealed bytes. A blob saved from an earlier ApiKey of the same name, or from another
  version, does not carry a valid tag for this uid and version, so it is never adopted
  or served (a "shredded" key cannot be replayed into its successor).
* ``destroyed`` tags, on status records, over the uid, the version and the time it was
  destroyed. A blob is deleted only when its Destroyed record carries a valid tag, so a
  status edit alone cannot make the controller delete the only sealed copy of a key.
* ``archived`` tags, on status records, over the uid, the version and the time it was
  archived (``archivedAt``, which starts its grace period). A version is destroyed at
  ``archivedAt`` plus the grace period only when that time carries a valid tag; an
  ``archivedAt`` without a valid one (back-dated in status, carrying a tag copied from
  another version or ApiKey, or written before these tags existed) is re-stamped to the
  present with a fresh tag. A status edit can at most restart a grace period from the
  present; it can never shorten one.

A tag proves only that the controller once decided this for this uid and version; it
does not say the decision is the latest. Restoring an earlier tagged ``archivedAt`` of
the same version gives back at most the grace period the controller first granted.

Tags are ``hm1:<32 hex digits>`` (128 bits) and compared in constant time. The key is
derived from the controller's fingerprint key under its own label, so it is separate
from fingerprints.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

__all__ = ["TAG_PREFIX", "Purpose", "archived_tag", "blob_tag", "destroyed_tag", "tag_valid"]

TAG_PREFIX = "hm1:"
_LABEL = b"securekeys.io/v1/integrity-tag\x00"
_SIZE = 16
_MIN_KEY_SIZE = 32

Purpose = Literal["blob", "destroyed", "archived"]


def _field(value: str | bytes) -> bytes:
    encoded = value.encode("utf-8") if isinstance(value, str) else value
    return len(encoded).to_bytes(4, "big") + encoded


def _tag(key: bytes | bytearray, purpose: Purpose, uid: str, version: int, detail: bytes) -> str:
    if len(key) < _MIN_KEY_SIZE:
        raise ValueError(f"integrity key must be at least {_MIN_KEY_SIZE} bytes")
    mac = hmac.new(key, _LABEL, hashlib.sha256)
    for part in (purpose, uid, str(version), detail):
        mac.update(_field(part))
    return TAG_PREFIX + mac.digest()[:_SIZE].hex()


def blob_tag(key: bytes | bytearray, uid: str, version: int, sealed: bytes) -> str:
    """The tag of one blob entry: this ApiKey incarnation, this version, these bytes."""
    return _tag(key, "blob", uid, version, hashlib.sha256(sealed).digest())


def destroyed_tag(key: bytes | bytearray, uid: str, version: int, destroyed_at: str) -> str:
    """The tag of a Destroyed record: the controller decided to destroy this version."""
    return _tag(key, "destroyed", uid, version, destroyed_at.encode())


def archived_tag(key: bytes | bytearray, uid: str, version: int, archived_at: str) -> str:
    """The tag of an Archived record's ``archivedAt``: the controller archived this
    version at this time, so its grace period may be counted from it."""
    return _tag(key, "archived", uid, version, archived_at.encode())


def tag_valid(expected: str, presented: object) -> bool:
    """Whether ``presented`` is ``expected``, compared in constant time."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
