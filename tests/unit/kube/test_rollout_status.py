"""The rollout status format (``kube/rollout.py``): merging replica views into the
summary, the RolledOut condition, defensive parsing, and the digest that lets the
controller ignore rollout-only writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from secure_keys.kube import rollout
from secure_keys.kube.rollout import ReplicaView, RolloutSummary

NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


def test_two_replicas_sum_their_current_pods() -> None:
    replicas = {
        "gw-a": ReplicaView(7, connected=3, current=3),
        "gw-b": ReplicaView(7, connected=2, current=1, behind=("web-4",)),
    }
    summary = rollout.merge(
        7,
        ["web-0", "web-1", "web-2", "web-3", "web-4"],
        replicas,
        mine="gw-a",
        my_connected=["web-0", "web-1", "web-2"],
        previous=None,
        now=NOW,
    )
    assert (summary.pods, summary.stragglers, summary.unnamed) == ("4/5", ("web-4",), 0)
    assert summary.rolled_out_at is None
    assert not summary.complete


def test_a_view_of_an_older_version_counts_as_behind() -> None:
    replicas = {"gw-a": ReplicaView(6, connected=2, current=2)}
    summary = rollout.merge(
        7, ["a", "b"], replicas, mine="gw-b", my_connected=[], previous=None, now=NOW
    )
    assert summary.current == 0
    assert summary.unnamed == 2


def test_the_only_serving_replica_names_pods_without_a_stream() -> None:
    replicas = {"gw-a": ReplicaView(7, connected=2, current=2)}
    summary = rollout.merge(
        7, ["a", "b", "stopped"], replicas, mine="gw-a", my_connected=["a", "b"],
        previous=None, now=NOW,
    )  # fmt: skip
    assert summary.stragglers == ("stopped",)
    assert summary.unnamed == 0


def test_with_several_serving_replicas_a_pod_without_a_stream_is_counted_not_guessed() -> None:
    replicas = {
        "gw-a": ReplicaView(7, connected=1, current=1),
        "gw-b": ReplicaView(7, connected=1, current=1),
    }
    summary = rollout.merge(
        7, ["a", "b", "c"], replicas, mine="gw-a", my_connected=["a"], previous=None, now=NOW
    )
    assert summary.pods == "2/3"
    assert summary.stragglers == ()
    assert summary.unnamed == 1


def test_stragglers_are_bounded_and_the_rest_counted() -> None:
    pods = [f"web-{i:02d}" for i in range(12)]
    summary = rollout.merge(3, pods, {}, mine="gw-a", my_connected=[], previous=None, now=NOW)
    assert len(summary.stragglers) == rollout.MAX_NAMED
    assert summary.unnamed == 12 - rollout.MAX_NAMED


def test_rolled_out_at_is_kept_while_the_same_version_stays_complete() -> None:
    first = rollout.merge(
        2, ["a"], {"g": ReplicaView(2, 1, 1)}, mine="g", my_connected=["a"], previous=None,
        now=NOW,
    )  # fmt: skip
    later = rollout.merge(
        2, ["a"], {"g": ReplicaView(2, 1, 1)}, mine="g", my_connected=["a"], previous=first,
        now=NOW.replace(hour=9),
    )  # fmt: skip
    assert first.rolled_out_at == later.rolled_out_at == "2026-12-07T05:00:00Z"


def test_current_never_exceeds_consumers() -> None:
    # A replica killed outright leaves its entry; its pods reconnected elsewhere.
    replicas = {"dead": ReplicaView(4, 2, 2), "live": ReplicaView(4, 2, 2)}
    summary = rollout.merge(
        4, ["a", "b"], replicas, mine="live", my_connected=["a", "b"], previous=None, now=NOW
    )
    assert summary.pods == "2/2"


def test_rolled_out_condition_keeps_the_controllers_conditions() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Active", "message": "m",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    behind = RolloutSummary(5, 3, 2, ("web-2",), 0, None)
    conditions = rollout.condition_for(behind, [ready], now=NOW)
    assert conditions[0] == ready
    rolled = conditions[1]
    assert (rolled["type"], rolled["status"], rolled["reason"]) == (
        "RolledOut", "False", "PodsBehind",
    )  # fmt: skip
    assert rolled["message"] == "2/3 pods hold version 5; behind: web-2"
    done = RolloutSummary(5, 3, 3, (), 0, "2026-12-07T05:00:00Z")
    later = rollout.condition_for(done, conditions, now=NOW.replace(hour=6))
    assert later[1]["status"] == "True"
    assert later[1]["lastTransitionTime"] == "2026-12-07T06:00:00Z"
    again = rollout.condition_for(done, later, now=NOW.replace(hour=7))
    assert again[1]["lastTransitionTime"] == "2026-12-07T06:00:00Z"


def test_a_key_nobody_consumes_is_rolled_out() -> None:
    summary = rollout.merge(1, [], {}, mine="g", my_connected=[], previous=None, now=NOW)
    condition = rollout.condition_for(summary, [], now=NOW)[0]
    assert (condition["status"], condition["reason"]) == ("True", "NoConsumers")


def test_parsing_drops_what_does_not_fit() -> None:
    status = {
        "rollout": {
            "version": 3,
            "consumers": 2,
            "current": 2,
            "stragglers": ["x" * 300, 7, "ok", "a", "b", "c", "d"],
            "replicas": {
                "good": {"version": 3, "connected": 2, "current": 2},
                "lies": {"version": 3, "connected": 1, "current": 5},
                "junk": "text",
                "negative": {"version": 3, "connected": -1, "current": 0},
            },
        }
    }
    parsed = rollout.parse_rollout(status)
    assert set(parsed.replicas) == {"good"}
    assert parsed.summary is not None
    assert parsed.summary.stragglers == ("ok", "a", "b")
    assert rollout.parse_rollout({"rollout": ["not", "a", "map"]}).summary is None


def test_the_digest_ignores_only_rollout_writes() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "k", "resourceVersion": "1", "annotations": {}},
        "spec": {"source": {}},
        "status": {"currentVersion": 2, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    written: dict[str, Any] = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": "2"},
        "status": {
            "currentVersion": 2,
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "RolledOut", "status": "False"},
            ],
            "rollout": {"pods": "1/2"},
        },
    }
    assert rollout.reconcile_digest(body) == rollout.reconcile_digest(written)
    rotated = {**written, "metadata": {**body["metadata"], "annotations": {"r": "x"}}}
    assert rollout.reconcile_digest(rotated) != rollout.reconcile_digest(written)
    edited = {**written, "status": {**written["status"], "currentVersion": 1}}
    assert rollout.reconcile_digest(edited) != rollout.reconcile_digest(written)


def test_the_patch_touches_only_its_own_entry() -> None:
    summary = RolloutSummary(2, 1, 1, (), 0, "2026-12-07T05:00:00Z")
    patch = rollout.status_patch("42", summary, "gw-a", None, [])
    assert patch["metadata"] == {"resourceVersion": "42"}
    assert patch["status"]["rollout"]["replicas"] == {"gw-a": None}
    assert patch["status"]["rollout"]["pods"] == "1/1"
