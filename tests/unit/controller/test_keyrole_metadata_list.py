"""The controller lists ApiKeys as metadata only where names and labels are all it uses.

KeyRole resolution and the requeue of every ApiKey once the controller's keys open read
nothing but names, namespaces and labels, so they ask the API server for a
``PartialObjectMetadataList`` and never receive the ApiKeys' sealed sources. The fake
API strips items to their metadata when asked, as the API server does, so these tests
also show that neither caller needs more. The real API server's answer:
tests/e2e/test_metadata_lists.py.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

from secure_keys.controller.keyrole_status import LIST_PAGE, KeyRoleReconciler
from secure_keys.controller.operator import ControllerOptions, Runtime
from secure_keys.kube.client import APIKEYS, KEYROLES, Resource
from tests.unit.controller.fakeapi import FakeApi

NS = "ns"
SEALED = {"source": {"sealed": {"recipient": "x25519:0123456789abcdef", "ciphertext": "A" * 40000}}}


class ListSpy(FakeApi):
    """FakeApi recording the keyword arguments of each ApiKey list."""

    def __init__(self) -> None:
        super().__init__()
        self.apikey_list_options: list[dict[str, Any]] = []

    async def list(
        self, resource: Resource, namespace: str | None, **options: Any
    ) -> dict[str, Any]:
        if resource == APIKEYS:
            self.apikey_list_options.append(dict(options))
        return await super().list(resource, namespace, **options)


def _apikeys(api: FakeApi, count: int) -> None:
    for i in range(count):
        labels = {"team": "a"} if i % 2 == 0 else {"team": "b"}
        api.put(
            APIKEYS, NS, {"metadata": {"name": f"key-{i:03d}", "labels": labels}, "spec": SEALED}
        )


def test_keyrole_resolution_pages_through_metadata_only() -> None:
    api = ListSpy()
    count = LIST_PAGE + 3
    _apikeys(api, count)
    role = {"keys": {"names": ["key-001"], "selector": {"matchLabels": {"team": "a"}}}}
    api.put(KEYROLES, NS, {"metadata": {"name": "r"}, "spec": role})
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    reconciler = KeyRoleReconciler(api, clock=lambda: now)  # type: ignore[arg-type]

    asyncio.run(reconciler.reconcile(NS, "r"))

    assert api.apikey_list_options == [
        {"limit": LIST_PAGE, "continue_": None, "metadata_only": True},
        {"limit": LIST_PAGE, "continue_": str(LIST_PAGE), "metadata_only": True},
    ]
    status = api.stored(KEYROLES, NS, "r")["status"]
    expected = sorted({f"key-{i:03d}" for i in range(0, count, 2)} | {"key-001"})
    assert status["resolvedKeys"] == expected
    assert status["missingKeys"] == []


def test_requeueing_every_apikey_lists_metadata_only() -> None:
    api = ListSpy()
    _apikeys(api, 3)
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=Path("/unused"), namespaces=NS))

    async def requeue() -> set[tuple[str, str, str]]:
        await runtime._requeue_apikeys(api)  # type: ignore[arg-type]
        queued: set[tuple[str, str, str]] = set()
        while len(runtime.queue):
            key = await runtime.queue.get()
            runtime.queue.done(key)
            queued.add(key)
        return queued

    assert asyncio.run(requeue()) == {("apikey", NS, f"key-{i:03d}") for i in range(3)}
    assert api.apikey_list_options == [{"limit": 500, "continue_": None, "metadata_only": True}]
