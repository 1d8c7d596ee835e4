"""Lease arithmetic for leader election (the I/O is covered by tests/e2e)."""

from __future__ import annotations

import datetime

import pytest

from secure_keys.controller.leader import LeaseTiming, claimed_spec, expired

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
