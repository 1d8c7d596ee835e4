"""The keyed work queue (secure_keys.controller.workqueue): dedup, in-flight keys, delays,
backoff and shutdown.

The repository has no pytest-asyncio: each test runs its scenario with ``asyncio.run``.
Delays are real but short (tens of milliseconds), with generous upper bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from secure_keys.controller.workqueue import WorkQueue

NOTHING = 0.05
"""How long to wait before concluding that no key is coming."""


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def next_key(queue: WorkQueue[str], timeout: float = 2.0) -> str:
    return await asyncio.wait_for(queue.get(), timeout)


async def nothing_ready(queue: WorkQueue[str], wait: float = NOTHING) -> bool:
    try:
        key = await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected key {key!r}")


@contextlib.asynccontextmanager
async def timers(queue: WorkQueue[str]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(queue.run_timers())
    try:
        yield task
    finally:
        queue.close()
        await asyncio.wait_for(task, 1)


def test_a_queued_key_is_queued_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "a", "b", "c"):
            queue.add(key)
        assert len(queue) == 3
        assert [await next_key(queue) for _ in range(3)] == ["a", "b", "c"]
        assert len(queue) == 0
        assert await nothing_ready(queue)

    run(scenario)


def test_a_key_in_progress_is_not_handed_out_twice() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        assert await next_key(queue) == "a"
        queue.add("a")  # an event while a worker holds the key
        queue.add("a")
        assert len(queue) == 0
        assert await nothing_ready(queue)
        queue.done("a")
        assert len(queue) == 1  # queued again, once
        assert await next_key(queue) == "a"
        queue.done("a")
        assert await nothing_ready(queue)

    run(scenario)


def test_done_without_a_new_add_does_not_requeue() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add("b")
        assert await next_key(queue) == "a"
        queue.done("a")
        assert await next_key(queue) == "b"
        queue.done("b")
        assert len(queue) == 0
        assert await nothing_ready(queue)
        queue.add("a")  # after done, a key is an ordinary key again
        assert await next_key(queue) == "a"

    run(scenario)


def test_other_keys_flow_while_one_is_in_progress() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        assert await next_key(queue) == "a"
        queue.add("a")
        queue.add("b")
        assert await next_key(queue) == "b"
        queue.done("b")
        queue.done("a")
        assert await next_key(queue) == "a"

    run(scenario)


def test_add_after_delivers_in_due_order() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        async with timers(queue):
            start = time.monotonic()
            queue.add_after("late", 0.09)
            queue.add_after("early", 0.01)
            queue.add_after("middle", 0.05)
            assert len(queue) == 0  # nothing is ready before its time
            got = []
            for _ in range(3):
                key = await next_key(queue)
                got.append((key, time.monotonic() - start))
                queue.done(key)
        assert [key for key, _ in got] == ["early", "middle", "late"]
        for (_, at), due in zip(got, (0.01, 0.05, 0.09), strict=True):
            assert at >= due

    run(scenario)


@pytest.mark.parametrize("order", ["short-first", "long-first"])
def test_add_after_the_earlier_request_wins(order: str) -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        async with timers(queue):
            start = time.monotonic()
            delays = (0.02, 0.3) if order == "short-first" else (0.3, 0.02)
            for delay in delays:
                queue.add_after("k", delay)
            assert await next_key(queue, timeout=0.2) == "k"
            assert time.monotonic() - start < 0.2
            queue.done("k")
            # The later request was absorbed by the earlier one: no second delivery.
            assert await nothing_ready(queue, wait=0.45)

    run(scenario)


def test_add_cancels_a_pending_delay() -> None:
    # Processing the key plans its next wake-up afresh, so the old timer is dropped.
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        async with timers(queue):
            queue.add_after("k", 0.05)
            queue.add("k")
            assert await next_key(queue) == "k"
            queue.done("k")
            assert await nothing_ready(queue, wait=0.15)

    run(scenario)


def test_a_delay_of_zero_or_less_is_immediate() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 0)
        queue.add_after("b", -1)
        assert len(queue) == 2  # no timer task is running: these never needed one
        assert [await next_key(queue), await next_key(queue)] == ["a", "b"]

    run(scenario)


def test_a_timer_firing_during_processing_requeues_on_done() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        async with timers(queue):
            queue.add("k")
            assert await next_key(queue) == "k"
            queue.add_after("k", 0.01)
            await asyncio.sleep(0.05)
            assert len(queue) == 0
            queue.done("k")
            assert await next_key(queue) == "k"

    run(scenario)


def test_backoff_doubles_then_caps_and_forget_resets() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.001, max_delay=0.01)
        delays = []
        for _ in range(6):
            delays.append(queue.backoff("k"))
        assert delays == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.01, 0.01])
        assert queue.failures("k") == 6
        assert queue.failures("other") == 0
        assert queue.backoff("other") == pytest.approx(0.001)  # per key
        queue.forget("k")
        assert queue.failures("k") == 0
        assert queue.backoff("k") == pytest.approx(0.001)
        queue.forget("never-seen")  # harmless

    run(scenario)


def test_backoff_requeues_the_key() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.02, max_delay=1.0)
        async with timers(queue):
            queue.add("k")
            assert await next_key(queue) == "k"
            start = time.monotonic()
            assert queue.backoff("k") == pytest.approx(0.02)
            queue.done("k")
            assert await next_key(queue) == "k"
            assert time.monotonic() - start >= 0.02

    run(scenario)


def test_close_stops_the_timers_and_refuses_new_keys() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        task = asyncio.create_task(queue.run_timers())
        queue.add_after("k", 60)  # run_timers is waiting a minute for this one
        await asyncio.sleep(0.01)
        assert not task.done()
        queue.close()
        await asyncio.wait_for(task, 1)
        queue.add("late")
        assert len(queue) == 0
        assert await nothing_ready(queue)

    run(scenario)


def test_close_stops_idle_timers() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        task = asyncio.create_task(queue.run_timers())
        await asyncio.sleep(0.01)  # waiting with no timer at all
        queue.close()
        await asyncio.wait_for(task, 1)

    run(scenario)
