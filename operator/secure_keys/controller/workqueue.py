"""A keyed work queue with delays and per-key backoff, as controller-runtime's.

* A key is queued at most once; adding a queued key is a no-op.
* A key being processed is never handed to a second worker. Adding it meanwhile marks
  it dirty, and it is queued again when ``done`` is called.
* ``add_after`` schedules a key for later; an earlier request wins.
* ``backoff`` re-queues with exponential delay (``base * 2**failures``, capped) until
  ``forget`` resets it after a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 300.0) -> None:
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._counter = 0
        self._failures: dict[K, int] = {}
        self._base = base_delay
        self._max = max_delay
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        if self._closed:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._due.pop(key, None)
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        at = time.monotonic() + delay
        if key in self._due and self._due[key] <= at:
            return
        self._due[key] = at
        self._counter += 1
        heapq.heappush(self._timers, (at, self._counter, key))
        if len(self._timers) > 2 * len(self._due) + 64:
            # Superseded entries (a key re-added or re-scheduled) are skipped when they
            # come due; drop them now so the heap stays proportional to the keys waiting.
            self._timers = [t for t in self._timers if self._due.get(t[2]) == t[0]]
            heapq.heapify(self._timers)
        self._wakeup.set()

    def backoff(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._max, self._base * 2.0**failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        key = await self._ready.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_timers(self) -> None:
        """Move delayed keys to the ready queue when due. Run as one background task."""
        while not self._closed:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                at, _, key = heapq.heappop(self._timers)
                if self._due.get(key) == at:
                    del self._due[key]
                    self.add(key)
            timeout = self._timers[0][0] - now if self._timers else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()
