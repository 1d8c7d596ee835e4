"""Builders for the gateway's unit tests: pods, AdmissionReviews, a snapshot table, and
an RFC 6902 ``add`` applier (to check that a patch applies to the pod it was built for)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secure_keys.gateway.webhook.authorize import ApiKeyView, KeyRoleView
from secure_keys.kube.keyroles import KeyRoleRules, binds_service_account

NS = "payments"


def pod(
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    service_account: str = "app",
    security_context: dict[str, Any] | None = None,
    name: str = "web",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "containers": containers if containers is not None else [{"name": "app", "image": "x"}],
    }
    if init_containers is not None:
        spec["initContainers"] = init_containers
    if volumes is not None:
        spec["volumes"] = volumes
    if security_context is not None:
        spec["securityContext"] = security_context
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"securekeys.io/inject": "true"} if labels is None else labels,
    }
    metadata["annotations"] = (
        {"securekeys.io/keys": "stripe-live"} if annotations is None else annotations
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(
    obj: Mapping[str, Any] | None,
    *,
    namespace: str = NS,
    operation: str = "CREATE",
    kind: str = "Pod",
    uid: str = "0f6c1f4e-1111-2222-3333-444455556666",
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": operation,
        "namespace": namespace,
        "userInfo": {"username": "alice"},
        "dryRun": False,
    }
    if obj is not None:
        request["object"] = obj
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def body(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document).encode()


def role(
    name: str,
    *,
    subjects: list[dict[str, Any]] | None = None,
    names: list[str] | None = None,
    selector: dict[str, Any] | None = None,
    permissions: list[str] | None = None,
    namespace: str = NS,
    deleting: bool = False,
) -> KeyRoleView:
    keys: dict[str, Any] = {}
    if names is not None:
        keys["names"] = names
    if selector is not None:
        keys["selector"] = selector
    spec = {
        "subjects": subjects or [{"kind": "ServiceAccount", "name": "app"}],
        "keys": keys,
        "permissions": permissions or ["read"],
    }
    return KeyRoleView(name, namespace, KeyRoleRules.model_validate(spec), deleting)


@dataclass
class Table:
    """A ``Snapshot`` given as plain data."""

    keys: dict[str, list[ApiKeyView]] = field(default_factory=dict)
    roles: list[KeyRoleView] = field(default_factory=list)
    accounts: set[tuple[str, str]] = field(default_factory=lambda: {(NS, "app")})

    def apikeys(self, namespace: str) -> Mapping[str, ApiKeyView]:
        return {k.name: k for k in self.keys.get(namespace, [])}

    def keyroles_naming(self, namespace: str, service_account: str) -> list[KeyRoleView]:
        return [
            r
            for r in self.roles
            if r.namespace == namespace
            and any(
                binds_service_account(s, namespace, namespace, service_account)
                for s in r.rules.subjects
            )
        ]

    def service_account_exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.accounts


def key(
    name: str, *, file_name: str | None = None, deleting: bool = False, **labels: str
) -> ApiKeyView:
    return ApiKeyView(name, labels, file_name or name, deleting)


def bound_table() -> Table:
    """stripe-live and billing exist in payments; ServiceAccount app may read both."""
    return Table(
        keys={NS: [key("stripe-live", tier="live"), key("billing", file_name="billing.env")]},
        roles=[role("app-keys", names=["stripe-live", "billing"])],
    )


def apply_patch(document: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` (the only operation the gateway emits), strictly: every parent
    must exist, list indexes must be in range."""
    result = copy.deepcopy(dict(document))
    for op in ops:
        assert op["op"] == "add", op
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = result
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                index = int(last)
                assert 0 <= index <= len(target), op["path"]
                target.insert(index, value)
        else:
            assert isinstance(target, dict), op["path"]
            target[last] = value
    return result
