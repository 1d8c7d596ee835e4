"""Owns the ApiKey's rollout status: ``status.rollout``, the ``RolledOut`` condition, and
the pure merge of the gateway replicas' views into them (docs/rollout.md).

The gateway's broker knows, for each of its own streams, which version it delivered.
Each gateway replica writes only its own entry, ``status.rollout.replicas[<replica>]``
(counts, and the first few pods it serves that are behind), and, in the same patch,
the summary it computes over every replica's entry and its own cache of consuming pods:

* ``consumers``: running pods whose ``securekeys.io/keys`` asks for the key;
* ``current``: of those, pods with an open stream that delivered ``version`` (the
  ApiKey's ``status.currentVersion``); a pod without a stream is never current;
* ``pods``: ``<current>/<consumers>`` (the ``PODS`` printer column);
* ``stragglers``: the first ``MAX_NAMED`` pods behind by name, ``unnamedStragglers`` the
  count of the rest (and of pods without a stream that no single replica can name);
* ``rolledOutAt``: when ``current`` first reached ``consumers`` for ``version``.

Every patch carries the resourceVersion the summary was computed from, so two writers
never clobber each other, nor the controller's fields (the controller's condition
builder keeps a condition type it does not own). This module has no I/O and no clock;
the CLI reads the same fields through ``parse_rollout``.

What it reveals: pod names and counts, a version number: nothing a reader of the pods
and of ``kubectl get ak`` did not see. Never a fingerprint or material.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from secure_keys.core.stamps import format_stamp

__all__ = [
    "CONDITION",
    "FIELD",
    "MAX_NAMED",
    "NO_ROLLOUT",
    "ReplicaView",
    "Rollout",
    "RolloutSummary",
    "condition_for",
    "merge",
    "parse_rollout",
    "reconcile_digest",
    "status_patch",
]

FIELD = "rollout"
"""``status.rollout``: written by the gateway replicas only."""
CONDITION = "RolledOut"
"""The condition type the gateway owns in ``status.conditions``."""
MAX_NAMED = 5
"""Pods named per replica entry and in the summary; the rest are counted."""
MAX_REPLICAS = 64
"""Entries read from status; more than this is not a deployment, it is an edit."""
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What one gateway replica sees of one key: the streams it serves."""

    version: int
    """The ApiKey's current version when this view was taken."""
    connected: int
    """Pods with an open stream on this replica that receive the key."""
    current: int
    """Of those, pods that were delivered ``version``."""
    behind: tuple[str, ...] = ()
    """The first ``MAX_NAMED`` connected pods not holding ``version``, sorted."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "connected": self.connected,
            "current": self.current,
            "behind": list(self.behind),
        }


@dataclass(frozen=True, slots=True)
class RolloutSummary:
    version: int
    consumers: int
    current: int
    stragglers: tuple[str, ...]
    unnamed: int
    rolled_out_at: str | None

    @property
    def complete(self) -> bool:
        return self.current >= self.consumers

    @property
    def pods(self) -> str:
        return f"{self.current}/{self.consumers}"


@dataclass(frozen=True, slots=True)
class Rollout:
    """``status.rollout`` as stored (parsed defensively: it is status anyone with the
    right to patch ``apikeys/status`` could edit)."""

    summary: RolloutSummary | None
    replicas: Mapping[str, ReplicaView]
    entries: frozenset[str] = frozenset()
    """The replica ids of the first ``MAX_REPLICAS`` entries, parsed or not: what a
    replica may prune when the id is not a live gateway replica."""


NO_ROLLOUT = Rollout(None, MappingProxyType({}))
"""``status.rollout`` absent or not an object: one shared value, not one per ApiKey."""


def _int(value: object) -> int | None:
    return value if type(value) is int and 0 <= value < 2**32 else None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(n for n in value[:MAX_NAMED] if isinstance(n, str) and 0 < len(n) <= _MAX_NAME)


def _replica(value: object) -> ReplicaView | None:
    if not isinstance(value, dict):
        return None
    version, connected, current = (_int(value.get(k)) for k in ("version", "connected", "current"))
    if version is None or connected is None or current is None or current > connected:
        return None
    return ReplicaView(version, connected, current, _names(value.get("behind")))


def parse_rollout(status: Mapping[str, Any] | None) -> Rollout:
    raw = (status or {}).get(FIELD)
    if not isinstance(raw, dict):
        return NO_ROLLOUT
    replicas: dict[str, ReplicaView] = {}
    ids: set[str] = set()
    entries = raw.get("replicas")
    if isinstance(entries, dict):
        for name, entry in list(entries.items())[:MAX_REPLICAS]:
            if not isinstance(name, str):
                continue
            ids.add(name)
            view = _replica(entry)
            if view is not None:
                replicas[name] = view
    summary = None
    version, consumers, current = (_int(raw.get(k)) for k in ("version", "consumers", "current"))
    if version is not None and consumers is not None and current is not None:
        at = raw.get("rolledOutAt")
        summary = RolloutSummary(
            version,
            consumers,
            current,
            _names(raw.get("stragglers")),
            _int(raw.get("unnamedStragglers")) or 0,
            at if isinstance(at, str) and len(at) <= 64 else None,
        )
    return Rollout(summary, replicas, frozenset(ids))


def merge(
    version: int,
    consumers: Iterable[str],
    replicas: Mapping[str, ReplicaView],
    *,
    mine: str,
    my_connected: Iterable[str],
    previous: RolloutSummary | None,
    now: datetime.datetime,
) -> RolloutSummary:
    """The summary over every replica's entry (``replicas`` already holds ``mine``).

    ``consumers`` are the pods asking for the key in the writer's pod cache;
    ``my_connected`` the pods with a stream on the writer. A replica's view of another
    version than ``version`` (it has not looked since the rotation) counts its pods as
    behind. Pods without a stream anywhere are named only when no other replica serves
    any pod of this key (then the writer knows every stream); otherwise they are counted.
    """
    pods = sorted(set(consumers))
    current = 0
    connected = 0
    named: set[str] = set()
    others_serve = False
    for name, view in replicas.items():
        connected += view.connected
        if view.version == version:
            current += view.current
        named.update(view.behind)
        if name != mine and view.connected:
            others_serve = True
    current = min(current, len(pods))
    behind_named = sorted(n for n in named if n in set(pods))
    if not others_serve:
        seen = set(my_connected)
        behind_named = sorted(set(behind_named) | {p for p in pods if p not in seen})
    stragglers = tuple(behind_named[:MAX_NAMED])
    unnamed = max(0, len(pods) - current - len(stragglers))
    rolled_out_at = None
    if current >= len(pods):
        keep = previous is not None and previous.version == version and previous.complete
        rolled_out_at = (
            previous.rolled_out_at if keep and previous and previous.rolled_out_at else None
        ) or format_stamp(now)
    return RolloutSummary(version, len(pods), current, stragglers, unnamed, rolled_out_at)


def condition_for(
    summary: RolloutSummary,
    conditions: Sequence[Mapping[str, Any]],
    *,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """``conditions`` with ``RolledOut`` set from ``summary``; every other condition is
    kept as it is (they are the controller's). ``lastTransitionTime`` moves only when the
    status changes."""
    if summary.consumers == 0:
        status, reason = "True", "NoConsumers"
        message = f"no running pod consumes version {summary.version}"
    elif summary.complete:
        status, reason = "True", "AllCurrent"
        message = f"{summary.pods} pods hold version {summary.version}"
    else:
        status, reason = "False", "PodsBehind"
        message = f"{summary.pods} pods hold version {summary.version}"
        if summary.stragglers:
            message += "; behind: " + ", ".join(summary.stragglers)
        if summary.unnamed:
            message += f" (and {summary.unnamed} more)"
    fresh: dict[str, Any] = {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": format_stamp(now),
    }
    out: list[dict[str, Any]] = []
    for condition in conditions:
        if condition.get("type") != CONDITION:
            out.append(dict(condition))
        elif condition.get("status") == status and isinstance(
            condition.get("lastTransitionTime"), str
        ):
            fresh["lastTransitionTime"] = condition["lastTransitionTime"]
    out.append(fresh)
    return out


def status_patch(
    resource_version: str,
    summary: RolloutSummary,
    replica: str,
    view: ReplicaView | None,
    conditions: list[dict[str, Any]],
    gone: Iterable[str] = (),
) -> dict[str, Any]:
    """The merge patch of ``apikeys/status`` one replica sends: its own entry (``None``
    removes it), the removal of the entries of replicas that are ``gone`` (no live
    gateway pod by that name), the summary, the conditions, under a resourceVersion
    precondition."""
    replicas: dict[str, Any] = dict.fromkeys(gone)
    replicas[replica] = None if view is None else view.to_json()
    return {
        "metadata": {"resourceVersion": resource_version},
        "status": {
            FIELD: {
                "version": summary.version,
                "consumers": summary.consumers,
                "current": summary.current,
                "pods": summary.pods,
                "stragglers": list(summary.stragglers),
                "unnamedStragglers": summary.unnamed,
                "rolledOutAt": summary.rolled_out_at,
                "replicas": replicas,
            },
            "conditions": conditions,
        },
    }


def reconcile_digest(body: Mapping[str, Any]) -> str:
    """A digest of everything in an ApiKey but what the gateways write (``status.rollout``
    and the ``RolledOut`` condition) and the resourceVersion: two events with the same
    digest differ only by a rollout write, which the controller need not reconcile."""
    metadata = body.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    for volatile in ("resourceVersion", "managedFields"):
        metadata.pop(volatile, None)
    status = body.get("status")
    status = dict(status) if isinstance(status, Mapping) else {}
    status.pop(FIELD, None)
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        status["conditions"] = [
            c for c in conditions if not (isinstance(c, Mapping) and c.get("type") == CONDITION)
        ]
    text = json.dumps(
        {"metadata": metadata, "spec": body.get("spec"), "status": status},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()
