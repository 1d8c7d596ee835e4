"""How far an ApiKey write reaches into KeyRoles, and what resolving a role reads.

An ApiKey event requeues only the KeyRoles whose resolution it can change (the key came,
went, or changed labels in a way a role's names or selector notice); resolution lists
ApiKeys a page at a time and keeps only names and labels. Against a real API server:
tests/e2e/test_keyroles.py.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

from secure_keys.controller.keyrole_status import LIST_PAGE, KeyRoleReconciler, selection_of
from secure_keys.controller.operator import ControllerOptions, Runtime
from secure_keys.kube.client import APIKEYS, KEYROLES
from tests.unit.controller.fakeapi import FakeApi

NS = "ns"
ROLES: dict[str, dict[str, Any]] = {
    "names-k": {"keys": {"names": ["k"]}},
    "team-a": {"keys": {"selector": {"matchLabels": {"team": "a"}}}},
    "team-b": {"keys": {"selector": {"matchLabels": {"team": "b"}}}},
    "no-tier": {
        "keys": {"selector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}
    },
    "names-other": {"keys": {"names": ["other"]}},
    "unparsable": {"keys": {"names": "not-a-list"}},
}


def _runtime() -> Runtime:
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=Path("/unused")))
    for name, spec in ROLES.items():
        runtime.keyrole_changed(NS, name, deleted=False, spec=spec)
    _queued(runtime)  # each role queues itself once when first seen
    return runtime


def _queued(runtime: Runtime) -> set[tuple[str, str, str]]:
    async def drain() -> set[tuple[str, str, str]]:
        keys: set[tuple[str, str, str]] = set()
        while len(runtime.queue):
            key = await runtime.queue.get()
            runtime.queue.done(key)
            keys.add(key)
        return keys

    return asyncio.run(drain())


def _roles(*names: str) -> set[tuple[str, str, str]]:
    return {("keyrole", NS, name) for name in names}


APIKEY = {("apikey", NS, "k")}


def test_an_unparsable_role_selects_nothing() -> None:
    assert selection_of(ROLES["unparsable"]) is None
    assert selection_of(None) is None
    assert selection_of(ROLES["names-k"]) is not None


def test_only_a_change_of_existence_or_labels_requeues_roles_and_only_those_it_affects() -> None:
    runtime = _runtime()
    # A new key: the role naming it and the selectors that match it.
    runtime.apikey_changed(NS, "k", {"team": "a"})
    assert _queued(runtime) == APIKEY | _roles("names-k", "team-a", "no-tier")
    # Spec or status written, labels as they were: the key only, no role.
    runtime.apikey_changed(NS, "k", {"team": "a"})
    assert _queued(runtime) == APIKEY
    # Our own status write: nothing at all.
    runtime.apikey_changed(NS, "k", {"team": "a"}, own=True)
    assert _queued(runtime) == set()
    # Relabelled: the selectors that stop or start matching; not the role naming it,
    # nor the one whose selector matches before and after.
    runtime.apikey_changed(NS, "k", {"team": "b"})
    assert _queued(runtime) == APIKEY | _roles("team-a", "team-b")
    # A label change no selector notices requeues no role, even if it is our write.
    runtime.apikey_changed(NS, "k", {"team": "b", "cost": "1"}, own=True)
    assert _queued(runtime) == set()
    # Deleted (or being deleted): every role that covered it.
    runtime.apikey_changed(NS, "k", None)
    assert _queued(runtime) == APIKEY | _roles("names-k", "team-b", "no-tier")
    assert runtime.apikey_labels == {}


def test_a_role_deleted_or_in_another_namespace_is_not_requeued() -> None:
    runtime = _runtime()
    runtime.keyrole_changed(NS, "team-a", deleted=True)
    runtime.keyrole_changed("elsewhere", "names-k", deleted=False, spec=ROLES["names-k"])
    _queued(runtime)
    runtime.apikey_changed(NS, "k", {"team": "a"})
    assert _queued(runtime) == APIKEY | _roles("names-k", "no-tier")


def test_resolution_pages_through_the_apikeys_and_keeps_names_and_labels() -> None:
    api = FakeApi()
    count = 2 * LIST_PAGE + 7
    for i in range(count):
        labels = {"team": "a"} if i % 3 == 0 else {}
        body = {"metadata": {"name": f"key-{i:03d}", "labels": labels}, "spec": {"x": "y" * 1000}}
        api.put(APIKEYS, NS, body)
    api.put(
        KEYROLES,
        NS,
        {
            "metadata": {"name": "r"},
            "spec": {"keys": {**ROLES["team-a"]["keys"], "names": ["gone"]}},
        },
    )
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    reconciler = KeyRoleReconciler(api, clock=lambda: now)  # type: ignore[arg-type]
    asyncio.run(reconciler.reconcile(NS, "r"))

    apikey_lists = [call for call in api.lists if call[0] == "apikeys"]
    assert apikey_lists == [
        ("apikeys", NS, LIST_PAGE, None),
        ("apikeys", NS, LIST_PAGE, str(LIST_PAGE)),
        ("apikeys", NS, LIST_PAGE, str(2 * LIST_PAGE)),
    ]
    status = api.stored(KEYROLES, NS, "r")["status"]
    assert status["resolvedKeys"] == [f"key-{i:03d}" for i in range(0, count, 3)]
    assert status["missingKeys"] == ["gone"]


def test_the_roles_of_a_namespace_share_one_list_until_an_apikey_changes() -> None:
    """A restart requeues every KeyRole: each listing every ApiKey of the namespace was
    roles x keys objects read. They share one list; a status write changes nothing; an
    ApiKey that appears makes the next resolution list again, and sees it."""
    api = FakeApi()
    runtime = _runtime()
    reconciler = KeyRoleReconciler(api)  # type: ignore[arg-type]
    runtime.keyroles = reconciler
    for i in range(3):
        api.put(APIKEYS, NS, {"metadata": {"name": f"key-{i}", "labels": {"team": "a"}}})
        runtime.apikey_changed(NS, f"key-{i}", {"team": "a"})
    for role in ("r1", "r2", "r3"):
        spec = {"keys": ROLES["team-a"]["keys"]}
        api.put(KEYROLES, NS, {"metadata": {"name": role}, "spec": spec})

    def lists() -> int:
        return len([call for call in api.lists if call[0] == "apikeys"])

    for role in ("r1", "r2"):
        asyncio.run(reconciler.reconcile(NS, role))
    runtime.apikey_changed(NS, "key-0", {"team": "a"})  # a status write: labels unchanged
    asyncio.run(reconciler.reconcile(NS, "r3"))
    assert lists() == 1
    api.put(APIKEYS, NS, {"metadata": {"name": "key-new", "labels": {"team": "a"}}})
    runtime.apikey_changed(NS, "key-new", {"team": "a"})
    asyncio.run(reconciler.reconcile(NS, "r1"))
    asyncio.run(reconciler.reconcile(NS, "r2"))
    assert lists() == 2
    for role in ("r1", "r2"):
        assert "key-new" in api.stored(KEYROLES, NS, role)["status"]["resolvedKeys"]
