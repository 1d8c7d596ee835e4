"""deploy/secretref-policy.yaml against the real API server, with real client-cert users.

The confused deputy it closes: a user allowed to create ApiKeys, but not to read or delete
Secrets, names a Secret in ``spec.source.secretRef`` (with ``deleteAfterSeal``), and the
controller reads and deletes it under its own ClusterRole. The policy admits a secretRef
only if the requesting user may ``get`` that Secret (and ``delete`` it, with
deleteAfterSeal), on CREATE and on any UPDATE that changes the secretRef. The session's
controller runs under deploy/controller-rbac.yaml, so the allowed cases are also sealed
end to end, and its own metadata writes (finalizer) must still pass the policy.

``test_without_the_policy_the_controller_deletes_the_secret`` removes the policy's
binding for a moment to show the attack works without it, which is what gives the other
tests their power.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev.stack import (
    GROUP,
    VERSION,
    eventually,
    get_apikey,
    install_secretref_policy,
    is_ready,
)

pytestmark = pytest.mark.usefixtures("controller")

MALLORY = "mallory"
POLICY = "secure-keys-secretref-access"
PASSWORD = "hunter2-db-password"  # a stand-in value, not key material of any test KMS


def _api_key(name: str, ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiKey",
        "metadata": {"name": name},
        "spec": {"source": {"secretRef": ref}},
    }


def _create(
    api: client.ApiClient, namespace: str, body: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    kwargs = {"dry_run": "All"} if dry_run else {}
    obj: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", body, **kwargs
    )
    return obj


def _patch_spec(
    api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", name, {"spec": spec}
    )
    return obj


def _refused(call: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, message) of a request that must fail."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status), str(json.loads(exc.body).get("message", ""))
    raise AssertionError("the API server accepted the request")


def _secret(admin: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(admin).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={"password": PASSWORD},
        ),
    )


def _secret_value(admin: client.ApiClient, namespace: str, name: str) -> str | None:
    try:
        secret = client.CoreV1Api(admin).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return base64.b64decode(secret.data["password"]).decode()


def _can(api: client.ApiClient, namespace: str, verb: str, resource: str, name: str) -> bool:
    """What `kubectl auth can-i` asks: a SelfSubjectAccessReview as that user
    (``resource`` is ``plural[.group]``)."""
    plural, _, group = resource.partition(".")
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace,
                    verb=verb,
                    group=group,
                    resource=plural,
                    name=name or None,
                )
            )
        )
    )
    return bool(review.status.allowed)


def _grant(
    admin: client.ApiClient,
    namespace: str,
    role: str,
    rules: list[dict[str, Any]],
    user: str = MALLORY,
) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


def _grant_secret(
    admin: client.ApiClient, mallory: client.ApiClient, namespace: str, name: str, verbs: list[str]
) -> None:
    rule = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": verbs}
    _grant(admin, namespace, f"{name}-{'-'.join(verbs)}", [rule])
    for verb in verbs:
        eventually(
            lambda v=verb: _can(mallory, namespace, v, "secrets", name),  # type: ignore[misc]
            what=f"the grant of {verb} on Secret {name} to take effect",
        )


def _ready(admin: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_apikey(admin, namespace, name)
        return obj if is_ready(obj) else None

    return eventually(check, 30, f"{name} Ready")


def _policy_denies(mallory: client.ApiClient, namespace: str) -> bool:
    """Whether the policy is enforced now (a dry run: nothing is stored either way)."""
    body = _api_key("probe", {"name": "never-readable", "key": "password"})
    try:
        _create(mallory, namespace, body, dry_run=True)
    except ApiException as exc:
        if exc.status == 403 and POLICY in exc.body:
            return True
        raise
    return False


@pytest.fixture
def mallory(
    user_api: Callable[..., client.ApiClient], admin_api: client.ApiClient, namespace: str
) -> client.ApiClient:
    """A client-cert user who may create, read and edit ApiKeys here, and nothing else;
    returned once the grant and the policy are both in force."""
    _grant(
        admin_api,
        namespace,
        "apikey-author",
        [
            {
                "apiGroups": [GROUP],
                "resources": ["apikeys"],
                "verbs": ["get", "list", "create", "update", "patch"],
            }
        ],
    )
    api = user_api(MALLORY)
    eventually(
        lambda: _can(api, namespace, "create", "apikeys.securekeys.io", ""),
        what="mallory's ApiKey grant to take effect",
    )
    eventually(lambda: _policy_denies(api, namespace), what="the secretRef policy to be enforced")
    return api


def test_user_who_cannot_read_a_secret_cannot_have_the_controller_delete_it(
    admin_api: client.ApiClient, mallory: client.ApiClient, namespace: str
) -> None:
    """The reproduction from the issue, with the policy installed: db-creds survives."""
    _secret(admin_api, namespace, "db-creds")
    assert not _can(mallory, namespace, "get", "secrets", "db-creds")
    assert not _can(mallory, namespace, "delete", "secrets", "db-creds")
    body = _api_key("steal", {"name": "db-creds", "key": "password", "deleteAfterSeal": True})

    status, message = _refused(lambda: _create(mallory, namespace, body))

    assert status == 403
    assert POLICY in message
    assert 'user "mallory" may not get Secret ' + f"{namespace}/db-creds" in message
    assert "missing verb: get" in message
    assert PASSWORD not in message
    listing = client.CustomObjectsApi(admin_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys"
    )
    assert listing["items"] == []
    assert _secret_value(admin_api, namespace, "db-creds") == PASSWORD


def test_get_without_delete_allows_only_a_secretref_that_keeps_the_secret(
    admin_api: client.ApiClient, mallory: client.ApiClient, namespace: str
) -> None:
    _secret(admin_api, namespace, "db-creds")
    _grant_secret(admin_api, mallory, namespace, "db-creds", ["get"])
    assert not _can(mallory, namespace, "delete", "secrets", "db-creds")

    deleting = _api_key(
        "deleting", {"name": "db-creds", "key": "password", "deleteAfterSeal": True}
    )
    status, message = _refused(lambda: _create(mallory, namespace, deleting))
    assert status == 403
    assert 'user "mallory" may not delete Secret ' + f"{namespace}/db-creds" in message
    assert "missing verb: delete" in message
    assert "missing verb: get" not in message

    keeping = _api_key("keeping", {"name": "db-creds", "key": "password", "deleteAfterSeal": False})
    _create(mallory, namespace, keeping)
    obj = _ready(admin_api, namespace, "keeping")  # sealed by the controller, under its RBAC
    assert obj["status"]["versions"][0]["state"] == "Active"
    assert "securekeys.io/shred-blobs" in obj["metadata"]["finalizers"]  # its UPDATE passed
    assert _secret_value(admin_api, namespace, "db-creds") == PASSWORD


def test_get_and_delete_allow_delete_after_seal(
    admin_api: client.ApiClient, mallory: client.ApiClient, namespace: str
) -> None:
    _secret(admin_api, namespace, "db-creds")
    _grant_secret(admin_api, mallory, namespace, "db-creds", ["get", "delete"])

    body = _api_key("consumed", {"name": "db-creds", "key": "password", "deleteAfterSeal": True})
    _create(mallory, namespace, body)

    _ready(admin_api, namespace, "consumed")
    eventually(
        lambda: _secret_value(admin_api, namespace, "db-creds") is None,
        what="the controller to delete the source Secret mallory could have deleted herself",
    )


def test_update_is_checked_only_when_the_secretref_changes(
    admin_api: client.ApiClient, mallory: client.ApiClient, namespace: str
) -> None:
    _secret(admin_api, namespace, "db-creds")
    _secret(admin_api, namespace, "other-creds")
    _grant_secret(admin_api, mallory, namespace, "db-creds", ["get"])
    ref = {"name": "db-creds", "key": "password", "deleteAfterSeal": False}
    _create(mallory, namespace, _api_key("moving", ref))
    _ready(admin_api, namespace, "moving")

    # Switching to a Secret she cannot read is refused, as on CREATE.
    other = {"source": {"secretRef": {**ref, "name": "other-creds"}}}
    status, message = _refused(lambda: _patch_spec(mallory, namespace, "moving", other))
    assert status == 403
    assert f"Secret {namespace}/other-creds" in message
    assert "missing verb: get" in message
    # So is turning deleteAfterSeal on for the Secret she may read but not delete.
    deleting = {"source": {"secretRef": {**ref, "deleteAfterSeal": True}}}
    status, message = _refused(lambda: _patch_spec(mallory, namespace, "moving", deleting))
    assert status == 403
    assert "missing verb: delete" in message
    assert get_apikey(admin_api, namespace, "moving")["spec"]["source"]["secretRef"] == ref

    # An ApiKey someone else pointed at a Secret she cannot read: she may still edit the
    # rest of it, because the secretRef does not change.
    admin_ref = {"name": "other-creds", "key": "password", "deleteAfterSeal": False}
    _create(admin_api, namespace, _api_key("admins", admin_ref))
    _ready(admin_api, namespace, "admins")
    _patch_spec(mallory, namespace, "admins", {"rotation": {"retain": 3}})
    assert get_apikey(admin_api, namespace, "admins")["spec"]["rotation"]["retain"] == 3
    assert _secret_value(admin_api, namespace, "other-creds") == PASSWORD

    # Deleting runs the finalizer; the controller's finalizer removal is an UPDATE that
    # must pass the policy, or the ApiKey would never go.
    client.CustomObjectsApi(admin_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "apikeys", "admins"
    )

    def gone() -> bool:
        try:
            get_apikey(admin_api, namespace, "admins")
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(gone, what="the controller to release its finalizer")


def test_without_the_policy_the_controller_deletes_the_secret(
    admin_api: client.ApiClient, mallory: client.ApiClient, namespace: str
) -> None:
    """The vulnerability itself, with the policy's binding removed for this test: the same
    request as in the reproduction is admitted and db-creds is gone a moment later. This is
    what the tests above would see without deploy/secretref-policy.yaml."""
    admission = client.AdmissionregistrationV1Api(admin_api)
    _secret(admin_api, namespace, "db-creds")
    body = _api_key("steal", {"name": "db-creds", "key": "password", "deleteAfterSeal": True})
    admission.delete_validating_admission_policy_binding(POLICY)
    try:
        eventually(lambda: not _policy_denies(mallory, namespace), what="the policy to be lifted")
        _create(mallory, namespace, body)
        eventually(
            lambda: _secret_value(admin_api, namespace, "db-creds") is None,
            what="the controller to delete a Secret mallory may not even read",
        )
        assert _ready(admin_api, namespace, "steal")["status"]["versions"]
    finally:
        install_secretref_policy(admin_api)
        eventually(lambda: _policy_denies(mallory, namespace), what="the policy to be restored")
