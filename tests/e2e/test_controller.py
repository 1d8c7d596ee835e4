"""The controller against the real API server: sealing, rotation, sources, deletion."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from secure_keys.controller.reconciler import blob_secret_name
from secure_keys.kube.names import FINALIZER
from secure_keys_dev.stack import (
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    request_rotation,
    wait_event_reasons,
)

pytestmark = pytest.mark.usefixtures("controller")


def _ready(api: client.ApiClient, namespace: str, name: str, version: int = 1) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(api, namespace, name)
        status = obj.get("status") or {}
        if is_ready(obj) and status.get("currentVersion") == version:
            return obj
        return None

    return eventually(check, 30, f"{name} Ready at version {version}")


def _blobs(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(blob_secret_name(name), namespace)
    return dict(secret.data or {})


def test_generated_key_is_sealed_and_ready(admin_api: client.ApiClient, namespace: str) -> None:
    create_apikey(admin_api, namespace, "gen", {"source": {"generate": {"length": 32}}})
    obj = _ready(admin_api, namespace, "gen")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    [version] = status["versions"]
    assert version["version"] == 1
    assert version["state"] == "Active"
    assert version["fingerprint"].startswith("hs256:")
    assert version["kmsProvider"] == "local"
    assert condition(obj, "Sealed")["status"] == "True"  # type: ignore[index]
    blobs = _blobs(admin_api, namespace, "gen")
    assert set(blobs) == {"v1"}
    assert base64.b64decode(blobs["v1"])[0] == 1  # envelope format v1
    secret = client.CoreV1Api(admin_api).read_namespaced_secret(blob_secret_name("gen"), namespace)
    assert secret.type == "securekeys.io/sealed-versions"
    [owner] = secret.metadata.owner_references
    assert owner.kind == "ApiKey"
    assert owner.uid == obj["metadata"]["uid"]
    assert "securekeys.io/shred-blobs" in obj["metadata"]["finalizers"]
    wait_event_reasons(admin_api, namespace, "gen", {"Sealed"})


def test_rotation_on_request_archives_the_previous_version(
    admin_api: client.ApiClient, namespace: str
) -> None:
    create_apikey(
        admin_api,
        namespace,
        "rot",
        {"source": {"generate": {}}, "rotation": {"retain": 2, "gracePeriod": "1h"}},
    )
    first = _ready(admin_api, namespace, "rot")
    stamp = request_rotation(admin_api, namespace, "rot")
    second = _ready(admin_api, namespace, "rot", version=2)
    states = {v["version"]: v["state"] for v in second["status"]["versions"]}
    assert states == {1: "Archived", 2: "Active"}
    fingerprints = {v["version"]: v["fingerprint"] for v in second["status"]["versions"]}
    assert fingerprints[1] == first["status"]["versions"][0]["fingerprint"]
    assert fingerprints[1] != fingerprints[2]  # a generated key gets a new value
    assert second["status"]["lastRotationRequest"] == stamp
    assert set(_blobs(admin_api, namespace, "rot")) == {"v1", "v2"}


def _orphan_delete(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete an ApiKey leaving its dependents alone: the garbage collector then removes
    their owner reference instead of deleting them, so only our finalizer can shred."""
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", name, propagation_policy="Orphan"
    )


def _apikey_gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        get_apikey(api, namespace, name)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _blob_history(
    api: client.ApiClient, namespace: str, name: str, since: str, timeout: int = 30
) -> list[tuple[str, list[str]]]:
    """(event type, names of the entries it holds) of every change to the blob Secret
    after ``since``, until it is deleted or ``timeout`` seconds pass. Names only, so a
    failure message shows no ciphertext."""
    history: list[tuple[str, list[str]]] = []
    stream = watch.Watch()
    for event in stream.stream(
        client.CoreV1Api(api).list_namespaced_secret,
        namespace,
        field_selector=f"metadata.name={blob_secret_name(name)}",
        resource_version=since,
        timeout_seconds=timeout,
    ):
        history.append((event["type"], sorted(event["object"].data or {})))
        if event["type"] == "DELETED":
            stream.stop()
    return history


def test_deletion_shreds_the_blobs(admin_api: client.ApiClient, namespace: str) -> None:
    create_apikey(admin_api, namespace, "bye", {"source": {"generate": {}}})
    _ready(admin_api, namespace, "bye")
    core = client.CoreV1Api(admin_api)
    blob = core.read_namespaced_secret(blob_secret_name("bye"), namespace)
    assert set(blob.data) == {"v1"}

    _orphan_delete(admin_api, namespace, "bye")

    history = _blob_history(admin_api, namespace, "bye", blob.metadata.resource_version)
    assert [kind for kind, _ in history][-1:] == ["DELETED"], history
    # Erased first (a write that leaves no data), then deleted: the last stored state of
    # the Secret holds no ciphertext even before etcd forgets it.
    erased = any(kind == "MODIFIED" and not entries for kind, entries in history)
    assert erased, f"no write emptied the blob Secret before it was deleted: {history}"
    assert history[-1][1] == []
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret(blob_secret_name("bye"), namespace)
    assert missing.value.status == 404
    eventually(
        lambda: _apikey_gone(admin_api, namespace, "bye"),
        what="the finalizer to let the ApiKey go",
    )


def test_without_the_finalizer_an_orphaning_delete_leaves_the_blobs(
    admin_api: client.ApiClient,
    private_namespace: str,
    controller_setup: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """What gives the test above its power: with the finalizer taken off (and the
    controller stopped, so it cannot put it back), the same deletion keeps the blobs; the
    garbage collector only drops the owner reference. With the default (background)
    propagation the collector would delete the Secret itself, finalizer or not."""
    kubeconfig, kms_config = controller_setup
    log = tmp_path / "controller.log"
    with ControllerProcess(kubeconfig, kms_config, log, namespaces=private_namespace):
        create_apikey(admin_api, private_namespace, "kept", {"source": {"generate": {}}})
        obj = _ready(admin_api, private_namespace, "kept")
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object(
        "securekeys.io",
        "v1alpha1",
        private_namespace,
        "apikeys",
        "kept",
        [
            {"op": "test", "path": "/metadata/finalizers", "value": [FINALIZER]},
            {"op": "remove", "path": "/metadata/finalizers"},
        ],
        _content_type="application/json-patch+json",
    )
    core = client.CoreV1Api(admin_api)
    before = core.read_namespaced_secret(blob_secret_name("kept"), private_namespace)

    _orphan_delete(admin_api, private_namespace, "kept")

    eventually(
        lambda: _apikey_gone(admin_api, private_namespace, "kept"),
        what="the ApiKey to go (nothing holds it)",
    )
    after = core.read_namespaced_secret(blob_secret_name("kept"), private_namespace)
    assert after.metadata.uid == before.metadata.uid
    kept = after.data == before.data  # the sealed versions are all still there
    assert kept, f"the blobs changed: {sorted(before.data)} -> {sorted(after.data or {})}"
    assert not after.metadata.owner_references  # orphaned, not collected


def test_controller_log_is_json(controller: ControllerProcess) -> None:
    lines = [line for line in controller.log().splitlines() if line.startswith("{")]
    assert any('"controller.started"' in line for line in lines)


def test_metrics_count_what_the_controller_did(
    admin_api: client.ApiClient, namespace: str, controller: ControllerProcess
) -> None:
    create_apikey(admin_api, namespace, "counted", {"source": {"generate": {}}})
    _ready(admin_api, namespace, "counted")
    counted = (
        'securekeys_versions_sealed_total{reason="initial"}',
        'securekeys_versions_promoted_total{with_previous="false"}',
        'securekeys_reconciles_total{kind="apikey",outcome="idle"}',
    )

    def all_counted() -> dict[str, float] | None:
        # Counted after the status write that made the key Ready: wait, do not race it.
        samples = controller.metrics()
        return samples if all(samples.get(series, 0) >= 1 for series in counted) else None

    samples = eventually(all_counted, 30, f"the controller's metrics to count {counted}")
    assert not any("counted" in series for series in samples)  # no per-key labels
