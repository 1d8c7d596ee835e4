"""The chart's policies on its own ServiceAccounts, against the real API server, as the
controller's and the gateway's ServiceAccounts (impersonated by the session's admin):
deploy/secret-types-policy.yaml, then deploy/gateway-self-policy.yaml.

The attack it closes: either ServiceAccount, holding Secret write rights and Secret read
rights, creates a Secret of type ``kubernetes.io/service-account-token`` annotated
``kubernetes.io/service-account.name: <another ServiceAccount>``; the
kube-controller-manager writes that ServiceAccount's token into it, and the writer reads
it. The policy admits, from these two users only, Secrets of the project's own types and
never the service-account annotations. Each ServiceAccount is granted ample RBAC in a
fresh namespace here, so every refusal below is the policy's, not RBAC's; and
``test_without_the_binding_the_token_secret_is_admitted`` shows the same request passes
once the policy's binding is gone. Attack requests are dry runs: the policy is enforced
on them, and no token is ever minted.

The gateway may patch its MutatingWebhookConfiguration and its Deployment (RBAC, by
name); gateway-self-policy.yaml lets it change only each webhook's caBundle and the
restart annotation of its pod template. The tests write those two (what certs.py does)
and then each way a compromised gateway would widen its reach, on a test webhook
configuration that can match no pod and a Deployment with no replicas.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys.gateway.access.mfa import MFA_SECRET_TYPE
from secure_keys.gateway.certs import GATEWAY_CERTS_TYPE
from secure_keys.kube.blobformat import BLOB_SECRET_TYPE
from secure_keys.kube.keysformat import CONTROLLER_KEYS_TYPE
from secure_keys_dev.stack import REPO, eventually, install_admission_policy

POLICY_FILE = REPO / "deploy" / "secret-types-policy.yaml"
SYSTEM = "secure-keys-system"
CONTROLLER = "secure-keys-controller"
GATEWAY = "secure-keys-gateway"
TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_ANNOTATION = "kubernetes.io/service-account.name"


def _user(account: str) -> str:
    return f"system:serviceaccount:{SYSTEM}:{account}"


def _policy_name() -> str:
    docs = [d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d]
    return str(docs[0]["metadata"]["name"])


@pytest.fixture(scope="module")
def policy(admin_api: client.ApiClient) -> Iterator[str]:
    """The rendered policy and binding, installed for this module and removed after."""
    install_admission_policy(admin_api, POLICY_FILE)
    name = _policy_name()
    yield name
    admission = client.AdmissionregistrationV1Api(admin_api)
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


def _as(admin: client.ApiClient, account: str) -> client.ApiClient:
    """The admin's connection, impersonating a ServiceAccount (the API server adds its
    groups, as for the real token)."""
    return client.ApiClient(
        admin.configuration, header_name="Impersonate-User", header_value=_user(account)
    )


@pytest.fixture(params=[CONTROLLER, GATEWAY])
def writer(
    request: pytest.FixtureRequest, admin_api: client.ApiClient, namespace: str, policy: str
) -> Iterator[tuple[str, client.CoreV1Api]]:
    """One of the two ServiceAccounts, allowed by RBAC every Secret write in ``namespace``."""
    account: str = request.param
    rbac = client.RbacAuthorizationV1Api(admin_api)
    rule = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "writer"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": SYSTEM}],
        },
    )
    api = _as(admin_api, account)
    core = client.CoreV1Api(api)
    # Ready once the grant and the policy both act: a plain Secret is refused (by the
    # policy, 403 with its message) rather than unauthorized.
    eventually(
        lambda: "secure-keys Secret types" in _refused(lambda: _create(core, namespace, "Opaque")),
        what="the grant and the policy to take effect",
    )
    yield account, core
    api.close()


def _secret(name: str, type_: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": annotations or {}},
        "type": type_,
        "data": {"x": "eA=="},
    }


def _create(
    core: client.CoreV1Api,
    namespace: str,
    type_: str,
    annotations: dict[str, str] | None = None,
    *,
    name: str = "s",
    dry_run: bool = True,
) -> Any:
    kwargs = {"dry_run": "All"} if dry_run else {}
    return core.create_namespaced_secret(namespace, _secret(name, type_, annotations), **kwargs)


def _refused(call: Callable[[], Any]) -> str:
    """The message of a request the API server must refuse with 403 ('' if it is
    accepted, the status first if refused otherwise)."""
    try:
        call()
    except ApiException as exc:
        message = str(json.loads(exc.body).get("message", ""))
        return message if exc.status == 403 else f"HTTP {exc.status}: {message}"
    return ""


def test_minting_a_token_for_another_service_account_is_refused(
    writer: tuple[str, client.CoreV1Api], namespace: str
) -> None:
    """The exact attack: a service-account-token Secret naming the controller (from the
    gateway) or a kube-system controller (from the controller)."""
    account, core = writer
    target = CONTROLLER if account == GATEWAY else "generic-garbage-collector"
    message = _refused(lambda: _create(core, namespace, TOKEN_TYPE, {SA_ANNOTATION: target}))
    assert "may write only secure-keys Secret types" in message
    assert TOKEN_TYPE in message
    # The annotation alone, on a Secret of a type the writer may write, is refused too.
    allowed = MFA_SECRET_TYPE if account == GATEWAY else BLOB_SECRET_TYPE
    message = _refused(lambda: _create(core, namespace, allowed, {SA_ANNOTATION: target}))
    assert "kubernetes.io/service-account.name" in message


def test_an_existing_foreign_secret_cannot_be_rewritten_either(
    writer: tuple[str, client.CoreV1Api], admin_api: client.ApiClient, namespace: str
) -> None:
    _, core = writer
    client.CoreV1Api(admin_api).create_namespaced_secret(namespace, _secret("plain", "Opaque"))
    secret = core.read_namespaced_secret("plain", namespace)
    secret.metadata.annotations = {SA_ANNOTATION: CONTROLLER}
    message = _refused(lambda: core.replace_namespaced_secret("plain", namespace, secret))
    assert "may write only secure-keys Secret types" in message


def test_the_project_secret_types_are_still_written(
    writer: tuple[str, client.CoreV1Api], admin_api: client.ApiClient, namespace: str
) -> None:
    """What the controller (blob Secrets, its keys) and the gateway (its certificates
    Secret, made by the chart and updated by the gateway; people's MFA enrolments) do
    every day; and the gateway, which may write Secrets in the release namespace, may not
    write the controller's types."""
    account, core = writer
    own = (BLOB_SECRET_TYPE, CONTROLLER_KEYS_TYPE) if account == CONTROLLER else (MFA_SECRET_TYPE,)
    for type_ in own:
        made = _create(core, namespace, type_, name=type_.split("/")[1], dry_run=False)
        made.data = {"x": "eQ=="}
        core.replace_namespaced_secret(made.metadata.name, namespace, made)
    if account == GATEWAY:
        for type_ in (BLOB_SECRET_TYPE, CONTROLLER_KEYS_TYPE):
            message = _refused(lambda t=type_: _create(core, namespace, t))  # type: ignore[misc]
            assert "the gateway may write only" in message
    client.CoreV1Api(admin_api).create_namespaced_secret(
        namespace, _secret("gateway-tls", GATEWAY_CERTS_TYPE)
    )
    tls = core.read_namespaced_secret("gateway-tls", namespace)
    tls.data = {"ca.crt": "eQ=="}
    tls.metadata.annotations = {"securekeys.io/rotated-ca": "1"}
    assert core.replace_namespaced_secret("gateway-tls", namespace, tls).data == tls.data


def test_other_users_are_not_matched(
    admin_api: client.ApiClient, namespace: str, policy: str
) -> None:
    core = client.CoreV1Api(admin_api)
    _create(core, namespace, "Opaque")
    _create(core, namespace, TOKEN_TYPE, {SA_ANNOTATION: "default"})


def test_without_the_binding_the_token_secret_is_admitted(
    writer: tuple[str, client.CoreV1Api], admin_api: client.ApiClient, namespace: str
) -> None:
    """What gives the tests above their power: the same request, once the policy is
    unbound, is admitted (a dry run, so no token is minted), and refused again after."""
    _, core = writer
    admission = client.AdmissionregistrationV1Api(admin_api)
    name = _policy_name()
    admission.delete_validating_admission_policy_binding(name)
    try:

        def admitted() -> bool:
            try:
                _create(core, namespace, TOKEN_TYPE, {SA_ANNOTATION: CONTROLLER})
            except ApiException:
                return False
            return True

        eventually(admitted, what="the token Secret admitted without the binding")
    finally:
        install_admission_policy(admin_api, POLICY_FILE)
    eventually(
        lambda: _refused(lambda: _create(core, namespace, TOKEN_TYPE, {SA_ANNOTATION: CONTROLLER})),
        what="the policy enforced again",
    )


# -- what the gateway may change in its webhook configuration and its Deployment ----------

SELF_POLICY_FILE = REPO / "deploy" / "gateway-self-policy.yaml"
MARK = "securekeys.io/ca-bundle-sha256"


@pytest.fixture(scope="module")
def self_policy(admin_api: client.ApiClient) -> Iterator[None]:
    install_admission_policy(admin_api, SELF_POLICY_FILE)
    yield
    admission = client.AdmissionregistrationV1Api(admin_api)
    for document in yaml.safe_load_all(SELF_POLICY_FILE.read_text()):
        if document and document["kind"] == "ValidatingAdmissionPolicyBinding":
            admission.delete_validating_admission_policy_binding(document["metadata"]["name"])
        elif document:
            admission.delete_validating_admission_policy(document["metadata"]["name"])


@pytest.fixture
def gateway(
    admin_api: client.ApiClient, namespace: str, self_policy: None
) -> Iterator[client.ApiClient]:
    """The gateway's ServiceAccount, allowed by RBAC (as gateway-certs-rbac.yaml allows it,
    plus `update`) to rewrite a test webhook configuration and a Deployment."""
    rbac = client.RbacAuthorizationV1Api(admin_api)
    name = f"gateway-self-{namespace}"
    rbac.create_cluster_role(
        {
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": ["mutatingwebhookconfigurations"],
                    "resourceNames": [namespace],
                    "verbs": ["get", "patch", "update"],
                },
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "verbs": ["get", "patch", "update"],
                },
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": SYSTEM}],
        }
    )
    admission = client.AdmissionregistrationV1Api(admin_api)
    admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": namespace},
            "webhooks": [
                {
                    "name": "inject.securekeys.io",
                    "clientConfig": {"url": "https://127.0.0.1:1/inject"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    # Nothing carries this label: the webhook is never called.
                    "objectSelector": {"matchLabels": {"securekeys.io/never": namespace}},
                    "namespaceSelector": {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/metadata.name",
                                "operator": "NotIn",
                                "values": ["kube-system"],
                            }
                        ]
                    },
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                }
            ],
        }
    )
    client.AppsV1Api(admin_api).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "gateway"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "gateway"}},
                "template": {
                    "metadata": {"labels": {"app": "gateway"}, "annotations": {"keep": "me"}},
                    "spec": {"containers": [{"name": "gateway", "image": "gateway:test"}]},
                },
            },
        },
    )
    api = _as(admin_api, GATEWAY)
    yield api
    api.close()
    admission.delete_mutating_webhook_configuration(namespace)
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)


def _patch_webhook(
    api: client.ApiClient, name: str, ops: list[dict[str, Any]], *, dry_run: bool = False
) -> Any:
    kwargs = {"dry_run": "All"} if dry_run else {}
    return client.AdmissionregistrationV1Api(api).patch_mutating_webhook_configuration(
        name, ops, **kwargs
    )


def _accepted(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException:
        return False
    return True


def test_the_gateway_may_write_only_the_ca_bundle_of_its_webhook(
    gateway: client.ApiClient, namespace: str
) -> None:
    bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    set_bundle = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]
    # What certs.py does; accepted once the RBAC grant acts.
    eventually(
        lambda: _accepted(lambda: _patch_webhook(gateway, namespace, set_bundle)),
        what="the caBundle write accepted",
    )
    attacks: dict[str, list[dict[str, Any]]] = {
        "drop the namespaceSelector": [{"op": "remove", "path": "/webhooks/0/namespaceSelector"}],
        "drop the objectSelector": [{"op": "remove", "path": "/webhooks/0/objectSelector"}],
        "repoint clientConfig": [
            {"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": "https://x.example/"}
        ],
        "fail open": [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}],
        "add a webhook": [
            {
                "op": "add",
                "path": "/webhooks/-",
                "value": {
                    "name": "more.securekeys.io",
                    "clientConfig": {"url": "https://x.example/"},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                },
            }
        ],
        "relabel it": [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}],
    }
    # Attacks are dry runs (the policy judges them; nothing changes), the first one
    # repeated until the API server's admission plugin has loaded the policy.
    first = next(iter(attacks.values()))
    eventually(
        lambda: (
            "caBundle" in _refused(lambda: _patch_webhook(gateway, namespace, first, dry_run=True))
        ),
        what="the policy enforced",
    )
    for what, ops in attacks.items():
        message = _refused(
            lambda ops=ops: _patch_webhook(gateway, namespace, ops, dry_run=True)  # type: ignore[misc]
        )
        assert "only webhooks[*].clientConfig.caBundle" in message, what
    _patch_webhook(gateway, namespace, set_bundle)  # still allowed after all that


def _patch_deployment(
    api: client.ApiClient, namespace: str, patch: dict[str, Any], *, dry_run: bool = False
) -> Any:
    kwargs = {"dry_run": "All"} if dry_run else {}
    return client.AppsV1Api(api).patch_namespaced_deployment("gateway", namespace, patch, **kwargs)


def _template(patch: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"template": patch}}


def test_the_gateway_may_only_restart_its_deployment(
    gateway: client.ApiClient, namespace: str
) -> None:
    restart = _template({"metadata": {"annotations": {MARK: "0123abcd"}}})
    eventually(
        lambda: _accepted(lambda: _patch_deployment(gateway, namespace, restart)),
        what="the restart annotation accepted",
    )
    attacks: dict[str, dict[str, Any]] = {
        "run as the controller": _template({"spec": {"serviceAccountName": CONTROLLER}}),
        "another image": _template(
            {"spec": {"containers": [{"name": "gateway", "image": "other:test"}]}}
        ),
        "another pod annotation": _template({"metadata": {"annotations": {"x": "y"}}}),
        "drop a pod annotation": _template({"metadata": {"annotations": {"keep": None}}}),
        "relabel the pods": _template({"metadata": {"labels": {"extra": "y"}}}),
        "scale": {"spec": {"replicas": 3}},
        "relabel it": {"metadata": {"labels": {"x": "y"}}},
    }
    first = next(iter(attacks.values()))
    eventually(
        lambda: (
            "only the pod template"
            in _refused(lambda: _patch_deployment(gateway, namespace, first, dry_run=True))
        ),
        what="the policy enforced",
    )
    for what, patch in attacks.items():
        message = _refused(
            lambda p=patch: _patch_deployment(gateway, namespace, p, dry_run=True)  # type: ignore[misc]
        )
        assert "only the pod template annotation" in message, what
    changed = _template({"metadata": {"annotations": {MARK: "4567cdef"}}})
    _patch_deployment(gateway, namespace, changed)  # a second restart, still allowed


# -- what the gateway may change in an ApiKey's status ------------------------------------


def _let_the_gateway_patch(admin_api: client.ApiClient, namespace: str, resource: str) -> None:
    """Grant the gateway's ServiceAccount `patch` on ``resource`` (of securekeys.io) in
    ``namespace``, as gateway-broker-rbac.yaml does cluster-wide, so that every refusal
    that follows is the policy's, not RBAC's."""
    rbac = client.RbacAuthorizationV1Api(admin_api)
    name = f"gateway-{resource.replace('/', '-')}-{namespace}"
    rule = {"apiGroups": ["securekeys.io"], "resources": [resource], "verbs": ["patch"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": SYSTEM}],
        },
    )


def test_the_gateway_may_write_only_the_rollout_in_an_apikeys_status(
    admin_api: client.ApiClient, namespace: str, crds: None, self_policy: None
) -> None:
    """gateway-broker-rbac.yaml grants `patch` on apikeys/status for the rollout status
    (docs/rollout.md); the policy keeps every field the controller writes out of reach."""
    _let_the_gateway_patch(admin_api, namespace, "apikeys/status")
    custom = client.CustomObjectsApi(admin_api)
    custom.create_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys",
        {"apiVersion": "securekeys.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k"},
         "spec": {"source": {"generate": {"length": 32}}}},
    )  # fmt: skip
    gateway = client.CustomObjectsApi(_as(admin_api, GATEWAY))

    def patch(status: dict[str, Any], dry_run: bool = True) -> Any:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return gateway.patch_namespaced_custom_object_status(
            "securekeys.io", "v1alpha1", namespace, "apikeys", "k", {"status": status}, **kwargs
        )

    rollout = {"rollout": {"version": 0, "consumers": 0, "current": 0, "pods": "0/0"}}
    eventually(lambda: _accepted(lambda: patch(rollout)), what="the rollout write accepted")
    rolled_out = {
        "type": "RolledOut", "status": "True", "reason": "NoConsumers", "message": "none",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    attacks: dict[str, dict[str, Any]] = {
        "move the current version": {"currentVersion": 7},
        "forge a version record": {
            "versions": [{"version": 1, "state": "Destroyed", "destroyTag": "x" * 64}]
        },
        "honour a rotation request": {"lastRotationRequest": "forged"},
        "claim Ready": {
            "conditions": [
                {**rolled_out, "type": "Ready", "reason": "Active"},
                rolled_out,
            ]
        },
    }
    first = next(iter(attacks.values()))
    eventually(
        lambda: "only status.rollout" in _refused(lambda: patch(first)), what="the policy enforced"
    )
    for what, status in attacks.items():
        assert "only status.rollout" in _refused(lambda s=status: patch(s)), what  # type: ignore[misc]

    def rollout_write() -> Any:
        # The rollout itself: allowed. A merge patch replaces the whole conditions list,
        # so it carries the controller's conditions as they are now (the session's
        # controller seals this key meanwhile: its Ready condition must stay), as the
        # gateway's own writes do; read again if the controller wrote in between.
        stored = custom.get_namespaced_custom_object_status(
            "securekeys.io", "v1alpha1", namespace, "apikeys", "k"
        )
        theirs = [
            c
            for c in (stored.get("status") or {}).get("conditions") or []
            if c.get("type") != "RolledOut"
        ]
        return patch({**rollout, "conditions": [*theirs, rolled_out]}, dry_run=False)

    eventually(lambda: _accepted(rollout_write), what="the rollout write itself accepted")


# -- what the gateway may change in an ApiKey itself ---------------------------------------


def test_the_gateway_may_write_only_a_new_rotation_request_of_an_apikey(
    admin_api: client.ApiClient, namespace: str, crds: None, self_policy: None
) -> None:
    """gateway-broker-rbac.yaml grants `patch` on apikeys so that a KeyRole's rotate
    grantee can ask for a rotation through the gateway (docs/access.md); the policy keeps
    the spec, labels, finalizers and every other annotation out of reach, and the
    annotation itself to a new request in the gateway's form (ending in -role, which the
    controller spaces by the grace period), never while one is pending
    (so a compromised gateway cannot cancel an admin's rotation, nor two replicas both
    request one). The ApiKey names a local keyring no controller here has, so no request
    is ever honoured: the second one is pending for certain."""
    _let_the_gateway_patch(admin_api, namespace, "apikeys")
    custom = client.CustomObjectsApi(admin_api)
    custom.create_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys",
        {"apiVersion": "securekeys.io/v1alpha1", "kind": "ApiKey",
         "metadata": {"name": "k", "labels": {"team": "payments"},
                      "annotations": {"keep": "me"}},
         "spec": {"source": {"generate": {"length": 32}},
                  "kms": {"provider": "local", "keyId": "no-such-keyring"}}},
    )  # fmt: skip
    gateway = client.CustomObjectsApi(_as(admin_api, GATEWAY))

    def patch(body: dict[str, Any], dry_run: bool = True) -> Any:
        kwargs = {"dry_run": "All"} if dry_run else {}
        return gateway.patch_namespaced_custom_object(
            "securekeys.io", "v1alpha1", namespace, "apikeys", "k", body, **kwargs
        )

    def annotations(values: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"annotations": values}}

    mark = "securekeys.io/rotate-requested-at"
    request = annotations({mark: "2026-12-07T00:00:00Z-abc123-role"})
    eventually(lambda: _accepted(lambda: patch(request)), what="the rotation request accepted")
    attacks: dict[str, dict[str, Any]] = {
        "change the source": {"spec": {"source": {"generate": {"length": 16}}}},
        "move it to another KMS": {"spec": {"kms": {"provider": "local", "keyId": "default"}}},
        "relabel it into a role": {"metadata": {"labels": {"team": "everyone"}}},
        "hold it with a finalizer": {"metadata": {"finalizers": ["example.com/hold"]}},
        "end a version's grace": annotations({"securekeys.io/grace-ended-through": "9"}),
        "drop another annotation": annotations({"keep": None}),
        "request and relabel at once": {
            **request,
            "metadata": {**request["metadata"], "labels": {"team": "everyone"}},
        },
        "a request in another form": annotations({mark: "now please"}),
        # a user's own form, which the controller does not space by the grace period
        "a request the controller would not space": annotations(
            {mark: "2026-12-07T00:00:00Z-abc123"}
        ),
    }
    first = next(iter(attacks.values()))
    eventually(
        lambda: "only the annotation" in _refused(lambda: patch(first)),
        what="the policy enforced",
    )
    for what, body in attacks.items():
        assert "only the annotation" in _refused(lambda b=body: patch(b)), what  # type: ignore[misc]
    patch(request, dry_run=False)  # the rotation request itself: allowed
    stored = custom.get_namespaced_custom_object(
        "securekeys.io", "v1alpha1", namespace, "apikeys", "k"
    )
    assert stored["metadata"]["annotations"][mark].endswith("abc123-role")
    assert stored["metadata"]["annotations"]["keep"] == "me"
    # Now a request is pending: a second one is refused, and so is cancelling it.
    second = annotations({mark: "2026-12-07T00:00:09Z-def456-role"})
    assert "already requested" in _refused(lambda: patch(second))
    assert "only the annotation" in _refused(lambda: patch(annotations({mark: None})))
