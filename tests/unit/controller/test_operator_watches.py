"""The controller's own watches: which ApiKey a blob Secret event queues, which namespaces
count, and kopf's login through a kubeconfig exec plugin.

The watches themselves run against a real API server in tests/e2e/test_watch_filtering.py;
here are the pure decisions around them.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
from kopf._cogs.structs.references import NamespaceName, match_namespace

from secure_keys.controller import metrics
from secure_keys.controller.operator import (
    ControllerOptions,
    Runtime,
    blob_owner,
    build_registry,
    exec_login,
    namespace_selected,
    single_namespace,
)
from secure_keys.kube.client import Credentials
from secure_keys.kube.exec_auth import ExecConfig
from secure_keys.kube.informer import LISTED, InformerEvent

NAME = "a-name-longer-than-any-label-value-" + "x" * 40
OWNER: dict[str, Any] = {
    "apiVersion": "securekeys.io/v1alpha1",
    "kind": "ApiKey",
    "name": NAME,
    "uid": "u-1",
    "controller": True,
}


def _secret(namespace: str, rv: str, *owners: dict[str, Any], **labels: str) -> dict[str, Any]:
    metadata = {"name": "s", "namespace": namespace, "resourceVersion": rv, "labels": labels}
    return {"metadata": metadata | {"ownerReferences": list(owners)}}


@pytest.mark.parametrize(
    ("owners", "expected"),
    [
        ([OWNER], NAME),
        ([{**OWNER, "controller": False}], None),
        ([{**OWNER, "kind": "Deployment"}], None),
        ([{**OWNER, "apiVersion": "securekeys.io/v2"}], None),
        ([{"kind": "Other", "controller": True, "name": "x"}, OWNER], NAME),
        ([], None),
    ],
)
def test_blob_owner_is_the_controller_reference(
    owners: list[dict[str, Any]], expected: str | None
) -> None:
    metadata = _secret("ns", "1", *owners, **{"securekeys.io/apikey-uid": "u-1"})["metadata"]
    assert blob_owner(metadata) == expected


PATTERNS = ["*,!crash-*", "team-*", "team-*,!team-test", "!kube-*", "a,b", "x-*,!*-pr-*,*pr-1"]
NAMES = ["default", "crash-1", "team-a", "team-test", "kube-system", "a", "b", "x-pr-1", "x-pr-2"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", NAMES)
def test_namespace_patterns_read_as_kopf_reads_them(pattern: str, name: str) -> None:
    expected = match_namespace(NamespaceName(name), pattern)
    assert namespace_selected(name, pattern) is expected


def test_single_namespace_only_for_a_plain_name() -> None:
    assert single_namespace("payments") == "payments"
    assert single_namespace("team-*") is None
    assert single_namespace("a,b") is None
    assert single_namespace("!x") is None
    assert single_namespace(None) is None


class _Reconciler:
    def __init__(self, own: set[tuple[str, str, str]]) -> None:
        self.own = own

    def wrote(self, kind: str, namespace: str, name: str, resource_version: str) -> bool:
        return kind == "blobs" and (namespace, name, resource_version) in self.own


def _runtime(namespaces: str | None = "*,!crash-*") -> Runtime:
    runtime = Runtime(ControllerOptions(namespace="sys", kms_config=Path("/unused")))
    runtime.options.namespaces = namespaces
    runtime.reconciler = _Reconciler({("ns", NAME, "7")})  # type: ignore[assignment]
    return runtime


def _queued(runtime: Runtime) -> list[tuple[str, str, str]]:
    async def drain() -> list[tuple[str, str, str]]:
        keys: list[tuple[str, str, str]] = []
        while len(runtime.queue):
            key = await runtime.queue.get()
            runtime.queue.done(key)
            keys.append(key)
        return keys

    return asyncio.run(drain())


def _received(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "securekeys_watch_objects_received_total", {"resource": "secrets", "kind": kind}
    )
    return value or 0.0


def test_a_blob_event_queues_its_apikey_unless_it_is_our_own_write() -> None:
    runtime = _runtime()
    before = _received("blob")
    runtime.blob_event(InformerEvent("MODIFIED", _secret("ns", "6", OWNER)))
    runtime.blob_event(InformerEvent("MODIFIED", _secret("ns", "7", OWNER)))  # ours
    assert _queued(runtime) == [("apikey", "ns", NAME)]
    assert _received("blob") == before + 2
    runtime.blob_event(InformerEvent("DELETED", _secret("ns", "7", OWNER)))  # even ours
    assert _queued(runtime) == [("apikey", "ns", NAME)]


def test_blob_events_outside_the_namespaces_or_without_an_owner_queue_nothing() -> None:
    runtime = _runtime()
    before = _received("other")
    runtime.blob_event(InformerEvent("ADDED", _secret("crash-1", "9", OWNER)))
    runtime.blob_event(InformerEvent("ADDED", _secret("ns", "9", managed="yes")))
    runtime.blob_event(LISTED)
    assert _queued(runtime) == []
    assert _received("other") == before + 1


def test_a_synthetic_delete_queues_but_is_not_counted_as_received() -> None:
    runtime = _runtime(None)
    before = _received("blob")
    runtime.blob_event(InformerEvent("DELETED", _secret("ns", "3", OWNER), synthetic=True))
    assert _queued(runtime) == [("apikey", "ns", NAME)]
    assert _received("blob") == before


def test_kopf_login_through_an_exec_plugin(tmp_path: Path) -> None:
    plugin = Path(__file__).parents[1] / "kube" / "plugin.py"
    (tmp_path / "state").mkdir()
    config = ExecConfig(
        command=sys.executable,
        api_version="client.authentication.k8s.io/v1",
        args=(str(plugin),),
        env=(("PLUGIN_STATE", str(tmp_path / "state")), ("PLUGIN_EXPIRES_IN", "600")),
        interactive_mode="Never",
    )
    creds = Credentials(server="https://api.example:6443", ca_pem=b"ca", exec=config)
    info = asyncio.run(exec_login(creds))
    assert info.server == "https://api.example:6443"
    assert info.token == "token-1"
    assert info.ca_data == b"ca"
    assert info.expiration is not None  # kopf logs in again when it passes


def test_the_watch_handlers_run_on_the_event_loop() -> None:
    """kopf runs a plain function in its thread pool: a hop per watch event, and the work
    queue they feed is not thread-safe. Coroutines run on the loop."""
    registry = build_registry(_runtime())
    handlers = list(registry._watching.get_all_handlers())
    assert len(handlers) == 2
    assert all(inspect.iscoroutinefunction(handler.fn) for handler in handlers)


def test_kopf_watches_the_whole_cluster_and_the_handlers_apply_the_pattern() -> None:
    """kopf serves a glob by watching Namespaces and starting a watch per namespace, and
    once missed a namespace created as the controller started; so a pattern other than
    one plain name is watched cluster-wide, and the handlers drop what it excludes."""
    runtime = _runtime()
    registry = build_registry(runtime)
    handlers = registry._watching.get_all_handlers()
    by_plural: dict[Any, Any] = {h.selector.any_name: h.fn for h in handlers if h.selector}
    meta = {"resourceVersion": "1", "labels": {}}
    for namespace in ("crash-1", "team-a"):
        body = {"metadata": {**meta, "name": "k", "namespace": namespace}, "spec": {}}
        asyncio.run(
            by_plural["apikeys"](
                type="ADDED", namespace=namespace, name="k", meta=body["metadata"], body=body
            )
        )
        asyncio.run(
            by_plural["keyroles"](type="ADDED", namespace=namespace, name="r", spec={"keys": {}})
        )
    assert sorted(_queued(runtime)) == [("apikey", "team-a", "k"), ("keyrole", "team-a", "r")]
