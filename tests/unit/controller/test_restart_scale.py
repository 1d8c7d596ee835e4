"""A restart at scale: what the controller reads and keeps when every object arrives at once.

At 10,000 ApiKeys and 1,000 KeyRoles a restart took 92 s. These are the pieces that made
it grow faster than the number of objects, or hold every object at once:

* every KeyRole listed the namespace's ApiKeys again while the watch's initial events
  (each an ApiKey "appearing") kept discarding the list the roles shared;
* each ApiKey event looked at every KeyRole of the namespace;
* an ApiKey reconciled before the watch's initial event for it reached the queue was
  reconciled a second time for that event;
* kopf listed every ApiKey in one response, deep-copied each body it received, and kept
  each object's last event for 5 s after handling it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from pathlib import Path
from typing import Any, cast

import kopf
from kopf._core.intents.causes import Activity

from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.keyrole_status import (
    KeyRoleReconciler,
    RoleSelections,
    roles_to_requeue,
    selection_of,
)
from secure_keys.controller.operator import (
    LIST_CHUNK,
    ControllerOptions,
    NoDiffBase,
    Runtime,
    build_registry,
)
from secure_keys.controller.reconciler import Reconciler
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.kube.client import APIKEYS, KEYROLES, KubeApi, Resource
from tests.support.reconciler import NS, add_apikey
from tests.unit.controller.fakeapi import FakeApi

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
TEAM_A = {"team": "a"}


class SlowList(FakeApi):
    """A FakeApi whose ApiKey lists yield to the event loop, and run ``during`` (once)
    after answering a page: a watch event that arrives while a list is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.during: list[Any] = []

    async def list(
        self, resource: Resource, namespace: str | None, **options: Any
    ) -> dict[str, Any]:
        page = await super().list(resource, namespace, **options)
        await asyncio.sleep(0)
        while resource == APIKEYS and self.during:
            self.during.pop(0)()
        return page


def _world(keys: int, roles: int) -> tuple[SlowList, KeyRoleReconciler]:
    api = SlowList()
    for i in range(keys):
        api.put(APIKEYS, NS, {"metadata": {"name": f"key-{i}", "labels": TEAM_A}})
    for i in range(roles):
        spec = {"keys": {"selector": {"matchLabels": TEAM_A}}}
        api.put(KEYROLES, NS, {"metadata": {"name": f"r{i}"}, "spec": spec})
    return api, KeyRoleReconciler(cast(KubeApi, api), clock=lambda: NOW)


def _apikey_lists(api: FakeApi) -> int:
    return len([call for call in api.lists if call[0] == "apikeys"])


def _resolve(reconciler: KeyRoleReconciler, *roles: str) -> None:
    async def run() -> None:
        await asyncio.gather(*(reconciler.reconcile(NS, role) for role in roles))

    asyncio.run(run())


def test_roles_resolving_at_once_wait_for_one_list() -> None:
    api, reconciler = _world(keys=3, roles=3)
    _resolve(reconciler, "r0", "r1", "r2")
    assert _apikey_lists(api) == 1
    for role in ("r0", "r1", "r2"):
        assert api.stored(KEYROLES, NS, role)["status"]["resolvedKeys"] == [
            "key-0",
            "key-1",
            "key-2",
        ]


def test_a_change_the_list_already_shows_keeps_it() -> None:
    """A restart: the watch's initial events say each ApiKey "appeared", with the labels
    the list shows. The list stays kept, and the next roles do not list again."""
    api, reconciler = _world(keys=3, roles=2)
    api.during.append(lambda: reconciler.apikeys_changed(NS, "key-1", TEAM_A))
    api.during.append(lambda: reconciler.apikeys_changed(NS, "absent", None))
    _resolve(reconciler, "r0")
    reconciler.apikeys_changed(NS, "key-2", TEAM_A)  # after the list: shown too
    _resolve(reconciler, "r1")
    assert _apikey_lists(api) == 1


def test_a_change_the_list_does_not_show_is_used_once_and_not_kept() -> None:
    api, reconciler = _world(keys=2, roles=2)

    def appears() -> None:  # created after the list read its page
        api.put(APIKEYS, NS, {"metadata": {"name": "key-new", "labels": TEAM_A}})
        reconciler.apikeys_changed(NS, "key-new", TEAM_A)

    api.during.append(appears)
    _resolve(reconciler, "r0")
    assert "key-new" not in api.stored(KEYROLES, NS, "r0")["status"]["resolvedKeys"]
    _resolve(reconciler, "r1")  # lists again, and sees it
    assert _apikey_lists(api) == 2
    assert "key-new" in api.stored(KEYROLES, NS, "r1")["status"]["resolvedKeys"]
    reconciler.apikeys_changed(NS, "key-0", {"team": "b"})  # relabelled after: not shown
    _resolve(reconciler, "r0")
    assert _apikey_lists(api) == 3


ROLES: dict[str, dict[str, Any] | None] = {
    "names-k": {"keys": {"names": ["k", "other"]}},
    "names-other": {"keys": {"names": ["other"]}},
    "team-a": {"keys": {"selector": {"matchLabels": TEAM_A}}},
    "k-or-b": {"keys": {"names": ["k"], "selector": {"matchLabels": {"team": "b"}}}},
    "unparsable": {"keys": {"names": "not-a-list"}},
    "no-spec": None,
}
LABELS: list[dict[str, str] | None] = [None, {}, TEAM_A, {"team": "b"}, {"tier": "x"}]


def test_an_apikey_event_looks_only_at_the_roles_that_can_cover_it() -> None:
    """``RoleSelections.affected`` is ``roles_to_requeue`` over every role, for every
    change, while it reads only the roles naming the key and those with a selector."""
    index = RoleSelections()
    selections = {role: selection_of(spec) for role, spec in ROLES.items()}
    for role, selection in selections.items():
        index.set(NS, role, selection)
    for name in ("k", "other", "unnamed"):
        for before in LABELS:
            for after in LABELS:
                expected = roles_to_requeue(selections, name, before, after)
                assert index.affected(NS, name, before, after) == expected
    assert index.affected("elsewhere", "k", None, {}) == []
    index.remove(NS, "names-k")
    index.set(NS, "k-or-b", selection_of({"keys": {"names": ["x"]}}))
    assert index.affected(NS, "k", None, {}) == []
    assert index.roles(NS).keys() == selections.keys() - {"names-k"}


def test_an_apikey_reconciled_at_its_fixed_point_is_not_queued_again_for_that_version(
    kms_config: Path,
) -> None:
    """The restart's own requeue (once the controller's keys open) can reconcile a key
    before the watch's initial event for it arrives; that event then carries nothing
    new. Without the keys open, a fixed point is not trusted: the requeue covers it."""
    api = FakeApi()
    keys = ControllerKeys(RecipientPrivateKey.generate(), bytearray(os.urandom(32)))
    kms = KmsDirectory(KmsSettings.load(kms_config), None)
    reconciler = Reconciler(cast(KubeApi, api), kms, keys, clock=lambda: NOW)
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=kms_config))
    runtime.reconciler = reconciler
    add_apikey(api, "k", {"source": {"generate": {}}})
    asyncio.run(reconciler.reconcile(NS, "k"))  # sealed: our own writes

    def event_queues_it() -> bool:
        body = api.stored(APIKEYS, NS, "k")
        runtime.apikey_event("MODIFIED", NS, "k", body["metadata"], body)
        queued = len(runtime.queue) > 0
        while len(runtime.queue):
            asyncio.run(runtime.queue.get())
            runtime.queue.done(("apikey", NS, "k"))
        return queued

    stored = api.stored(APIKEYS, NS, "k")
    stored["metadata"]["labels"] = {"someone": "else"}
    api._bump(stored)  # a version this controller did not write
    asyncio.run(reconciler.reconcile(NS, "k"))
    assert not event_queues_it()

    stored = api.stored(APIKEYS, NS, "k")
    stored["metadata"]["labels"] = {"someone": "again"}
    api._bump(stored)
    reconciler.keys = None
    asyncio.run(reconciler.reconcile(NS, "k"))
    assert event_queues_it()


def test_kopf_pages_its_lists_copies_no_body_and_keeps_its_idle_default() -> None:
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=Path("/unused")))

    async def started() -> None:
        return None

    runtime.start = started  # type: ignore[method-assign]
    registry = build_registry(runtime)
    [startup] = [
        h for h in registry._activities.get_all_handlers() if h.activity == Activity.STARTUP
    ]
    settings = kopf.OperatorSettings()
    handler: Any = startup.fn
    asyncio.run(handler(settings=settings))
    assert settings.watching.chunk_size == LIST_CHUNK
    # kopf's default: a shorter idle exit left a new namespace's event unprocessed
    assert settings.queueing.idle_timeout == kopf.OperatorSettings().queueing.idle_timeout
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "k"}, "spec": {"source": {"sealed": "A" * 100}}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
