"""The CLI's rollout verbs, without a cluster: what ``rotate --wait`` waits for, when
``revoke`` refuses, and what ``rollout status`` says of each pod (the e2e tests run them
against real pods)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from secure_keys.cli import args as cli_args
from secure_keys.cli import rollout


def _key(
    *,
    current: int = 3,
    request: str = "r1",
    summary: dict[str, Any] | None = None,
    ended: str | None = None,
) -> rollout.KeyRollout:
    annotations = {} if ended is None else {"securekeys.io/grace-ended-through": ended}
    status: dict[str, Any] = {
        "currentVersion": current,
        "lastRotationRequest": request,
        "versions": [
            {"version": v, "state": "Active" if v == current else "Archived"}
            for v in range(1, current + 1)
        ],
    }
    if summary is not None:
        status["rollout"] = summary
    return rollout.parse(
        {
            "metadata": {"name": "stripe", "namespace": "pay", "resourceVersion": "9",
                         "annotations": annotations},
            "status": status,
        }
    )  # fmt: skip


def _summary(version: int, current: int, consumers: int, *behind: str) -> dict[str, Any]:
    return {
        "version": version,
        "current": current,
        "consumers": consumers,
        "stragglers": list(behind),
        "unnamedStragglers": max(0, consumers - current - len(behind)),
    }


def test_durations() -> None:
    assert cli_args.duration("5m") == 300
    assert cli_args.duration("1h30s") == 3630
    for bad in ("", "5", "-1m", "0s", "5 m"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_args.duration(bad)


def test_wait_returns_once_the_new_version_reached_every_pod() -> None:
    states = iter(
        [
            _key(current=2, request="old", summary=_summary(2, 5, 5)),  # not rotated yet
            _key(current=3, request="r1", summary=_summary(2, 5, 5)),  # old rollout only
            _key(current=3, request="r1", summary=_summary(3, 4, 5, "web-4")),
            _key(current=3, request="r1", summary=_summary(3, 5, 5)),
        ]
    )
    clock = iter(range(100))
    waited = rollout.wait_rollout(
        lambda: next(states),
        lambda key: key.last_rotation_request == "r1",
        60,
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    assert waited.ok
    assert "rolled out to 5/5 pods" in waited.text()
    assert waited.to_json()["current"] == 5


def test_wait_times_out_naming_the_pods_behind() -> None:
    stuck = _key(current=3, summary=_summary(3, 4, 5, "web-stopped"))
    clock = iter(range(0, 1000, 10))
    waited = rollout.wait_rollout(
        lambda: stuck,
        lambda key: key.last_rotation_request == "r1",
        30,
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    assert not waited.ok
    assert "web-stopped" in waited.text()
    assert waited.to_json()["stragglers"] == ["web-stopped"]


def test_revoke_is_refused_while_pods_are_behind_and_names_them() -> None:
    key = _key(current=3, summary=_summary(3, 4, 5, "web-stopped"))
    with pytest.raises(rollout.RolloutRefused, match="web-stopped"):
        rollout.plan_revoke(key, 2, force=False)
    forced = rollout.plan_revoke(key, 2, force=True)
    assert forced == {
        "metadata": {
            "resourceVersion": "9",
            "annotations": {"securekeys.io/grace-ended-through": "2"},
        }
    }


def test_revoke_is_refused_before_any_gateway_measured_the_rollout() -> None:
    with pytest.raises(rollout.RolloutRefused, match="no gateway has reported"):
        rollout.plan_revoke(_key(current=3, summary=_summary(2, 5, 5)), 2, force=False)


def test_an_absent_rollout_is_unknown_until_no_consuming_pod_is_seen() -> None:
    """The gateways write no rollout for a key nobody consumes, but an absent rollout
    alone proves nothing (a gateway that cannot write status writes none either): only
    a key seen to have no consuming pod (``confirm_unconsumed``, or the gateway's own
    answer) counts as rolled out, and then `rotate --wait` returns once it rotates and
    revoke needs no --force."""
    never = _key(current=3, request="r1")
    assert not never.complete
    with pytest.raises(rollout.RolloutRefused, match="no gateway has reported"):
        rollout.plan_revoke(never, 2, force=False)
    assert rollout.mark_unconsumed(never, ["web-1"]) == never  # a pod asks for it
    seen = rollout.mark_unconsumed(never, [])
    assert seen == dataclasses.replace(never, unconsumed=True)
    assert seen.complete
    assert rollout.plan_revoke(seen, 2, force=False) is not None
    waited = rollout.wait_rollout(
        lambda: seen,
        lambda key: key.last_rotation_request == "r1",
        30,
        clock=lambda: 0.0,
        sleep=lambda _s: None,
    )
    assert waited.ok
    assert "no pod consumes it" in waited.text()


def test_pod_names_from_status_are_printed_without_control_characters() -> None:
    forged = _key(current=3, summary=_summary(3, 4, 5, "web-\x1b]0;owned\x07"))
    line = rollout.pods_line(forged)
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "web-?]0;owned?" in line


def test_revoke_takes_only_an_archived_version() -> None:
    done = _key(current=3, summary=_summary(3, 5, 5))
    for version in (3, 4, 0):
        with pytest.raises(rollout.RolloutRefused, match="not an archived version"):
            rollout.plan_revoke(done, version, force=True)
    assert rollout.plan_revoke(done, 2, force=False) is not None
    again = _key(current=3, summary=_summary(3, 5, 5), ended="2")
    assert rollout.plan_revoke(again, 2, force=False) is None


def test_pod_rows_say_only_what_status_knows() -> None:
    pods = {
        "items": [
            {"metadata": {"name": n, "annotations": {"securekeys.io/keys": k}}}
            for n, k in (("a", "stripe"), ("b", "stripe,other"), ("c", "other"), ("d", "stripe"))
        ]
        + [
            {
                "metadata": {"name": "gone", "annotations": {"securekeys.io/keys": "stripe"}},
                "status": {"phase": "Succeeded"},
            }
        ]
    }
    consumers = rollout.consuming_pods(pods, "stripe")
    assert consumers == ["a", "b", "d"]
    named = _key(current=3, summary=_summary(3, 2, 3, "d"))
    assert [r["state"] for r in rollout.pod_rows(named, consumers)] == [
        "current", "current", "behind",
    ]  # fmt: skip
    counted = _key(current=3, summary=_summary(3, 2, 3))
    assert [r["state"] for r in rollout.pod_rows(counted, consumers)] == ["unknown"] * 3


def test_a_rotation_counts_as_honoured_only_once_its_version_is_no_longer_pending() -> None:
    """The controller records the request with the new version still Pending and the
    old one current and rolled out: that is not yet the rotation rolled out."""
    pending = rollout.parse(
        {
            "metadata": {"name": "stripe", "namespace": "pay"},
            "status": {
                "currentVersion": 1,
                "lastRotationRequest": "r1",
                "versions": [
                    {"version": 1, "state": "Active"},
                    {"version": 2, "state": "Pending"},
                ],
                "rollout": _summary(1, 2, 2),
            },
        }
    )
    assert pending.complete
    assert not rollout.honoured(pending, "r1")
    promoted = _key(current=2, request="r1", summary=_summary(2, 2, 2))
    assert rollout.honoured(promoted, "r1")
    assert not rollout.honoured(promoted, "r2")
