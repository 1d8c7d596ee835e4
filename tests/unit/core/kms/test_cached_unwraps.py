"""``CachedUnwraps``: a provider with a DEK cache in front, as the controller uses it.

The rewrap path matters most: a provider that can re-encrypt inside its KMS (AWS's
``ReEncrypt``) must be asked to, even behind the cache, so the DEK never leaves the KMS;
any other provider is unwrapped (through the cache) and wrapped again.
"""

from __future__ import annotations

import os

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import KmsDenied
from secure_keys.core.kms.base import WrappedKey
from secure_keys.core.kms.cache import CachedUnwraps, DekCache, NotCached
from secure_keys.core.kms.local import LocalKms
from secure_keys.core.kms.observed import ObservedKms, ObservedReencryptingKms

BINDING = KeyBinding("payments", "stripe-live", 1)


def _keks() -> tuple[bytes, bytes]:
    return os.urandom(32), os.urandom(32)


def test_rewrap_behind_the_cache_keeps_the_ciphertext_and_uses_the_cache() -> None:
    one, two = _keks()
    old = LocalKms._from_keks("k", {1: one})
    sealed = envelope.seal(b"value", BINDING, CachedUnwraps(old, DekCache()))
    new = LocalKms._from_keks("k", {1: one, 2: two})
    cached = CachedUnwraps(new, DekCache())
    envelope.open(sealed, BINDING, cached)  # fills the cache
    moved = envelope.rewrap(sealed, BINDING, cached)
    assert moved.wrapped.key_version == "2"
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert cached.cache.stats().hits == 1  # the rewrap's unwrap came from the cache
    assert envelope.open(moved, BINDING, new) == b"value"


def test_a_reencrypting_provider_is_asked_to_reencrypt_even_behind_the_cache() -> None:
    one, two = _keks()
    sealed = envelope.seal(b"value", BINDING, LocalKms._from_keks("k", {1: one}))
    inner = ObservedReencryptingKms(LocalKms._from_keks("k", {1: one, 2: two}))
    moved = envelope.rewrap(sealed, BINDING, CachedUnwraps(inner, DekCache()))
    assert inner.reencrypts == 1
    assert moved.wrapped.key_version == "2"
    assert moved.ciphertext == sealed.ciphertext


def test_a_denied_unwrap_empties_the_cache() -> None:
    kms = LocalKms._from_keks("k", {1: os.urandom(32)})
    cached = CachedUnwraps(kms, DekCache())
    envelope.seal(b"value", BINDING, cached)
    assert len(cached.cache) == 1
    stranger = WrappedKey("local", "k", "7", b"\x01" * 61)  # a version this keyring lacks
    with pytest.raises(KmsDenied):
        cached.unwrap(stranger, BINDING.wrap_context(1))
    assert len(cached.cache) == 0


def test_cache_only_answers_from_the_cache_and_never_asks_the_kms() -> None:
    inner = ObservedKms(LocalKms._from_keks("k", {1: os.urandom(32)}))
    cached = CachedUnwraps(inner, DekCache())
    only = cached.cache_only()
    sealed = envelope.seal(b"value", BINDING, LocalKms._from_keks("k", {1: os.urandom(32)}))
    with pytest.raises(NotCached):  # another keyring's data key: not in the cache
        envelope.open(sealed, BINDING, only)
    with pytest.raises(NotCached):
        only.wrap(os.urandom(32), BINDING.wrap_context(1))
    mine = envelope.seal(b"value", BINDING, cached)  # a wrap caches its data key
    calls = (inner.wraps, inner.unwraps)
    assert envelope.open(mine, BINDING, only) == b"value"
    assert (inner.wraps, inner.unwraps) == calls
    assert (only.name, only.key_id) == (cached.name, cached.key_id)
    cached.cache.clear()
    with pytest.raises(NotCached):
        envelope.open(mine, BINDING, only)
    assert (inner.wraps, inner.unwraps) == calls
