"""``CachedUnwraps``: a provider with a DEK cache in front, as the controller uses it.

The rewrap path matters most: a provider that can re-encrypt inside its KMS (AWS's
``ReEncrypt``) must be asked to, even behind the cache, so the DEK never leaves the KMS;
any other provider is unwrapped (through the cache) and wrapped again.
"""

from __future__ import annotations

import os

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding, WrapContext
from secure_keys.core.errors import KmsDenied
from secure_keys.core.kms.base import HealthStatus, WrappedKey
from secure_keys.core.kms.cache import CachedUnwraps, DekCache
from secure_keys.core.kms.local import LocalKms

BINDING = KeyBinding("payments", "stripe-live", 1)


class Reencrypting:
    """The local provider plus a ``reencrypt`` that records it was asked (and works)."""

    def __init__(self, inner: LocalKms) -> None:
        self.inner = inner
        self.reencrypted = 0
        self.unwraps = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def key_version(self) -> str:
        return self.inner.key_version()

    def health(self) -> HealthStatus:
        return self.inner.health()

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        self.unwraps += 1
        return self.inner.unwrap(wrapped, context)

    def reencrypt(self, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
        self.reencrypted += 1
        dek = self.inner.unwrap(wrapped, context)
        return self.inner.wrap(dek, context)


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
    inner = Reencrypting(LocalKms._from_keks("k", {1: one, 2: two}))
    moved = envelope.rewrap(sealed, BINDING, CachedUnwraps(inner, DekCache()))
    assert inner.reencrypted == 1
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
