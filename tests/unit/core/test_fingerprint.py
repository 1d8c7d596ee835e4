"""Keyed fingerprints."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from secure_keys.core.fingerprint import fingerprint, fingerprints_match


def test_fingerprint_depends_on_the_key_and_the_plaintext() -> None:
    key, other_key = os.urandom(32), os.urandom(32)
    fp = fingerprint(key, b"sk_live_abc")
    assert fp.startswith("hs256:")
    assert len(fp) == len("hs256:") + 32
    assert fingerprint(key, b"sk_live_abc") == fp
    assert fingerprint(key, b"sk_live_abd") != fp
    assert fingerprint(other_key, b"sk_live_abc") != fp


def test_fingerprint_is_not_an_unkeyed_hash() -> None:
    plaintext = b"sk_live_abc"
    fp = fingerprint(os.urandom(32), plaintext)
    assert hashlib.sha256(plaintext).hexdigest()[:32] not in fp
    assert plaintext.hex() not in fp


def test_short_integrity_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        fingerprint(bytes(16), b"x")


def test_fingerprints_match_uses_a_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", spy)
    fp = fingerprint(os.urandom(32), b"x")
    assert fingerprints_match(fp, fp)
    assert not fingerprints_match(fp, fp[:-1] + "0" if fp[-1] != "0" else fp[:-1] + "1")
    assert len(calls) == 2
