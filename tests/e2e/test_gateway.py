"""The gateway's webhook, called by the real API server over TLS.

The gateway runs as a subprocess under deploy/gateway-rbac.yaml (an unprivileged user
bound to exactly that ClusterRole), and deploy/gateway-webhook.yaml is registered with
a ``clientConfig.url`` (the local cluster has no Service network) and the caBundle of a
CA made for the run. Every assertion reads what the API server stored or refused.

Pods that are only inspected carry a nodeSelector no node matches, so they stay Pending
even when the cluster has a node; the one test that runs a pod uses the ``pods`` fixture.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev.cluster import free_port
from secure_keys_dev.stack import (
    CONTROLLER_NAMESPACE,
    GROUP,
    VERSION,
    GatewayProcess,
    bind_gateway_identity,
    ensure_namespace,
    eventually,
    register_gateway_webhook,
    write_gateway_tls,
)
from tests.e2e.conftest import PodEnvironment, Target

WEBHOOK = "secure-keys-gateway-e2e"
NOWHERE = {"securekeys.io/e2e": "no-such-node"}
KEYS_PATH = "/var/run/secrets/securekeys"
# A stand-in for the sidecar of the next issue: after a delay, writes each requested
# file (atomically) where the startupProbe looks, then idles until told to stop.
PLACEHOLDER = (
    "sleep 2; IFS=,; for f in $SECUREKEYS_FILES; do "
    'echo "placeholder for $f" > "$SECUREKEYS_DIR/.$f" && mv "$SECUREKEYS_DIR/.$f" '
    '"$SECUREKEYS_DIR/$f"; done; trap "exit 0" TERM; while true; do sleep 1; done'
)


@dataclass
class Gateway:
    process: GatewayProcess
    ca_pem: bytes

    def restart(self, *extra_args: str) -> None:
        self.process.stop()
        self.process.extra_args = extra_args
        self.process.start()


def _probe_namespace_denies(core: client.CoreV1Api, namespace: str, seen: list[str]) -> bool:
    """Whether the webhook is in the admission chain yet (a pod naming no key is denied)."""
    body = _pod("probe", {"securekeys.io/keys": "nope"}, service_account="default")
    try:
        core.create_namespaced_pod(namespace, body)
    except ApiException as exc:
        seen.append(str(exc.body))
        return "inject.securekeys.io" in exc.body
    core.delete_namespaced_pod("probe", namespace)
    return False


@pytest.fixture(scope="module")
def gateway(
    kube: Target,
    admin_api: client.ApiClient,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    if kube.callback_host is None:
        pytest.skip("set SECUREKEYS_E2E_CALLBACK_HOST to an address the API server can reach")
    ensure_namespace(admin_api, CONTROLLER_NAMESPACE)
    user = "securekeys-e2e-gateway"
    bind_gateway_identity(admin_api, user)
    work = tmp_path_factory.mktemp("gateway")
    ca_pem = write_gateway_tls(work / "tls", kube.callback_host)
    process = GatewayProcess(
        kube.user_kubeconfig(user),
        work / "tls",
        work / "gateway.log",
        port=free_port(),
        host=kube.callback_host,
    )
    process.start()
    admission = client.AdmissionregistrationV1Api(admin_api)
    core = client.CoreV1Api(admin_api)
    probe = f"e2e-gw-probe-{secrets.token_hex(3)}"
    try:
        register_gateway_webhook(admin_api, process.url, ca_pem, name=WEBHOOK)
        ensure_namespace(admin_api, probe)
        seen: list[str] = []
        eventually(
            lambda: _probe_namespace_denies(core, probe, seen),
            what=f"the gateway webhook to be called (last: {seen[-1:]})",
        )
        yield Gateway(process, ca_pem)
    finally:
        admission.delete_mutating_webhook_configuration(WEBHOOK)
        core.delete_namespace(probe)
        process.stop()


# -- helpers ---------------------------------------------------------------------------


def _pod(
    name: str,
    annotations: dict[str, str],
    *,
    labels: dict[str, str] | None = None,
    service_account: str = "app",
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "nodeSelector": NOWHERE,
        "containers": containers or [{"name": "app", "image": "example.invalid/app"}],
    }
    if init_containers is not None:
        spec["initContainers"] = init_containers
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"securekeys.io/inject": "true"} if labels is None else labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def _apikey(api: client.ApiClient, namespace: str, name: str, **delivery: str) -> None:
    spec: dict[str, Any] = {"source": {"generate": {"length": 32}}}
    if delivery:
        spec["delivery"] = delivery
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "apikeys",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiKey",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def _keyrole(
    api: client.ApiClient,
    namespace: str,
    name: str,
    keys: list[str],
    *,
    subjects: list[dict[str, str]] | None = None,
    permissions: list[str] | None = None,
) -> None:
    spec: dict[str, Any] = {
        "subjects": subjects or [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": keys},
    }
    if permissions is not None:
        spec["permissions"] = permissions
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "keyroles",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KeyRole",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def _service_account(api: client.ApiClient, namespace: str, name: str = "app") -> None:
    client.CoreV1Api(api).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )


def _bound(api: client.ApiClient, namespace: str) -> None:
    """ServiceAccount app may read stripe-live and internal-billing (file billing.env)."""
    _service_account(api, namespace)
    _apikey(api, namespace, "stripe-live")
    _apikey(api, namespace, "internal-billing", fileName="billing.env")
    _keyrole(api, namespace, "app-keys", ["stripe-live", "internal-billing"])


def _create(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create, retrying while the gateway's caches have not seen this test's objects yet
    (a denial naming a missing key or ServiceAccount); return the stored pod as JSON."""

    def attempt() -> dict[str, Any] | None:
        try:
            core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if exc.status == 403 and "secure-keys:" in exc.body:
                return None
            raise
        return _stored(core, namespace, body["metadata"]["name"])

    return eventually(attempt, timeout=15, what=f"pod {body['metadata']['name']} admitted")


def _stored(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    response = core.read_namespaced_pod(name, namespace, _preload_content=False)
    document: dict[str, Any] = json.loads(response.data)
    return document


def _denied(core: client.CoreV1Api, namespace: str, body: dict[str, Any], expected: str) -> str:
    """The denial message, once it contains ``expected`` (caches converge in ms); a pod
    that is admitted instead fails the test at once."""
    seen: list[str] = []

    def attempt() -> str | None:
        try:
            core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            message = str(json.loads(exc.body)["message"])
            seen.append(message)
            return message if expected in message else None
        pytest.fail(f"pod {body['metadata']['name']} was admitted")

    try:
        return eventually(attempt, timeout=15, what=f"a denial containing {expected!r}")
    except AssertionError:
        raise AssertionError(f"denials seen: {seen[-3:]}") from None


def _by_name(items: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items or []}


SIDECAR_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
KEYS_MOUNT = {"name": "securekeys-keys", "mountPath": KEYS_PATH, "readOnly": True}


def _check_volumes(stored: dict[str, Any], size: str = "1Mi") -> None:
    volumes = _by_name(stored["spec"]["volumes"])
    ours = {n for n in volumes if n.startswith("securekeys-")}
    assert ours == {"securekeys-keys", "securekeys-token"}
    # Besides ours, only the API server's own token volume.
    assert {n for n in volumes if n not in ours} == {
        n for n in volumes if n.startswith("kube-api-access-")
    }
    assert volumes["securekeys-keys"]["emptyDir"] == {"medium": "Memory", "sizeLimit": size}
    sources = volumes["securekeys-token"]["projected"]["sources"]
    assert sources == [
        {
            "serviceAccountToken": {
                "audience": "securekeys.io",
                "expirationSeconds": 600,
                "path": "token",
            }
        }
    ]


def _check_key_container(container: dict[str, Any], *, once: bool) -> None:
    assert container["image"] == "secure-keys:dev"
    assert container["command"] == ["secure-keys-sidecar"]
    assert container.get("args", []) == (["--once"] if once else [])
    assert container["securityContext"] == SIDECAR_SECURITY
    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"cpu": "250m", "memory": "64Mi"},
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # Besides ours, only the API server's token, which the ServiceAccount admission plugin
    # adds to every container when it runs again after the webhook (docs/gateway.md).
    others = set(mounts) - {"securekeys-keys", "securekeys-token"}
    assert all(name.startswith("kube-api-access-") for name in others), others
    assert mounts["securekeys-keys"]["mountPath"] == KEYS_PATH
    assert mounts["securekeys-token"] == {
        "name": "securekeys-token",
        "mountPath": "/var/run/secrets/securekeys.io/serviceaccount",
        "readOnly": True,
    }


# -- each mode, as stored ----------------------------------------------------------------


def test_native_sidecar_is_stored_as_expected(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    core = client.CoreV1Api(admin_api)
    body = _pod(
        "native",
        {"securekeys.io/keys": "stripe-live,internal-billing"},
        containers=[
            {"name": "app", "image": "example.invalid/app"},
            {"name": "metrics", "image": "example.invalid/metrics"},
        ],
        init_containers=[{"name": "migrate", "image": "example.invalid/migrate"}],
    )
    stored = _create(core, namespace, body)
    spec = stored["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["securekeys-sidecar", "migrate"]
    assert [c["name"] for c in spec["containers"]] == ["app", "metrics"]
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    _check_key_container(sidecar, once=False)
    probe = sidecar["startupProbe"]
    assert probe["exec"]["command"][-2:] == [
        f"{KEYS_PATH}/stripe-live",
        f"{KEYS_PATH}/billing.env",
    ]
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (1, 120)
    for container in spec["containers"]:
        assert KEYS_MOUNT in container["volumeMounts"]
        assert all(m["name"] != "securekeys-token" for m in container["volumeMounts"])
    assert all(
        m["name"] != "securekeys-keys" for m in spec["initContainers"][1].get("volumeMounts", [])
    )
    _check_volumes(stored)
    assert stored["metadata"]["annotations"]["securekeys.io/injected"] == "native"


def test_classic_mode_is_an_init_container_and_a_sidecar(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    body = _pod("classic", {"securekeys.io/keys": "stripe-live", "securekeys.io/mode": "classic"})
    stored = _create(client.CoreV1Api(admin_api), namespace, body)
    spec = stored["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["securekeys-init"]
    assert [c["name"] for c in spec["containers"]] == ["app", "securekeys-sidecar"]
    init, sidecar = spec["initContainers"][0], spec["containers"][1]
    assert "restartPolicy" not in init
    assert "startupProbe" not in init
    assert "startupProbe" not in sidecar
    _check_key_container(init, once=True)
    _check_key_container(sidecar, once=False)
    assert KEYS_MOUNT in spec["containers"][0]["volumeMounts"]
    _check_volumes(stored)


def test_init_only_mode_and_pod_options(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    body = _pod(
        "init-only",
        {
            "securekeys.io/keys": "internal-billing",
            "securekeys.io/mode": "init-only",
            "securekeys.io/containers": "worker",
            "securekeys.io/mount-path": "/etc/keys",
            "securekeys.io/volume-size": "256Ki",
            "securekeys.io/sidecar-memory-limit": "96Mi",
        },
        containers=[
            {"name": "worker", "image": "example.invalid/worker"},
            {"name": "proxy", "image": "example.invalid/proxy"},
        ],
    )
    stored = _create(client.CoreV1Api(admin_api), namespace, body)
    spec = stored["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["securekeys-init"]
    assert [c["name"] for c in spec["containers"]] == ["worker", "proxy"]
    init = spec["initContainers"][0]
    assert init["args"] == ["--once"]
    assert init["resources"]["limits"]["memory"] == "96Mi"
    worker, proxy = spec["containers"]
    assert {"name": "securekeys-keys", "mountPath": "/etc/keys", "readOnly": True} in worker[
        "volumeMounts"
    ]
    assert all(m["name"] != "securekeys-keys" for m in proxy["volumeMounts"])
    _check_volumes(stored, size="256Ki")


# -- denials at CREATE -----------------------------------------------------------------


def test_unbound_service_account_is_denied_and_a_bound_one_admitted(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    _service_account(admin_api, namespace, "batch")
    core = client.CoreV1Api(admin_api)
    message = _denied(
        core,
        namespace,
        _pod("unbound", {"securekeys.io/keys": "stripe-live"}, service_account="batch"),
        'ServiceAccount "batch" may not read ApiKey "stripe-live"',
    )
    assert message.startswith('admission webhook "inject.securekeys.io" denied the request')
    assert (
        f'create a KeyRole in namespace "{namespace}" with subjects '
        "[{kind: ServiceAccount, name: batch}], keys.names [stripe-live] and permissions [read]"
    ) in message
    stored = _create(core, namespace, _pod("bound", {"securekeys.io/keys": "stripe-live"}))
    assert stored["metadata"]["annotations"]["securekeys.io/injected"] == "native"


def test_unknown_key_is_denied(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    _denied(
        client.CoreV1Api(admin_api),
        namespace,
        _pod("unknown", {"securekeys.io/keys": "stripe-live,no-such-key"}),
        f'no ApiKey "no-such-key" in namespace "{namespace}"',
    )


def test_keyrole_of_another_namespace_grants_nothing(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    other = f"{namespace}-other"
    ensure_namespace(admin_api, other)
    try:
        _service_account(admin_api, namespace)
        _apikey(admin_api, namespace, "stripe-live")
        _apikey(admin_api, other, "stripe-live")
        # In the other namespace, naming this namespace's ServiceAccount explicitly.
        _keyrole(
            admin_api,
            other,
            "cross",
            ["stripe-live"],
            subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": namespace}],
        )
        _denied(
            client.CoreV1Api(admin_api),
            namespace,
            _pod("cross", {"securekeys.io/keys": "stripe-live"}),
            'ServiceAccount "app" may not read ApiKey "stripe-live"',
        )
    finally:
        client.CoreV1Api(admin_api).delete_namespace(other)


def test_keyrole_without_read_is_denied(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _service_account(admin_api, namespace)
    _apikey(admin_api, namespace, "stripe-live")
    _keyrole(admin_api, namespace, "listers", ["stripe-live"], permissions=["list", "rotate"])
    _denied(
        client.CoreV1Api(admin_api),
        namespace,
        _pod("no-read", {"securekeys.io/keys": "stripe-live"}),
        'KeyRole "listers" covers "stripe-live" but grants only list, rotate',
    )


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, "annotation securekeys.io/keys must name at least one ApiKey"),
        (
            {"securekeys.io/keys": "stripe-live", "securekeys.io/mode": "sidecar"},
            "annotation securekeys.io/mode: 'sidecar' is not one of native, classic, init-only",
        ),
        (
            {"securekeys.io/keys": "stripe-live", "securekeys.io/key": "typo"},
            "unknown annotation 'securekeys.io/key'",
        ),
    ],
    ids=["no-keys", "bad-mode", "unknown-annotation"],
)
def test_bad_annotation_is_denied(
    gateway: Gateway,
    admin_api: client.ApiClient,
    namespace: str,
    annotations: dict[str, str],
    expected: str,
) -> None:
    _bound(admin_api, namespace)
    message = _denied(client.CoreV1Api(admin_api), namespace, _pod("bad", annotations), expected)
    assert "inject.securekeys.io" in message


# -- idempotency, controllers -------------------------------------------------------------


def test_injected_pod_sent_again_is_not_injected_twice(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    core = client.CoreV1Api(admin_api)
    first = _create(core, namespace, _pod("first", {"securekeys.io/keys": "stripe-live"}))
    # The stored pod, created again under another name: the request the webhook gets
    # already carries the injected containers, volumes and annotation.
    again: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "again",
            "labels": first["metadata"]["labels"],
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {k: v for k, v in first["spec"].items() if k != "nodeName"},
    }
    # Drop the API server's own token volume and mounts: it adds them again.
    again["spec"]["volumes"] = [
        v for v in again["spec"]["volumes"] if not v["name"].startswith("kube-api-access-")
    ]
    for container in again["spec"]["containers"] + again["spec"]["initContainers"]:
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if not m["name"].startswith("kube-api-access-")
        ]
    stored = _create(core, namespace, again)
    names = [c["name"] for c in stored["spec"]["initContainers"]]
    assert names == ["securekeys-sidecar"]
    assert [v["name"] for v in stored["spec"]["volumes"]].count("securekeys-keys") == 1
    mounts = [m["name"] for m in stored["spec"]["containers"][0]["volumeMounts"]]
    assert mounts.count("securekeys-keys") == 1
    log = gateway.process.log()
    lines = [json.loads(x) for x in log.splitlines() if '"admission"' in x]
    assert any(e["outcome"] == "unchanged" and e["namespace"] == namespace for e in lines)


def test_deployment_pods_are_injected(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    core = client.CoreV1Api(admin_api)
    labels = {"app": "web", "securekeys.io/inject": "true"}
    template = _pod("ignored", {"securekeys.io/keys": "stripe-live"}, labels=labels)
    del template["metadata"]["name"]
    client.AppsV1Api(admin_api).create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": template["metadata"], "spec": template["spec"]},
            },
        },
    )

    def injected() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return pods if len(pods) == 2 else None

    pods = eventually(injected, timeout=30, what="the ReplicaSet's two pods")
    for pod in pods:
        assert pod.metadata.annotations["securekeys.io/injected"] == "native"
        assert [c.name for c in pod.spec.init_containers] == ["securekeys-sidecar"]
        assert pod.spec.init_containers[0].restart_policy == "Always"


# -- a pod that runs (needs a node) -----------------------------------------------------


def test_injected_pod_runs_and_app_starts_after_the_probe(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str, pods: PodEnvironment
) -> None:
    gateway.restart(f"--sidecar-command={json.dumps(['/bin/sh', '-c', PLACEHOLDER])}")
    try:
        _bound(admin_api, namespace)
        core = client.CoreV1Api(admin_api)
        app_script = (
            f"for f in {KEYS_PATH}/stripe-live {KEYS_PATH}/billing.env; do "
            '[ -e "$f" ] || exit 3; cat "$f"; done; '
            'trap "exit 0" TERM; while true; do sleep 1; done'
        )
        body = _pod(
            "runs",
            {"securekeys.io/keys": "stripe-live,internal-billing"},
            containers=[
                {
                    "name": "app",
                    "image": pods.busybox_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", app_script],
                }
            ],
        )
        del body["spec"]["nodeSelector"]
        body["spec"]["hostNetwork"] = pods.host_network
        body["spec"]["terminationGracePeriodSeconds"] = 5
        created = time.monotonic()
        _create(core, namespace, body)

        def app_running() -> client.V1Pod | None:
            pod = core.read_namespaced_pod("runs", namespace)
            statuses = pod.status.container_statuses or []
            return pod if any(s.name == "app" and s.state.running for s in statuses) else None

        pod = eventually(app_running, timeout=120, what="the app container running")
        sidecar = _by_name(
            [{"name": s.name, "status": s} for s in pod.status.init_container_statuses or []]
        )["securekeys-sidecar"]["status"]
        app = _by_name([{"name": s.name, "status": s} for s in pod.status.container_statuses])[
            "app"
        ]["status"]
        assert sidecar.started is True
        assert sidecar.state.running
        assert app.restart_count == 0
        # The placeholder waits 2 s before writing: the app started no earlier than that.
        gap = (app.state.running.started_at - sidecar.state.running.started_at).total_seconds()
        assert gap >= 1.5, gap

        def printed() -> str | None:
            text: str = core.read_namespaced_pod_log("runs", namespace, container="app")
            return text if "placeholder for billing.env" in text else None

        # A running container has not necessarily printed yet: wait for its output.
        logs = eventually(printed, 20, "the app's output")
        assert "placeholder for stripe-live" in logs
        print(f"injected pod running {time.monotonic() - created:.1f} s after create")
    finally:
        gateway.restart()


# -- the gateway is down: only opted-in pods depend on it ------------------------------


def test_gateway_down_blocks_only_opted_in_pods(
    gateway: Gateway, admin_api: client.ApiClient, namespace: str
) -> None:
    _bound(admin_api, namespace)
    core = client.CoreV1Api(admin_api)
    _create(core, namespace, _pod("before", {"securekeys.io/keys": "stripe-live"}))
    gateway.process.stop()
    try:
        plain = _pod("plain", {}, labels={})
        core.create_namespaced_pod(namespace, plain)
        stored = _stored(core, namespace, "plain")
        assert "initContainers" not in stored["spec"]
        assert "securekeys.io/injected" not in (stored["metadata"].get("annotations") or {})
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(
                namespace, _pod("opted-in", {"securekeys.io/keys": "stripe-live"})
            )
        assert refused.value.status == 500
        message = json.loads(refused.value.body)["message"]
        assert 'failed calling webhook "inject.securekeys.io"' in message
    finally:
        gateway.process.start()


def test_gateway_identity_reads_no_secrets(
    kube: Target, gateway: Gateway, user_api: Callable[..., client.ApiClient]
) -> None:
    api = user_api("securekeys-e2e-gateway")
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).list_secret_for_all_namespaces()
    assert caught.value.status == 403
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).list_pod_for_all_namespaces()
    assert caught.value.status == 403
