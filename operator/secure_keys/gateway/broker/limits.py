"""Owns the broker's rate limits: a token bucket per pod and per ServiceAccount, checked
before a request's body is read (a refusal is 429 with ``Retry-After``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from secure_keys.gateway.broker.tokenreview import TokenIdentity


class TokenBucket:
    """``capacity`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, capacity: float, rate: float, clock: Callable[[], float]) -> None:
        self.capacity, self.rate, self._clock = capacity, rate, clock
        self.tokens, self.at = capacity, clock()

    def take(self) -> float:
        """0 if allowed (a token is spent), else the seconds until one is available."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class RateLimits:
    pod_capacity: float = 10
    pod_rate: float = 0.2
    sa_capacity: float = 100
    sa_rate: float = 5
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, ...], TokenBucket] = field(default_factory=dict)

    def check(self, identity: TokenIdentity) -> tuple[str, float] | None:
        """``None`` if allowed, else (which limit, seconds to wait)."""
        if len(self._buckets) > 100_000:
            self._buckets.clear()  # bounded memory; a reset only forgives
        for scope, key, capacity, rate in (
            ("pod", ("pod", identity.pod_uid), self.pod_capacity, self.pod_rate),
            (
                "serviceaccount",
                ("sa", identity.namespace, identity.service_account),
                self.sa_capacity,
                self.sa_rate,
            ),
        ):
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(capacity, rate, self.clock)
            wait = bucket.take()
            if wait > 0:
                return scope, wait
        return None
