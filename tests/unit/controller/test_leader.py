"""Lease arithmetic for leader election (the I/O is covered by tests/e2e)."""

from __future__ import annotations

import asyncio
import datetime
from typing import cast

import pytest

from secure_keys.controller.leader import (
    LEASES,
    LeaderElector,
    LeaseTiming,
    claimed_spec,
    expired,
)
from secure_keys.kube.client import ApiError, KubeApi
from tests.unit.controller.fakeapi import FakeApi

T0 = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)
SPEC = {
    "holderIdentity": "a",
    "leaseDurationSeconds": 15,
    "acquireTime": "2026-11-28T12:00:00.000000Z",
    "renewTime": "2026-11-28T12:00:00.000000Z",
    "leaseTransitions": 2,
}


@pytest.mark.parametrize(
    ("spec", "seconds_later", "is_expired"),
    [
        (SPEC, 14, False),
        (SPEC, 15, False),
        (SPEC, 16, True),
        ({**SPEC, "holderIdentity": ""}, 0, True),
        ({**SPEC, "renewTime": None, "acquireTime": None}, 0, True),
        ({**SPEC, "renewTime": None}, 10, False),
    ],
)
def test_expired(spec: dict[str, object], seconds_later: int, is_expired: bool) -> None:
    assert expired(spec, T0 + datetime.timedelta(seconds=seconds_later)) is is_expired


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


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseTiming(lease_duration=10, renew_deadline=10, retry_period=2)


# -- the I/O, against FakeApi (to stage a competing write between our read and write) ----


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


def _elector(api: FakeApi, identity: str, timing: LeaseTiming | None = None) -> LeaderElector:
    return LeaderElector(
        cast(KubeApi, api), "ns", "lead", identity, timing or LeaseTiming(), clock=lambda: T0
    )


def test_a_free_lease_is_created_and_a_held_one_is_respected() -> None:
    api = FakeApi()
    assert asyncio.run(_elector(api, "a")._try())
    assert api.stored(LEASES, "ns", "lead")["spec"]["holderIdentity"] == "a"
    assert not asyncio.run(_elector(api, "b")._try())


def test_an_expired_lease_is_taken_over() -> None:
    api = FakeApi()
    api.put(LEASES, "ns", _lease("a", T0 - datetime.timedelta(seconds=30)))
    assert asyncio.run(_elector(api, "b")._try())
    spec = api.stored(LEASES, "ns", "lead")["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)


def test_losing_the_race_for_an_expired_lease_is_not_a_win() -> None:
    api = FakeApi()
    api.put(LEASES, "ns", _lease("a", T0 - datetime.timedelta(seconds=30)))

    def someone_else_renews(fake: FakeApi, *_: object) -> None:
        fake._bump(fake.stored(LEASES, "ns", "lead"))

    api.before("replace", "leases", "", someone_else_renews)
    assert not asyncio.run(_elector(api, "b")._try())


def test_a_leader_that_cannot_renew_gives_up_before_its_term_ends() -> None:
    api = FakeApi()
    timing = LeaseTiming(lease_duration=0.6, renew_deadline=0.3, retry_period=0.05)
    elector = _elector(api, "a", timing)
    assert asyncio.run(elector._try())

    async def failing_get(*_: object, **__: object) -> dict[str, object]:
        raise ApiError(503, "ServiceUnavailable", "etcd is down")

    api.get = failing_get  # type: ignore[method-assign]
    lost: list[float] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(elector.hold(lambda: lost.append(loop.time())), timeout=5)
        return started

    started = asyncio.run(run())
    assert lost
    assert lost[0] - started < timing.lease_duration  # stops before anyone may take over
