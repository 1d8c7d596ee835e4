"""The cluster under test is a real Kubernetes control plane, not a fake.

Each test exercises a behaviour only a real API server and controller-manager
have: OpenAPI and CEL validation of a CRD, a TLS webhook call that can deny,
RBAC, audience-bound TokenReview, garbage collection and namespace teardown.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev import access, pki
from secure_keys_dev.stack import eventually
from tests.e2e.conftest import Target


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


# -- 1. CRD schemas are enforced by the API server -------------------------------------

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.securekeys.io"},
    "spec": {
        "group": "e2e.securekeys.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.min) || !has(self.max) "
                                        "|| self.min <= self.max",
                                        "message": "min must not exceed max",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widget_crd(admin_api: client.ApiClient) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(admin_api)
    name = WIDGET_CRD["metadata"]["name"]
    extensions.create_custom_resource_definition(WIDGET_CRD)

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    eventually(established, what="the CRD to be Established")
    yield
    extensions.delete_custom_resource_definition(name)


def _create_widget(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "e2e.securekeys.io",
        "v1",
        namespace,
        "widgets",
        {
            "apiVersion": "e2e.securekeys.io/v1",
            "kind": "Widget",
            "metadata": {"name": f"w-{secrets.token_hex(3)}"},
            "spec": spec,
        },
    )


@pytest.mark.usefixtures("widget_crd")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"size": 11},
            "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        ),
        (
            {"size": "big"},
            'spec.size: Invalid value: "string": spec.size in body must be of type integer',
        ),
        ({}, "spec.size: Required value"),
        ({"size": 2, "min": 5, "max": 1}, "min must not exceed max"),
    ],
)
def test_crd_schema_rejects_invalid_objects(
    admin_api: client.ApiClient, namespace: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as caught:
        _create_widget(admin_api, namespace, spec)
    assert caught.value.status == 422
    assert message in json.loads(caught.value.body)["message"]


@pytest.mark.usefixtures("widget_crd")
def test_crd_schema_accepts_valid_objects(admin_api: client.ApiClient, namespace: str) -> None:
    _create_widget(admin_api, namespace, {"size": 3, "min": 1, "max": 2})
    listed = client.CustomObjectsApi(admin_api).list_namespaced_custom_object(
        "e2e.securekeys.io", "v1", namespace, "widgets"
    )
    assert len(listed["items"]) == 1


# -- 2. The API server calls a TLS webhook that can deny ------------------------------


class WebhookServer:
    """A validating webhook in a background thread, serving TLS with a cert from `ca`."""

    def __init__(self, ca: pki.CertificateAuthority, host: str, certdir: Path) -> None:
        self.reviews: list[dict[str, Any]] = []
        pair = ca.issue_server("e2e-webhook", ips=(host,), dns_names=("localhost",))
        (certdir / "tls.crt").write_bytes(pair.cert_pem)
        (certdir / "tls.key").write_bytes(pair.key_pem)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(certdir / "tls.crt", certdir / "tls.key")
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _validate(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        name = review["request"]["object"]["metadata"]["name"]
        allowed = not name.startswith("deny-")
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": f"e2e webhook denies {name}"}
        answer = web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )
        # Say "Connection: close": a connection the server drops silently after each
        # answer can be picked from the API server's idle pool as it closes ("use of
        # closed network connection", seen once in CI).
        answer.force_close()
        return answer

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/validate", self._validate)
        # No keep-alive: the API server's connection must not outlive the test's loop.
        self._runner = web.AppRunner(app, keepalive_timeout=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self._tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    @staticmethod
    async def _shutdown(runner: web.AppRunner) -> None:
        await runner.cleanup()
        await asyncio.sleep(0.2)  # let closing transports finish before the loop closes

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(self._runner), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_validating_webhook_is_called_over_tls_and_can_deny(
    kube: Target, admin_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    if kube.callback_host is None:
        pytest.skip("set SECUREKEYS_E2E_CALLBACK_HOST to an address the API server can reach")
    ca = pki.CertificateAuthority.generate("e2e-webhook-ca")
    admission = client.AdmissionregistrationV1Api(admin_api)
    core = client.CoreV1Api(admin_api)
    with WebhookServer(ca, kube.callback_host, tmp_path) as server:
        name = f"e2e-deny-{namespace}"
        admission.create_validating_webhook_configuration(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "deny.e2e.securekeys.io",
                        "clientConfig": {
                            "url": f"https://{server.host}:{server.port}/validate",
                            "caBundle": base64.b64encode(ca.cert_pem).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        },
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 5,
                    }
                ],
            }
        )
        try:

            def create(cm: str) -> None:
                core.create_namespaced_config_map(
                    namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=cm))
                )

            # Webhook configuration reaches the API server's admission chain asynchronously.
            def denied() -> bool:
                try:
                    create(f"deny-{secrets.token_hex(3)}")
                except ApiException as exc:
                    return "e2e webhook denies" in exc.body
                return False

            eventually(denied, what="the webhook to start denying")
            create("allow-me")
            assert core.read_namespaced_config_map("allow-me", namespace).metadata.name
            names = [r["request"]["object"]["metadata"]["name"] for r in server.reviews]
            assert "allow-me" in names
            assert any(n.startswith("deny-") for n in names)
            assert all(r["request"]["namespace"] == namespace for r in server.reviews)
        finally:
            admission.delete_validating_webhook_configuration(name)


# -- 3. RBAC is enforced --------------------------------------------------------------


def test_unprivileged_user_needs_rbac_grant_to_list_secrets(
    user_api: Callable[..., client.ApiClient], admin_api: client.ApiClient, namespace: str
) -> None:
    user = f"alice-{namespace}"
    api = user_api(user, ("e2e-developers",))
    secrets_of_user = client.CoreV1Api(api)

    def list_secrets() -> Any:
        return secrets_of_user.list_namespaced_secret(namespace)

    assert status_of(list_secrets) == 403
    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "alice-reads-secrets"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "secret-reader",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )
    eventually(lambda: status_of(list_secrets) == 200, what="the RoleBinding to take effect")
    # The grant is exactly what the Role says: no writes, and nothing in other namespaces.
    assert status_of(lambda: secrets_of_user.list_namespaced_secret("default")) == 403
    assert (
        status_of(
            lambda: secrets_of_user.create_namespaced_secret(
                namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="x"))
            )
        )
        == 403
    )


def test_group_from_client_cert_is_honoured(
    user_api: Callable[..., client.ApiClient], admin_api: client.ApiClient, namespace: str
) -> None:
    group = f"readers-{namespace}"
    api = user_api(f"bob-{namespace}", (group,))
    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "readers"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        },
    )
    configmaps = client.CoreV1Api(api)
    eventually(
        lambda: status_of(lambda: configmaps.list_namespaced_config_map(namespace)) == 200,
        what="the group binding to take effect",
    )


# -- 4. Audience-bound ServiceAccount tokens ------------------------------------------


def _review(api: client.ApiClient, token: str, audiences: list[str] | None) -> Any:
    return client.AuthenticationV1Api(api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    )


def test_token_for_securekeys_audience_passes_only_that_audience(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
    )
    token = access.request_token(admin_api, namespace, "app", ["securekeys.io"], 600)

    good = _review(admin_api, token, ["securekeys.io"]).status
    assert good.authenticated is True
    assert good.user.username == f"system:serviceaccount:{namespace}:app"
    assert good.audiences == ["securekeys.io"]
    assert f"system:serviceaccounts:{namespace}" in good.user.groups

    other = _review(admin_api, token, ["vault"]).status
    assert not other.authenticated
    # With no audience named, the API server checks its own: our token is not one of them.
    assert not _review(admin_api, token, None).status.authenticated
    # A tampered signature is refused.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert not _review(admin_api, forged, ["securekeys.io"]).status.authenticated


def test_token_of_deleted_service_account_stops_authenticating(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="gone"))
    )
    token = access.request_token(admin_api, namespace, "gone", ["securekeys.io"], 600)
    assert _review(admin_api, token, ["securekeys.io"]).status.authenticated
    core.delete_namespaced_service_account("gone", namespace)
    eventually(
        lambda: not _review(admin_api, token, ["securekeys.io"]).status.authenticated,
        what="the bound token to be invalidated",
    )


# -- 5. The controller-manager: garbage collection, Deployments, namespace teardown ---


def test_deleting_an_owner_garbage_collects_what_it_owns(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="owned",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                    )
                ],
            ),
            string_data={"k": "v"},
        ),
    )
    core.delete_namespaced_config_map(
        "owner", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    eventually(
        lambda: status_of(lambda: core.read_namespaced_secret("owned", namespace)) == 404,
        what="the garbage collector to delete the owned Secret",
    )


def test_deployment_controller_creates_a_replicaset_and_pods(
    admin_api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(admin_api)
    core = client.CoreV1Api(admin_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="example.invalid/web")]
                    ),
                ),
            ),
        ),
    )
    eventually(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == 2,
        what="the ReplicaSet's pods",
    )
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    # The ServiceAccount admission plugin projected a token into each pod.
    volumes = [v for v in pods[0].spec.volumes if v.projected is not None]
    assert volumes, "no projected service-account token volume"
    apps.delete_namespaced_deployment(
        "web", namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    eventually(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=web").items,
        what="cascading deletion of the Deployment's pods",
    )


def test_namespaces_finish_deleting(admin_api: client.ApiClient) -> None:
    core = client.CoreV1Api(admin_api)
    name = f"e2e-gone-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    eventually(
        lambda: core.list_namespaced_service_account(name).items,
        what="the default ServiceAccount of the new namespace",
    )
    core.delete_namespace(name)
    eventually(
        lambda: status_of(lambda: core.read_namespace(name)) == 404,
        timeout=60,
        what="the namespace controller to finish deleting",
    )
