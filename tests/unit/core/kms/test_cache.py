"""The DEK cache: bounds, expiry, zeroing and counters."""

from __future__ import annotations

import os

import pytest

from secure_keys.core.binding import KeyBinding
from secure_keys.core.kms.base import WrappedKey
from secure_keys.core.kms.cache import DekCache

CTX = KeyBinding("ns", "key", 1).wrap_context(1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wrapped(tag: int) -> WrappedKey:
    return WrappedKey("local", "default", "1", bytes([tag]) * 61)


def _stored(cache: DekCache) -> list[bytearray]:
    return [dek for _, dek in cache._entries.values()]


def test_hit_returns_a_copy_and_counts() -> None:
    cache = DekCache(4, 60)
    dek = bytearray(os.urandom(32))
    assert cache.get(_wrapped(1), CTX) is None
    cache.put(_wrapped(1), CTX, dek)
    got = cache.get(_wrapped(1), CTX)
    assert got == dek
    assert got is not None
    got[:] = bytes(32)  # the caller zeroing its copy leaves the cache intact
    assert cache.get(_wrapped(1), CTX) == dek
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 1, 1)


def test_context_is_part_of_the_key() -> None:
    cache = DekCache(4, 60)
    cache.put(_wrapped(1), CTX, os.urandom(32))
    assert cache.get(_wrapped(1), KeyBinding("ns", "key", 2).wrap_context(1)) is None
    assert cache.get(WrappedKey("local", "default", "2", bytes([1]) * 61), CTX) is None


def test_lru_eviction_zeroes_the_evicted_key() -> None:
    cache = DekCache(2, 60)
    for tag in (1, 2):
        cache.put(_wrapped(tag), CTX, os.urandom(32))
    first = _stored(cache)[0]
    cache.get(_wrapped(1), CTX)  # 1 is now most recently used
    second = _stored(cache)[0]
    cache.put(_wrapped(3), CTX, os.urandom(32))
    assert len(cache) == 2
    assert cache.get(_wrapped(2), CTX) is None
    assert second == bytearray(32)
    assert first != bytearray(32)
    assert cache.stats().evictions == 1


def test_expiry_zeroes_and_misses() -> None:
    clock = Clock()
    cache = DekCache(4, 10, clock=clock)
    cache.put(_wrapped(1), CTX, os.urandom(32))
    stored = _stored(cache)[0]
    clock.now += 9.9
    assert cache.get(_wrapped(1), CTX) is not None
    clock.now += 0.2
    assert cache.get(_wrapped(1), CTX) is None
    assert stored == bytearray(32)
    assert len(cache) == 0


def test_purge_expired_and_clear_zero_everything() -> None:
    clock = Clock()
    cache = DekCache(8, 10, clock=clock)
    cache.put(_wrapped(1), CTX, os.urandom(32))
    clock.now += 5
    cache.put(_wrapped(2), CTX, os.urandom(32))
    old, young = _stored(cache)
    clock.now += 6
    assert cache.purge_expired() == 1
    assert old == bytearray(32)
    assert young != bytearray(32)
    cache.clear()
    assert young == bytearray(32)
    assert len(cache) == 0


def test_replacing_and_invalidating_zero_the_old_key() -> None:
    cache = DekCache(4, 60)
    cache.put(_wrapped(1), CTX, os.urandom(32))
    old = _stored(cache)[0]
    cache.put(_wrapped(1), CTX, os.urandom(32))
    assert old == bytearray(32)
    new = _stored(cache)[0]
    cache.invalidate(_wrapped(1), CTX)
    assert new == bytearray(32)
    assert cache.get(_wrapped(1), CTX) is None


def test_put_keeps_its_own_copy() -> None:
    cache = DekCache(4, 60)
    dek = bytearray(os.urandom(32))
    expected = bytes(dek)
    cache.put(_wrapped(1), CTX, dek)
    dek[:] = bytes(32)
    got = cache.get(_wrapped(1), CTX)
    assert got is not None
    assert bytes(got) == expected


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        DekCache(0, 1)
    with pytest.raises(ValueError, match="ttl"):
        DekCache(1, 0)


def test_repr_shows_no_keys() -> None:
    cache = DekCache(4, 60)
    dek = os.urandom(32)
    cache.put(_wrapped(1), CTX, dek)
    assert dek.hex() not in repr(cache)
