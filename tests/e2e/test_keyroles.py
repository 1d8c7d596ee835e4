"""The controller keeps each KeyRole's status true to the ApiKeys that exist."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from secure_keys_dev.stack import condition, create_apikey, eventually, wait_event_reasons

pytestmark = pytest.mark.usefixtures("controller")


def _keyrole(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "keyroles", name
    )
    return obj


def test_keyrole_reports_missing_keys_until_they_exist(
    admin_api: client.ApiClient, namespace: str
) -> None:
    client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
        "securekeys.io",
        "v1alpha1",
        namespace,
        "keyroles",
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "KeyRole",
            "metadata": {"name": "readers"},
            "spec": {
                "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                "keys": {"names": ["stripe"], "selector": {"matchLabels": {"team": "pay"}}},
                "permissions": ["read"],
            },
        },
    )

    def missing() -> dict[str, Any] | None:
        obj = _keyrole(admin_api, namespace, "readers")
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "KeysMissing" else None

    obj = eventually(missing, what="KeysMissing")
    assert obj["status"]["missingKeys"] == ["stripe"]

    wait_event_reasons(admin_api, namespace, "readers", {"KeysMissing"})

    create_apikey(admin_api, namespace, "stripe", {"source": {"generate": {}}})
    body = {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": "billing", "labels": {"team": "pay"}},
        "spec": {"source": {"generate": {}}},
    }
    client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", body
    )
    create_apikey(admin_api, namespace, "unrelated", {"source": {"generate": {}}})

    def resolved() -> dict[str, Any] | None:
        obj = _keyrole(admin_api, namespace, "readers")
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        if ready and ready["status"] == "True" and len(status.get("resolvedKeys", [])) == 2:
            return obj
        return None

    obj = eventually(resolved, what="both keys resolved")
    assert obj["status"]["resolvedKeys"] == ["billing", "stripe"]
    assert obj["status"]["missingKeys"] == []
