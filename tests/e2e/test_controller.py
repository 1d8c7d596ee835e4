"""The controller against the real API server: sealing, rotation, sources, deletion."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.controller.service import blob_secret_name
from secure_keys_dev.stack import (
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    request_rotation,
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
    events = client.CoreV1Api(admin_api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=gen"
    )
    assert "Sealed" in {e.reason for e in events.items}


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


def test_deletion_shreds_the_blobs(admin_api: client.ApiClient, namespace: str) -> None:
    create_apikey(admin_api, namespace, "bye", {"source": {"generate": {}}})
    _ready(admin_api, namespace, "bye")
    client.CustomObjectsApi(admin_api).delete_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", "bye"
    )

    def gone() -> bool:
        try:
            client.CoreV1Api(admin_api).read_namespaced_secret(blob_secret_name("bye"), namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(gone, what="the blob Secret to be deleted")

    def apikey_gone() -> bool:
        try:
            get_apikey(admin_api, namespace, "bye")
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(apikey_gone, what="the finalizer to let the ApiKey go")


def test_controller_log_is_json(controller: ControllerProcess) -> None:
    lines = [line for line in controller.log().splitlines() if line.startswith("{")]
    assert any('"controller.started"' in line for line in lines)


def test_metrics_count_what_the_controller_did(
    admin_api: client.ApiClient, namespace: str, controller: ControllerProcess
) -> None:
    create_apikey(admin_api, namespace, "counted", {"source": {"generate": {}}})
    _ready(admin_api, namespace, "counted")
    samples = controller.metrics()
    assert samples['securekeys_versions_sealed_total{reason="initial"}'] >= 1
    assert samples['securekeys_versions_promoted_total{with_previous="false"}'] >= 1
    assert samples['securekeys_reconciles_total{kind="apikey",outcome="idle"}'] >= 1
    assert not any("counted" in series for series in samples)  # no per-key labels
