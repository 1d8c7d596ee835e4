"""Where plaintext comes from: `secure-keys seal`, a Secret, or the generator."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    ControllerProcess,
    condition,
    create_apikey,
    eventually,
    get_apikey,
    is_ready,
    wait_event_reasons,
)
from tests.e2e.conftest import Target

pytestmark = pytest.mark.usefixtures("controller")


def _secure_keys(
    kube: Target, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "secure_keys.cli", f"--kubeconfig={kube.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        check=False,
    )


def _apply(api: client.ApiClient, manifest: dict[str, Any]) -> None:
    metadata = manifest["metadata"]
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "securekeys.io", "v1alpha1", metadata["namespace"], "apikeys", manifest
    )


def _wait_ready(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(api, namespace, name)
        return obj if is_ready(obj) else None

    return eventually(check, 30, f"{name} Ready")


def _wait_reason(api: client.ApiClient, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(api, namespace, name)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == reason else None

    return eventually(check, 30, f"{name} Ready=False {reason}")


def test_sealed_manifest_from_the_cli_is_opened_by_the_controller(
    kube: Target, admin_api: client.ApiClient, namespace: str
) -> None:
    sealed = _secure_keys(kube, "seal", "partner", "-n", namespace, stdin=b"tok_0123456789abcdef\n")
    assert sealed.returncode == 0, sealed.stderr.decode()
    assert b"tok_0123456789abcdef" not in sealed.stdout
    manifest = yaml.safe_load(sealed.stdout)
    assert manifest["spec"]["source"]["sealed"]["recipient"].startswith("x25519:")
    _apply(admin_api, manifest)
    obj = _wait_ready(admin_api, namespace, "partner")
    assert obj["status"]["versions"][0]["state"] == "Active"


def test_sealed_value_moved_to_another_name_is_refused(
    kube: Target, admin_api: client.ApiClient, namespace: str
) -> None:
    sealed = _secure_keys(kube, "seal", "original", "-n", namespace, stdin=b"tok_moved")
    manifest = yaml.safe_load(sealed.stdout)
    manifest["metadata"]["name"] = "impostor"  # same ciphertext, different ApiKey
    _apply(admin_api, manifest)
    obj = _wait_reason(admin_api, namespace, "impostor", "SealedSourceInvalid")
    assert "did not authenticate for this ApiKey" in condition(obj, "Ready")["message"]  # type: ignore[index]
    assert not (obj["status"].get("versions"))
    wait_event_reasons(admin_api, namespace, "impostor", {"SealedSourceInvalid"})


def test_seal_reads_the_recipient_from_a_file_and_refuses_empty_input(
    kube: Target, admin_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    configmap = client.CoreV1Api(admin_api).read_namespaced_config_map(
        "secure-keys-recipient", CONTROLLER_NAMESPACE
    )
    recipient = tmp_path / "recipient.json"
    recipient.write_text(configmap.data["recipient.json"])
    empty = _secure_keys(kube, "seal", "x", "-n", namespace, f"--recipient-file={recipient}")
    assert empty.returncode == 2
    assert b"the plaintext is empty" in empty.stderr
    secret_file = tmp_path / "key.txt"
    secret_file.write_bytes(b"from-a-file")
    ok = _secure_keys(
        kube,
        "seal",
        "x",
        "-n",
        namespace,
        f"--recipient-file={recipient}",
        f"--from-file={secret_file}",
        "--interval=720h",
    )
    assert ok.returncode == 0, ok.stderr.decode()
    manifest = yaml.safe_load(ok.stdout)
    assert manifest["spec"]["rotation"] == {"interval": "720h"}
    _apply(admin_api, manifest)
    _wait_ready(admin_api, namespace, "x")


def test_secret_ref_waits_for_its_secret_then_deletes_it(
    admin_api: client.ApiClient, namespace: str
) -> None:
    create_apikey(
        admin_api,
        namespace,
        "ingested",
        {"source": {"secretRef": {"name": "bootstrap", "key": "token", "deleteAfterSeal": True}}},
    )
    waiting = _wait_reason(admin_api, namespace, "ingested", "SourceUnavailable")
    assert "bootstrap" in condition(waiting, "Ready")["message"]  # type: ignore[index]
    wait_event_reasons(admin_api, namespace, "ingested", {"SourceUnavailable"})
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="bootstrap"),
            data={"token": base64.b64encode(b"ingest-me").decode()},
        ),
    )
    _wait_ready(admin_api, namespace, "ingested")  # retried with backoff, no nudge needed

    def source_gone() -> bool:
        names = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
        return "bootstrap" not in names

    eventually(source_gone, what="the source Secret to be deleted after sealing")


def test_rotation_of_an_ingested_key_reseals_the_same_value(
    kube: Target, admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="src"),
            data={"k": base64.b64encode(b"same-value").decode()},
        ),
    )
    create_apikey(
        admin_api, namespace, "kept", {"source": {"secretRef": {"name": "src", "key": "k"}}}
    )
    _wait_ready(admin_api, namespace, "kept")
    assert _secure_keys(kube, "rotate", "kept", "-n", namespace).returncode == 0

    def rotated() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, "kept")
        return obj if obj["status"].get("currentVersion") == 2 else None

    obj = eventually(rotated, 30, "version 2")
    first, second = obj["status"]["versions"]
    # A new DEK and envelope, the same plaintext (fingerprints equal), and the source kept.
    assert first["fingerprint"] == second["fingerprint"]
    blobs = core.read_namespaced_secret("kept.sealed", namespace).data
    assert blobs["v1"] != blobs["v2"]
    assert core.read_namespaced_secret("src", namespace).data


def test_interval_rotation_and_retention(
    admin_api: client.ApiClient, namespace: str, controller: ControllerProcess
) -> None:
    destroyed_before = controller.metrics().get("securekeys_versions_destroyed_total", 0.0)
    create_apikey(
        admin_api,
        namespace,
        "ticking",
        {
            "source": {"generate": {}},
            "rotation": {"interval": "10s", "gracePeriod": "2s", "retain": 1},
        },
    )
    obj = _wait_ready(admin_api, namespace, "ticking")
    assert obj["status"]["nextRotation"]

    def rotated_and_pruned() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, "ticking")
        states = {v["version"]: v["state"] for v in obj["status"].get("versions") or []}
        return obj if states.get(2) == "Active" and states.get(1) == "Destroyed" else None

    eventually(rotated_and_pruned, 40, "a scheduled rotation and v1 destroyed")
    core = client.CoreV1Api(admin_api)
    eventually(
        lambda: "v1" not in (core.read_namespaced_secret("ticking.sealed", namespace).data or {}),
        what="v1's blob deleted",
    )
    assert controller.metrics()["securekeys_versions_destroyed_total"] >= destroyed_before + 1
    wait_event_reasons(admin_api, namespace, "ticking", {"Sealed", "Rotated", "Destroyed"})


def test_invalid_rotation_the_schema_cannot_catch_is_reported(
    admin_api: client.ApiClient, namespace: str
) -> None:
    # A schedule's shortest gap is only known to the controller (the CRD checks syntax).
    create_apikey(
        admin_api,
        namespace,
        "tight",
        {"source": {"generate": {}}, "rotation": {"schedule": "*/5 * * * *", "gracePeriod": "10m"}},
    )
    obj = _wait_reason(admin_api, namespace, "tight", "InvalidRotation")
    assert "gracePeriod" in condition(obj, "Ready")["message"]  # type: ignore[index]
