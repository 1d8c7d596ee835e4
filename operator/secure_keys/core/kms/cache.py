"""Owns the DEK cache: unwrapped data keys kept briefly so hot reads skip the KMS.

Bounded both ways: at most ``max_entries`` keys (least recently used goes first) and
each for at most ``ttl`` seconds. Every key that leaves the cache, by eviction, expiry,
``invalidate`` or ``clear``, is zeroed. ``get`` hands out a copy the caller must zero, so
the cached buffer itself never escapes.

An entry is keyed by the whole wrapped key *and* the canonical wrap context, so a wrapped
DEK presented under another binding misses. The cache does not know which provider
instance filled it: give each provider its own cache, and ``clear`` it when that provider
loses access to a key version (a KEK version locked or retired, a key disabled at the
KMS), because a hit never asks the KMS again.

``CachedUnwraps`` puts a cache in front of one provider: it *is* a provider (same name,
key id, wraps and versions) whose unwraps are answered from the cache when they can be,
so a KMS outage does not fail a read of a version wrapped or unwrapped recently (a wrap
caches its data key too: the version just sealed is the one read next). A refusal from the
KMS (``KmsDenied``) clears the cache, so a key disabled at the KMS stops being served
from here as soon as the provider learns of it (and at the latest after ``ttl``).

``CachedUnwraps.cache_only()`` is the same provider that never calls the KMS: an unwrap
the cache cannot answer raises ``NotCached`` (as does anything else that would reach the
KMS). A caller on an event loop opens an envelope through it inline (microseconds: no
thread hop) and only on ``NotCached`` goes off the loop to the real provider.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from secure_keys.core.binding import WrapContext, length_prefixed
from secure_keys.core.errors import KmsDenied
from secure_keys.core.kms.base import HealthStatus, KmsProvider, ReencryptingProvider, WrappedKey
from secure_keys.core.memory import zero

__all__ = ["CacheOnly", "CacheStats", "CachedUnwraps", "DekCache", "NotCached"]


class NotCached(Exception):
    """The cache cannot answer: the KMS would have to be asked (``CacheOnly``)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    size: int


def _cache_key(wrapped: WrappedKey, context: WrapContext) -> bytes:
    digest = hashlib.sha256()
    for part in (wrapped.provider, wrapped.key_id, wrapped.key_version, wrapped.ciphertext):
        digest.update(length_prefixed(part))
    digest.update(context.canonical)
    return digest.digest()


class DekCache:
    """A bounded, expiring, zeroing cache of unwrapped DEKs."""

    def __init__(
        self,
        max_entries: int = 1024,
        ttl: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, bytearray]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def __repr__(self) -> str:
        return f"DekCache(size={len(self._entries)}, max_entries={self._max}, ttl={self._ttl})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, wrapped: WrappedKey, context: WrapContext) -> bytearray | None:
        """A copy of the cached DEK (the caller zeroes it), or ``None`` on a miss."""
        key = _cache_key(wrapped, context)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] <= self._clock():
                self._drop(key)
                entry = None
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return bytearray(entry[1])

    def put(self, wrapped: WrappedKey, context: WrapContext, dek: bytes | bytearray) -> None:
        """Cache a copy of ``dek``; the caller keeps (and zeroes) its own."""
        key = _cache_key(wrapped, context)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (self._clock() + self._ttl, bytearray(dek))
            while len(self._entries) > self._max:
                self._drop(next(iter(self._entries)))

    def invalidate(self, wrapped: WrappedKey, context: WrapContext) -> None:
        with self._lock:
            key = _cache_key(wrapped, context)
            if key in self._entries:
                self._drop(key)

    def purge_expired(self) -> int:
        """Zero and drop every expired entry; returns how many went."""
        with self._lock:
            now = self._clock()
            expired = [k for k, (deadline, _) in self._entries.items() if deadline <= now]
            for key in expired:
                self._drop(key)
            return len(expired)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries))

    def _drop(self, key: bytes) -> None:
        _, dek = self._entries.pop(key)
        zero(dek)
        self._evictions += 1


class CachedUnwraps:
    """``inner`` with its unwraps served from ``cache`` when possible.

    ``observe(hit)`` is called on every unwrap (for hit and miss metrics). Rewraps go to
    the KMS: re-encrypted there when ``inner`` can, else unwrapped (through the cache) and
    wrapped again.
    """

    __slots__ = ("cache", "inner", "observe")

    def __init__(
        self,
        inner: KmsProvider,
        cache: DekCache,
        observe: Callable[[bool], None] | None = None,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.observe = observe

    def __repr__(self) -> str:
        return f"CachedUnwraps({self.inner!r}, {self.cache!r})"

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
        try:
            wrapped = self.inner.wrap(dek, context)
        except KmsDenied:
            self.cache.clear()
            raise
        self.cache.put(wrapped, context, dek)
        return wrapped

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        dek = self.cache.get(wrapped, context)
        if self.observe is not None:
            self.observe(dek is not None)
        if dek is not None:
            return dek
        try:
            dek = self.inner.unwrap(wrapped, context)
        except KmsDenied:
            self.cache.clear()
            raise
        self.cache.put(wrapped, context, dek)
        return dek

    def cache_only(self) -> CacheOnly:
        """This provider without its KMS: unwraps from the cache, else ``NotCached``."""
        return CacheOnly(self)

    def reencrypt(self, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
        inner = self.inner
        try:
            if isinstance(inner, ReencryptingProvider):
                return inner.reencrypt(wrapped, context)
            dek = self.unwrap(wrapped, context)
            try:
                return inner.wrap(dek, context)
            finally:
                zero(dek)
        except KmsDenied:
            self.cache.clear()
            raise


class CacheOnly:
    """A ``CachedUnwraps`` that never reaches its KMS: every call that would raises
    ``NotCached``. Non-blocking, so safe on an event loop."""

    __slots__ = ("_cached",)

    def __init__(self, cached: CachedUnwraps) -> None:
        self._cached = cached

    @property
    def name(self) -> str:
        return self._cached.name

    @property
    def key_id(self) -> str:
        return self._cached.key_id

    def key_version(self) -> str:
        raise NotCached

    def health(self) -> HealthStatus:
        raise NotCached

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        raise NotCached

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        dek = self._cached.cache.get(wrapped, context)
        if dek is None:
            raise NotCached  # the real provider counts the miss when it is asked
        if self._cached.observe is not None:
            self._cached.observe(True)
        return dek
