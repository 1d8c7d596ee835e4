"""Owns the version rows' MAC: what makes ``keys.db``'s states and times tamper-evident.

The envelope of a version is authenticated by AES-GCM with its binding (store, key,
version), but which version ``get`` serves is decided by the row beside it: its state
and its times. Each row therefore carries ``mac``, HMAC-SHA256 over the store id and
every column but the envelope (name, version, state, the four times, the KMS provider,
key id and key version), under a key derived from the store's own secret key with HKDF
under its own label (``derive_row_key``; ``core.hierarchy`` owns HKDF), so separate from
the audit log's key. Only an opened store holds it. A row edited in the file (an
``UPDATE versions SET state = ...`` that would bring back a revoked value) no longer
checks, and the store refuses it (``StoreCorrupt``) instead of serving anything.

What a MAC per row cannot show: a whole row put back from an earlier copy of
``keys.db`` (a rollback of the file, or of one key's rows, to a state it really had).
There is no counter outside the file to compare against; ``docs/local-store.md``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

from secure_keys.core.hierarchy import hkdf_sha256
from secure_keys.core.stamps import format_stamp
from secure_keys.store.lifecycle import VersionRow

__all__ = ["MAC_SIZE", "derive_row_key", "row_mac", "row_mac_valid"]

MAC_SIZE = 32
_INFO = b"securekeys.io/v1/local-store/version-rows"


def derive_row_key(store_key: bytes | bytearray) -> bytearray:
    """The rows' MAC key (32 bytes, a fresh buffer the caller zeroes)."""
    if len(store_key) < 32:
        raise ValueError("the store key must be at least 32 bytes")
    return hkdf_sha256(store_key, salt=b"", info=_INFO)


def _canonical(store_id: str, row: VersionRow) -> bytes:
    def stamp(value: dt.datetime | None) -> str | None:
        return None if value is None else format_stamp(value)

    fields = [
        store_id,
        row.name,
        row.version,
        row.state,
        format_stamp(row.created_at),
        stamp(row.activated_at),
        stamp(row.archived_at),
        stamp(row.destroyed_at),
        row.kms_provider,
        row.kms_key_id,
        row.kms_key_version,
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def row_mac(key: bytes | bytearray, store_id: str, row: VersionRow) -> bytes:
    return hmac.new(key, _canonical(store_id, row), hashlib.sha256).digest()


def row_mac_valid(key: bytes | bytearray, store_id: str, row: VersionRow, mac: object) -> bool:
    """Whether ``mac`` (as read from the file: any type) is this row's, in constant time."""
    if not isinstance(mac, bytes) or len(mac) != MAC_SIZE:
        return False
    return hmac.compare_digest(row_mac(key, store_id, row), mac)
