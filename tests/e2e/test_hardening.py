"""The hostile review's ways to lose or hijack a key, replayed against the real API server.

Each test stages, with admin (kubectl-equivalent) calls, the state a careless or hostile
user can create, and checks that the controller under its own RBAC keeps every sealed
copy and never writes to a Secret it does not own.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client

from secure_keys.controller.reconciler import blob_secret_name
from secure_keys_dev.stack import condition, create_apikey, eventually, get_apikey, is_ready

pytestmark = pytest.mark.usefixtures("controller")


def _active(api: client.ApiClient, namespace: str, name: str, version: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(api, namespace, name)
        if is_ready(obj) and (obj.get("status") or {}).get("currentVersion") == version:
            return obj
        return None

    return eventually(check, 30, f"{name} Ready at version {version}")


def _blob_data(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(blob_secret_name(name), namespace)
    return dict(secret.data or {})


def _events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    items = (
        client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return [e for e in items if e.reason == reason]


def test_clearing_status_keeps_a_consumed_secret_ref_key(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="db-creds"),
            string_data={"password": "only-copy-of-this-value"},
        ),
    )
    create_apikey(
        admin_api,
        namespace,
        "db",
        {"source": {"secretRef": {"name": "db-creds", "key": "password", "deleteAfterSeal": True}}},
    )
    before = _active(admin_api, namespace, "db", 1)
    eventually(
        lambda: (
            not core.list_namespaced_secret(
                namespace, field_selector="metadata.name=db-creds"
            ).items
        ),
        30,
        "the source consumed",
    )
    sealed = _blob_data(admin_api, namespace, "db")

    # The reproduction from the review: kubectl patch --subresource=status.
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object_status(
        "securekeys.io",
        "v1alpha1",
        namespace,
        "apikeys",
        "db",
        {"status": {"versions": [], "currentVersion": None}},
    )
    eventually(lambda: _events(admin_api, namespace, "db", "Adopted"), 30, "an Adopted event")
    after = _active(admin_api, namespace, "db", 1)
    assert _blob_data(admin_api, namespace, "db") == sealed  # not deleted, not overwritten
    assert [v["fingerprint"] for v in after["status"]["versions"]] == [
        v["fingerprint"] for v in before["status"]["versions"]
    ]


def test_a_foreign_secret_named_like_the_blob_secret_is_left_alone(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="payments.sealed"),
            data={"v1": base64.b64encode(b"the admin's own data").decode()},
        ),
    )
    create_apikey(admin_api, namespace, "payments", {"source": {"generate": {}}})

    def refused() -> dict[str, Any] | None:
        obj = get_apikey(admin_api, namespace, "payments")
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "BlobSecretConflict" else None

    eventually(refused, 30, "Ready=False BlobSecretConflict")
    # The Warning Event follows the status write: wait for it, do not race it.
    eventually(
        lambda: _events(admin_api, namespace, "payments", "BlobSecretConflict"),
        30,
        "a BlobSecretConflict Event",
    )

    client.CustomObjectsApi(admin_api).delete_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", "payments"
    )
    eventually(
        lambda: (
            not client.CustomObjectsApi(admin_api)
            .list_namespaced_custom_object("securekeys.io", "v1alpha1", namespace, "apikeys")
            .get("items")
        ),
        30,
        "the ApiKey gone",
    )
    secret = core.read_namespaced_secret("payments.sealed", namespace)
    assert secret.data == {"v1": base64.b64encode(b"the admin's own data").decode()}
    assert not secret.metadata.owner_references
    assert not secret.metadata.labels


def test_a_deleted_blob_secret_is_reported_and_nothing_is_served_without_a_blob(
    admin_api: client.ApiClient, namespace: str
) -> None:
    create_apikey(admin_api, namespace, "gen", {"source": {"generate": {}}})
    _active(admin_api, namespace, "gen", 1)
    client.CoreV1Api(admin_api).delete_namespaced_secret(blob_secret_name("gen"), namespace)

    obj = _active(admin_api, namespace, "gen", 2)
    versions = {v["version"]: v for v in obj["status"]["versions"]}
    assert versions[1]["state"] == "Destroyed"
    assert "lostAt" in versions[1]
    intact = condition(obj, "BlobsIntact")
    assert intact is not None
    assert intact["status"] == "False"
    [warning] = eventually(
        lambda: _events(admin_api, namespace, "gen", "BlobMissing"), 30, "a BlobMissing Event"
    )
    assert warning.type == "Warning"
    assert set(_blob_data(admin_api, namespace, "gen")) == {"v2"}


def test_every_valid_name_length_is_supported(admin_api: client.ApiClient, namespace: str) -> None:
    name = "k" * 253  # the longest valid ApiKey name; the label limit is 63
    create_apikey(admin_api, namespace, name, {"source": {"generate": {}}})
    obj = _active(admin_api, namespace, name, 1)
    secret = client.CoreV1Api(admin_api).read_namespaced_secret(blob_secret_name(name), namespace)
    assert secret.metadata.labels["securekeys.io/apikey-uid"] == obj["metadata"]["uid"]
    assert secret.metadata.owner_references[0].name == name
