"""Standard status conditions (metav1.Condition), built purely.

``set_condition`` keeps ``lastTransitionTime`` when the status does not change, as the
Kubernetes API conventions ask, so a condition's age says how long it has held.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Literal

from secure_keys.core.stamps import format_stamp

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: Sequence[dict[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    fresh = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": format_stamp(now),
    }
    out = []
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            out.append(dict(condition))
            continue
        if found:
            continue  # conditions are a map keyed by type: drop a duplicate
        found = True
        updated = dict(fresh)
        if condition.get("status") == status and "lastTransitionTime" in condition:
            updated["lastTransitionTime"] = condition["lastTransitionTime"]
        out.append(updated)
    if not found:
        out.append(fresh)
    return out


def get_condition(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    for condition in conditions:
        if condition.get("type") == type_:
            return condition
    return None
