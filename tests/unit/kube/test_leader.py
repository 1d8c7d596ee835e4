"""Leader election: the Lease arithmetic, and the I/O against FakeApi.

The e2e suite covers two real replicas; here FakeApi stages what a real API server does
not on demand: a competing write between our read and write, a GET that never answers,
renewals that fail slowly, and replicas whose wall clocks disagree by an hour.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any, cast

import aiohttp
import pytest

from secure_keys.kube.client import ApiError, KubeApi
from secure_keys.kube.leader import (
    LEASES,
    LeaderElector,
    LeaseRecord,
    LeaseTiming,
    Observation,
    claimed_spec,
    expired,
    observe,
)
from tests.unit.controller.fakeapi import FakeApi

T0 = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
SPEC = {
    "holderIdentity": "a",
    "leaseDurationSeconds": 15,
    "acquireTime": "2026-11-28T12:00:00.000000Z",
    "renewTime": "2026-11-28T12:00:00.000000Z",
    "leaseTransitions": 2,
}
RECORD = LeaseRecord.from_spec(SPEC)


class Monotonic:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wall:
    """A replica's wall clock, which may be set to any time."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


# -- pure: observation and expiry -----------------------------------------------------


def test_an_unchanged_record_keeps_the_time_it_was_first_seen() -> None:
    first = observe(None, RECORD, 5.0)
    assert observe(first, LeaseRecord.from_spec(dict(SPEC)), 9.0) == Observation(RECORD, 5.0)
    renewed = LeaseRecord.from_spec({**SPEC, "renewTime": "2026-11-28T12:00:02.000000Z"})
    assert observe(first, renewed, 9.0) == Observation(renewed, 9.0)


@pytest.mark.parametrize(
    ("spec", "seconds_since_seen", "is_expired"),
    [
        (SPEC, 14, False),
        (SPEC, 15, False),
        (SPEC, 15.5, True),
        ({**SPEC, "holderIdentity": ""}, 0, True),
        # the renewTime is not consulted at all: a year-old stamp just seen is alive
        ({**SPEC, "renewTime": "2025-11-28T12:00:00.000000Z"}, 14, False),
        ({**SPEC, "renewTime": None, "acquireTime": None}, 14, False),
        # no duration in the record: ours (10 s here) applies
        ({**SPEC, "leaseDurationSeconds": None}, 9, False),
        ({**SPEC, "leaseDurationSeconds": None}, 11, True),
    ],
)
def test_expired(spec: dict[str, Any], seconds_since_seen: float, is_expired: bool) -> None:
    timing = LeaseTiming(lease_duration=10, renew_deadline=5, retry_period=1)
    seen = observe(None, LeaseRecord.from_spec(spec), 100.0)
    assert expired(seen, 100.0 + seconds_since_seen, timing) is is_expired


def test_renewal_keeps_the_term_and_counts_no_transition() -> None:
    renewed = claimed_spec(SPEC, "a", LeaseTiming(), T0 + datetime.timedelta(seconds=5))
    assert renewed["acquireTime"] == SPEC["acquireTime"]
    assert renewed["renewTime"] == "2026-11-28T12:00:05.000000Z"
    assert renewed["leaseTransitions"] == 2


def test_takeover_starts_a_new_term_and_counts_a_transition() -> None:
    taken = claimed_spec(SPEC, "b", LeaseTiming(), T0 + datetime.timedelta(seconds=20))
    assert taken["holderIdentity"] == "b"
    assert taken["acquireTime"] == taken["renewTime"] == "2026-11-28T12:00:20.000000Z"
    assert taken["leaseTransitions"] == 3
    assert claimed_spec(None, "b", LeaseTiming(), T0)["leaseTransitions"] == 0


def test_the_advertised_duration_is_never_shorter_than_ours() -> None:
    # Rounding 2.4 s down to 2 would let a follower take over while we still lead.
    timing = LeaseTiming(lease_duration=2.4, renew_deadline=2, retry_period=0.3)
    assert claimed_spec(None, "a", timing, T0)["leaseDurationSeconds"] == 3


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseTiming(lease_duration=10, renew_deadline=10, retry_period=2)


# -- the I/O, against FakeApi ---------------------------------------------------------


def _lease(holder: str, renewed: datetime.datetime) -> dict[str, object]:
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "metadata": {"name": "lead"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        },
    }


def _elector(
    api: FakeApi,
    identity: str,
    timing: LeaseTiming | None = None,
    *,
    wall: Wall | None = None,
    monotonic: Monotonic | None = None,
) -> LeaderElector:
    return LeaderElector(
        cast(KubeApi, api),
        "ns",
        "lead",
        identity,
        timing or LeaseTiming(),
        clock=wall or Wall(T0),
        monotonic=monotonic or time.monotonic,
    )


def _holder(api: FakeApi) -> str:
    return str(api.stored(LEASES, "ns", "lead")["spec"]["holderIdentity"])


def test_a_free_lease_is_created_and_a_held_one_is_respected() -> None:
    api = FakeApi()
    assert asyncio.run(_elector(api, "a")._try())
    assert _holder(api) == "a"
    assert not asyncio.run(_elector(api, "b")._try())


def test_a_lease_is_taken_over_only_after_a_full_term_of_our_own_observation() -> None:
    api = FakeApi()
    api.put(LEASES, "ns", _lease("a", T0 - datetime.timedelta(days=30)))  # long dead
    clock = Monotonic()
    follower = _elector(api, "b", monotonic=clock)
    assert not asyncio.run(follower._try())  # first sighting: the term starts now
    clock.now += 15
    assert not asyncio.run(follower._try())
    clock.now += 0.5
    assert asyncio.run(follower._try())
    spec = api.stored(LEASES, "ns", "lead")["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)


def test_a_follower_whose_clock_runs_an_hour_ahead_does_not_take_a_renewed_lease() -> None:
    api = FakeApi()
    leader_wall = Wall(T0)
    leader = _elector(api, "a", wall=leader_wall)
    assert asyncio.run(leader._try())
    clock = Monotonic()
    follower = _elector(api, "b", wall=Wall(T0 + HOUR), monotonic=clock)
    for _ in range(12):  # 60 s of the follower's time, four terms; the leader renews
        assert not asyncio.run(follower._try())
        clock.now += 5
        leader_wall.now += datetime.timedelta(seconds=5)
        assert asyncio.run(leader._try())
    assert _holder(api) == "a"

    # The leader stops renewing: the follower waits one term from its last sighting of a
    # change, not from the leader's renewTime (which its clock says is an hour old).
    assert not asyncio.run(follower._try())
    clock.now += 14
    assert not asyncio.run(follower._try())
    clock.now += 1.5
    assert asyncio.run(follower._try())
    assert _holder(api) == "b"


def test_a_follower_whose_clock_runs_an_hour_behind_takes_a_lease_left_unrenewed() -> None:
    api = FakeApi()
    assert asyncio.run(_elector(api, "a")._try())  # then "a" dies
    clock = Monotonic()
    follower = _elector(api, "b", wall=Wall(T0 - HOUR), monotonic=clock)
    assert not asyncio.run(follower._try())
    clock.now += 10
    assert not asyncio.run(follower._try())
    clock.now += 5.5
    assert asyncio.run(follower._try())
    assert _holder(api) == "b"


def test_losing_the_race_for_an_expired_lease_is_not_a_win() -> None:
    api = FakeApi()
    api.put(LEASES, "ns", _lease("a", T0 - datetime.timedelta(seconds=30)))
    clock = Monotonic()
    follower = _elector(api, "b", monotonic=clock)
    assert not asyncio.run(follower._try())
    clock.now += 16

    def someone_else_renews(fake: FakeApi, *_: object) -> None:
        fake._bump(fake.stored(LEASES, "ns", "lead"))

    api.before("replace", "leases", "", someone_else_renews)
    assert not asyncio.run(follower._try())
    assert _holder(api) == "a"


# -- holding: the renew deadline, measured from the last successful renewal -----------

FAST = LeaseTiming(lease_duration=0.6, renew_deadline=0.3, retry_period=0.05)


async def _never_answers(*_: object, **__: object) -> dict[str, object]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _lost_after(elector: LeaderElector, *, delay: float = 0.0) -> float:
    """Run ``hold`` (after ``delay``); seconds from the last renewal to ``on_lost``."""
    lost: list[float] = []

    async def run() -> None:
        await asyncio.sleep(delay)
        await asyncio.wait_for(elector.hold(lambda: lost.append(time.monotonic())), timeout=2)

    renewed = elector._renewed  # when the last successful acquire/renew started
    asyncio.run(run())
    assert lost
    return lost[0] - renewed


def test_a_leader_that_cannot_renew_gives_up_before_its_term_ends() -> None:
    api = FakeApi()
    elector = _elector(api, "a", FAST)
    assert asyncio.run(elector._try())

    async def failing_get(*_: object, **__: object) -> dict[str, object]:
        raise ApiError(503, "ServiceUnavailable", "etcd is down")

    api.get = failing_get  # type: ignore[method-assign]
    assert FAST.renew_deadline <= _lost_after(elector) < FAST.lease_duration


def test_a_renewal_whose_get_never_answers_gives_up_at_the_renew_deadline() -> None:
    api = FakeApi()
    elector = _elector(api, "a", FAST)
    assert asyncio.run(elector._try())
    api.get = _never_answers  # type: ignore[method-assign]
    assert FAST.renew_deadline <= _lost_after(elector) < FAST.renew_deadline + 0.15


def test_renewals_that_fail_slowly_give_up_before_the_term_ends() -> None:
    api = FakeApi()
    timing = LeaseTiming(lease_duration=0.45, renew_deadline=0.3, retry_period=0.05)
    elector = _elector(api, "a", timing)
    assert asyncio.run(elector._try())

    async def slow_failure(*_: object, **__: object) -> dict[str, object]:
        await asyncio.sleep(0.2)
        raise ApiError(504, "Timeout", "the server was unable to respond in time")

    api.get = slow_failure  # type: ignore[method-assign]
    assert _lost_after(elector) < timing.lease_duration


def test_the_renew_deadline_counts_from_the_last_renewal_not_from_hold() -> None:
    api = FakeApi()
    elector = _elector(api, "a", FAST)
    assert asyncio.run(elector._try())  # acquired; the caller is busy before hold() runs

    async def failing_get(*_: object, **__: object) -> dict[str, object]:
        raise ApiError(503, "ServiceUnavailable", "etcd is down")

    api.get = failing_get  # type: ignore[method-assign]
    assert _lost_after(elector, delay=0.35) < FAST.lease_duration


def test_a_renewal_finding_another_holder_gives_up_at_once() -> None:
    api = FakeApi()
    elector = _elector(api, "a", FAST)
    assert asyncio.run(elector._try())
    api.put(LEASES, "ns", _lease("b", T0))
    assert _lost_after(elector) < FAST.renew_deadline


def test_hold_needs_the_lease() -> None:
    with pytest.raises(RuntimeError, match="acquire"):
        asyncio.run(asyncio.wait_for(_elector(FakeApi(), "a", FAST).hold(lambda: None), 1))


def test_successful_renewals_keep_the_lease() -> None:
    api = FakeApi()
    elector = _elector(api, "a", FAST)
    assert asyncio.run(elector._try())

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(elector.hold(lambda: None), timeout=FAST.lease_duration * 2)

    asyncio.run(run())
    renewals = [call for call in api.calls if call[0] == "replace"]
    assert len(renewals) >= 5
    assert _holder(api) == "a"


# -- acquiring: bounded attempts ------------------------------------------------------


def test_acquire_outlasts_a_get_that_never_answers_and_a_dropped_connection() -> None:
    api = FakeApi()
    real_get = api.get
    failures: list[Any] = [_never_answers, aiohttp.ServerDisconnectedError()]

    async def flaky_get(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return cast(dict[str, Any], await failure())
        return await real_get(*args, **kwargs)

    api.get = flaky_get  # type: ignore[method-assign]
    elector = _elector(api, "a", FAST)
    asyncio.run(asyncio.wait_for(elector.acquire(), timeout=2))
    assert not failures
    assert _holder(api) == "a"
