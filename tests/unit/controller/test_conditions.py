"""Status conditions (secure_keys.controller.conditions)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from secure_keys.controller.conditions import ConditionStatus, get_condition, set_condition

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
LATER = T0 + datetime.timedelta(hours=5, seconds=7, microseconds=5)

READY_TRUE: dict[str, Any] = {
    "type": "Ready",
    "status": "True",
    "reason": "Active",
    "message": "version 1 is active",
    "observedGeneration": 1,
    "lastTransitionTime": "2030-01-01T00:00:00Z",
}
SEALED: dict[str, Any] = {
    "type": "Sealed",
    "status": "True",
    "reason": "Sealed",
    "message": "version 1 sealed",
    "observedGeneration": 1,
    "lastTransitionTime": "2029-12-31T00:00:00Z",
    "extra": "kept",
}


def ready(
    conditions: list[dict[str, Any]], status: ConditionStatus, reason: str = "Why"
) -> list[dict[str, Any]]:
    return set_condition(
        conditions, "Ready", status, reason, f"because {reason}", generation=2, now=LATER
    )


def test_unchanged_status_keeps_the_transition_time_and_updates_the_rest() -> None:
    out = ready([READY_TRUE], "True", "StillActive")
    assert out == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "StillActive",
            "message": "because StillActive",
            "observedGeneration": 2,
            "lastTransitionTime": "2030-01-01T00:00:00Z",
        }
    ]


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_changed_status_moves_the_transition_time(status: ConditionStatus) -> None:
    out = ready([READY_TRUE], status)
    assert out[0]["status"] == status
    assert out[0]["lastTransitionTime"] == "2030-01-01T05:00:07Z"
    assert out[0]["observedGeneration"] == 2


def test_unchanged_status_without_a_transition_time_gets_one() -> None:
    legacy = {k: v for k, v in READY_TRUE.items() if k != "lastTransitionTime"}
    assert ready([legacy], "True")[0]["lastTransitionTime"] == "2030-01-01T05:00:07Z"


def test_a_new_type_is_appended_and_others_are_preserved() -> None:
    before = [SEALED]
    out = ready(before, "False", "Sealing")
    assert out[0] == SEALED
    assert out[0] is not SEALED  # copied, so the caller's list is not aliased
    assert out[1] == {
        "type": "Ready",
        "status": "False",
        "reason": "Sealing",
        "message": "because Sealing",
        "observedGeneration": 2,
        "lastTransitionTime": "2030-01-01T05:00:07Z",
    }
    assert before == [SEALED]


def test_order_is_kept_and_input_is_not_mutated() -> None:
    other = {"type": "Other", "status": "Unknown"}
    before = [dict(SEALED), dict(READY_TRUE), dict(other)]
    snapshot = [dict(c) for c in before]
    out = ready(before, "False")
    assert [c["type"] for c in out] == ["Sealed", "Ready", "Other"]
    assert out[0] == SEALED
    assert out[2] == other
    assert before == snapshot


def test_stamps_are_utc() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    out = set_condition(
        [],
        "Ready",
        "True",
        "Active",
        "",
        generation=1,
        now=datetime.datetime(2030, 1, 1, 2, 0, tzinfo=plus_two),
    )
    assert out[0]["lastTransitionTime"] == "2030-01-01T00:00:00Z"


def test_get_condition() -> None:
    conditions = [SEALED, READY_TRUE]
    assert get_condition(conditions, "Ready") is READY_TRUE
    assert get_condition(conditions, "Sealed") is SEALED
    assert get_condition(conditions, "Missing") is None
    assert get_condition([], "Ready") is None
