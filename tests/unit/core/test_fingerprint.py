"""Keyed fingerprints: keyed, bound to one ApiKey, constant-time compared."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from secure_keys.core.fingerprint import fingerprint, fingerprints_match

KEY = os.urandom(32)


def fp(
    plaintext: bytes, namespace: str = "payments", name: str = "stripe", uid: str = "u-1"
) -> str:
    return fingerprint(KEY, plaintext, namespace=namespace, name=name, uid=uid)


def test_fingerprint_depends_on_the_key_and_the_plaintext() -> None:
    value = fp(b"sk_live_abc")
    assert value.startswith("hs256:")
    assert len(value) == len("hs256:") + 32
    assert fp(b"sk_live_abc") == value
    assert fp(b"sk_live_abd") != value
    other = fingerprint(
        os.urandom(32), b"sk_live_abc", namespace="payments", name="stripe", uid="u-1"
    )
    assert other != value


def test_equal_values_of_different_apikeys_do_not_match() -> None:
    # Item 12 of the hardening issue: a fingerprint is no oracle across ApiKeys.
    value = fp(b"sk_live_abc")
    assert fp(b"sk_live_abc", name="stripe-copy") != value
    assert fp(b"sk_live_abc", namespace="attacker") != value
    # A deleted and re-created ApiKey of the same name is another key (a new uid).
    assert fp(b"sk_live_abc", uid="u-2") != value
    # Length prefixes: moving characters between namespace and name changes the input.
    assert fp(b"x", namespace="ab", name="c") != fp(b"x", namespace="a", name="bc")


def test_fingerprint_is_not_an_unkeyed_hash() -> None:
    plaintext = b"sk_live_abc"
    value = fp(plaintext)
    assert hashlib.sha256(plaintext).hexdigest()[:32] not in value
    assert plaintext.hex() not in value


def test_short_integrity_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        fingerprint(bytes(16), b"x", namespace="n", name="k", uid="u")


def test_fingerprints_match_uses_a_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", spy)
    value = fp(b"x")
    assert fingerprints_match(value, value)
    assert not fingerprints_match(value, value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert len(calls) == 2
