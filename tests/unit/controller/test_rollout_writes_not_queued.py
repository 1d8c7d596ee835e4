"""The controller does not reconcile on a gateway's rollout write (docs/rollout.md): an
ApiKey event that changes only ``status.rollout`` or the ``RolledOut`` condition is not
queued; any other change is."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from secure_keys.controller.operator import ControllerOptions, Runtime


def _queued(runtime: Runtime) -> list[tuple[str, str, str]]:
    async def drain() -> list[tuple[str, str, str]]:
        keys: list[tuple[str, str, str]] = []
        while len(runtime.queue):
            key = await runtime.queue.get()
            runtime.queue.done(key)
            keys.append(key)
        return keys

    return asyncio.run(drain())


def _event(runtime: Runtime, body: dict[str, Any], type_: str = "MODIFIED") -> None:
    runtime.apikey_event(type_, "ns", "k", body["metadata"], body)


def test_a_rollout_write_is_not_queued_and_everything_else_is() -> None:
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=Path("/unused")))
    body: dict[str, Any] = {
        "metadata": {"name": "k", "namespace": "ns", "resourceVersion": "1", "labels": {}},
        "spec": {"source": {"generate": {}}},
        "status": {
            "currentVersion": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Active"}],
        },
    }
    _event(runtime, body, "ADDED")
    assert _queued(runtime) == [("apikey", "ns", "k")]

    rolled = copy.deepcopy(body)
    rolled["metadata"]["resourceVersion"] = "2"
    rolled["status"]["rollout"] = {"version": 1, "pods": "3/3"}
    rolled["status"]["conditions"].append({"type": "RolledOut", "status": "True"})
    _event(runtime, rolled)
    assert _queued(runtime) == []

    rotated = copy.deepcopy(rolled)
    rotated["metadata"]["resourceVersion"] = "3"
    rotated["metadata"]["annotations"] = {"securekeys.io/rotate-requested-at": "now"}
    _event(runtime, rotated)
    assert _queued(runtime) == [("apikey", "ns", "k")]

    edited = copy.deepcopy(rotated)
    edited["metadata"]["resourceVersion"] = "4"
    edited["status"]["conditions"][0]["status"] = "False"
    _event(runtime, edited)
    assert _queued(runtime) == [("apikey", "ns", "k")]

    _event(runtime, edited, "DELETED")
    assert _queued(runtime) == [("apikey", "ns", "k")]
