"""Owns the audit chain: an HMAC over each audit record and the one before it.

Each record (a JSON object) gets two members: ``chain`` (``<chain id>:<seq>``, the
sequence number counting from 1 within one writer's run) and ``mac`` (HMAC-SHA256, hex,
under the audit key, over the previous record's mac and the record's canonical JSON
without ``mac``). Deleting, reordering, inserting or editing a record breaks the mac of
that record or of the next one, and ``verify`` names the first record that does not
check. Truncating the tail of a log, or dropping a whole run's chain, cannot be seen from
the records alone (anchor the last mac elsewhere for that).

The audit key is derived from the controller's fingerprint key with HKDF under its own
label (``derive_audit_key``), so it is separate from fingerprints and integrity tags and
every gateway replica that can open the fingerprint key can verify any replica's log.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from secure_keys.core.hierarchy import hkdf_sha256

__all__ = ["AuditChain", "ChainBreak", "derive_audit_key", "verify"]

_INFO = b"securekeys.io/v1/audit-chain"
_GENESIS = bytes(32)


def derive_audit_key(fingerprint_key: bytes | bytearray) -> bytearray:
    """The audit key (32 bytes, a fresh buffer the caller zeroes)."""
    if len(fingerprint_key) < 32:
        raise ValueError("the fingerprint key must be at least 32 bytes")
    return hkdf_sha256(fingerprint_key, salt=b"", info=_INFO)


def _canonical(record: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes | bytearray, previous: bytes, record: Mapping[str, Any]) -> bytes:
    return hmac.new(key, previous + _canonical(record), sha256).digest()


class AuditChain:
    """Adds ``chain`` and ``mac`` to each record in order. Not thread-safe: one writer."""

    def __init__(self, key: bytes | bytearray, chain_id: str | None = None) -> None:
        self._key = bytearray(key)
        self.chain_id = chain_id or secrets.token_hex(8)
        self._seq = 0
        self._previous = _GENESIS

    def link(self, record: Mapping[str, Any]) -> dict[str, Any]:
        self._seq += 1
        linked = {**record, "chain": f"{self.chain_id}:{self._seq}"}
        mac = _mac(self._key, self._previous, linked)
        self._previous = mac
        linked["mac"] = mac.hex()
        return linked


@dataclass(frozen=True, slots=True)
class ChainBreak:
    index: int
    """0-based position of the first record that does not verify."""
    why: str


def verify(records: Iterable[Mapping[str, Any]], key: bytes | bytearray) -> ChainBreak | None:
    """``None`` if every record checks, else the first broken one and why.

    Records of several runs (chain ids) may be interleaved, as in a log collected from
    replicas; each chain must start at 1 and have no gaps.
    """
    state: dict[str, tuple[int, bytes]] = {}
    for index, record in enumerate(records):
        chain, mac = record.get("chain"), record.get("mac")
        if not isinstance(chain, str) or not isinstance(mac, str) or ":" not in chain:
            return ChainBreak(index, "no chain or mac member")
        chain_id, _, seq_text = chain.rpartition(":")
        if not seq_text.isdigit():
            return ChainBreak(index, "malformed chain member")
        seq = int(seq_text)
        last_seq, previous = state.get(chain_id, (0, _GENESIS))
        if seq != last_seq + 1:
            return ChainBreak(
                index, f"sequence {seq} follows {last_seq}: a record is missing or moved"
            )
        expected = _mac(key, previous, record)
        try:
            presented = bytes.fromhex(mac)
        except ValueError:
            return ChainBreak(index, "malformed mac")
        if not hmac.compare_digest(expected, presented):
            return ChainBreak(index, "mac does not verify: the record or its predecessor changed")
        state[chain_id] = (seq, expected)
    return None
