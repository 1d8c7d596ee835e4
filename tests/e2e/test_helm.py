"""``helm install secure-keys`` with its defaults: the controller and the gateway as pods
the chart created, on a cluster with a pod network.

On the local cluster the module starts a cluster of its own with ``pod_network=True``
(the session's cluster keeps host networking for the other modules); on a cluster given
by kubeconfig (kind, for example) it uses that one. The chart runs as on EKS, GKE or kind:
two gateway replicas behind their ClusterIP Service, the webhook called through
``clientConfig.service``, the key broker reached by its DNS name, the controller talking
to the ``kubernetes`` Service, nothing in the host's network, the chart's own CRDs.
Only these values are set, none of them about the network:

* ``image``: the project image ``secure-keys:dev``, imported into the node (``kind
  load`` on kind), with ``pullPolicy: Never``, as there is no registry;
* ``gateway.extraArgs``: a 72 s CA overlap, so that a CA rotation on demand completes
  within the test (a timing knob of the test, not of the cluster).

Then the user story through those pods: an ApiKey and a KeyRole applied, an opted-in pod
reads its key, a rotation arrives, an unbound pod is refused; ``helm upgrade`` with a
changed value while opted-in pods are created in a loop and a rotation runs refuses no
admission, loses no key, and rolls the gateway one replica at a time; a CA rotation on
demand fails no admission; the controller and the gateway killed mid-rotation lose
nothing; ``helm uninstall`` leaves the ApiKeys, their blobs, the controller's keys and
the KMS Secret, and blocks no pod; ``helm install`` again opens every key. It prints how
long the install took to every pod Ready and to the first key delivered, and the pods'
RSS. (The host-network values, ``webhook.url`` and ``gateway.hostNetwork``, are checked
as rendered by the helm-unittest suites in ``charts/secure-keys/tests/``.)
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev import access, chart, image
from secure_keys_dev.cluster import Binaries, LocalCluster
from secure_keys_dev.node import NodeUnavailable
from secure_keys_dev.stack import GROUP, VERSION, eventually, get_apikey, request_rotation
from tests.e2e.conftest import IDLE, KEYS, Target

HELM = chart.helm_binary()
pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is not built (make helm)")
KEY = "payments"
APP_NAMESPACE = "helm-app"
LOAD = 24
"""Opted-in pods created during the upgrade."""


@dataclass(frozen=True)
class Cluster:
    """The cluster the chart is installed on, and how to act on it."""

    kubeconfig: Path
    kubectl: str
    scratch: Path
    api: client.ApiClient


@dataclass
class Release:
    name: str
    namespace: str
    app_namespace: str
    values: Path
    installed_in: float
    """Seconds from `helm install` to every pod of the release Ready (`--wait`)."""
    pods_created: list[str] = field(default_factory=list)
    """Opted-in pods admitted so far, each of which must keep reading its key."""


def _helm(cluster: Cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    env["HELM_CACHE_HOME"] = env["HELM_CONFIG_HOME"] = env["HELM_DATA_HOME"] = str(
        cluster.scratch / "helm"
    )
    return subprocess.run(  # noqa: S603 - our own helm, our arguments
        [str(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def _kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [cluster.kubectl, f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _values() -> dict[str, Any]:
    """The chart's defaults, but for the image (no registry) and a short CA overlap."""
    repository, _, image_tag = image.PROJECT_REFERENCE.rpartition(":")
    return {
        "image": {
            "repository": repository.removeprefix("docker.io/library/"),
            "tag": image_tag,
            "pullPolicy": "Never",
        },
        "gateway": {
            # A CA rotation on demand completes in 36 s (the overlap is 72 s), and the
            # replicas pick up a new Secret within a few seconds.
            "extraArgs": [
                "--ca-overlap-hours=0.02",
                "--certs-interval=2",
                "--cert-reload-interval=1",
            ],
        },
    }


def _install(cluster: Cluster, name: str, namespace: str, values: Path) -> float:
    started = time.monotonic()
    done = _helm(
        cluster,
        "install",
        name,
        str(chart.CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--values",
        str(values),
        "--wait",
        "--timeout",
        "5m",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster(kube: Target) -> Iterator[Cluster]:
    """A local cluster of the module's own with a pod network, or the given cluster."""
    if kube.cluster is None:
        kubectl = shutil.which("kubectl") or str(Binaries.find().kubectl)
        with kube.admin() as api:
            yield Cluster(kube.kubeconfig, kubectl, kube.scratch, api)
        return
    if kube.cluster.node is None:
        pytest.skip(kube.no_pods_because or "the chart's pods need the local node")
    try:
        local = LocalCluster(
            binaries=kube.cluster.binaries,
            pod_network=True,
            startup_timeout=180,
            **kube.node_settings,
        )
    except NodeUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    with local, access.api_client(local.kubeconfig) as api:
        yield Cluster(local.kubeconfig, str(local.binaries.kubectl), kube.scratch, api)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    tag = secrets.token_hex(4)
    namespace = f"sk-helm-{tag}"
    values = cluster.scratch / f"helm-{tag}.yaml"
    values.write_text(yaml.safe_dump(_values()))
    name = f"sk-{tag}"
    installed_in = _install(cluster, name, namespace, values)
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": APP_NAMESPACE}})
    for account in ("app", "stranger"):
        core.create_namespaced_service_account(APP_NAMESPACE, {"metadata": {"name": account}})
    try:
        yield Release(name, namespace, APP_NAMESPACE, values, installed_in)
    finally:
        _helm(cluster, "uninstall", name, "--namespace", namespace, "--wait")
        core.delete_namespace(APP_NAMESPACE)
        core.delete_namespace(namespace)


def _apply_key_and_role(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "apikeys",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiKey",
            "metadata": {"name": KEY},
            "spec": {"source": {"generate": {"length": 40}}},
        },
    )
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "keyroles",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KeyRole",
            "metadata": {"name": "payments-readers"},
            "spec": {
                "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                "keys": {"names": [KEY]},
            },
        },
    )


def _pod(name: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"securekeys.io/inject": "true"},
            "annotations": {"securekeys.io/keys": KEY},
        },
        "spec": {
            "serviceAccountName": account,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "app",
                    "image": image.BUSYBOX_REFERENCE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", IDLE],
                }
            ],
        },
    }


def _create_pod(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> Any:
    """Create the pod, retrying only while the webhook's caBundle is not written yet (the
    first seconds after an install); any other refusal fails the test."""

    def attempt() -> Any:
        try:
            return core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if "x509" in str(exc.body) and "unknown authority" in str(exc.body):
                return None
            raise

    return eventually(attempt, 60, f"pod {body['metadata']['name']} admitted")


def _read_key(cluster: Cluster, namespace: str, pod: str, timeout: float = 90) -> str:
    def read() -> str | None:
        done = _kubectl(
            cluster, "exec", "-n", namespace, pod, "-c", "app", "--", "cat", f"{KEYS}/{KEY}"
        )
        return done.stdout if done.returncode == 0 and done.stdout else None

    return eventually(read, timeout, f"{pod} reads {KEY}")


def _rss_mib(cluster: Cluster, namespace: str, component: str) -> list[float]:
    listed = _kubectl(
        cluster,
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/component={component}",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    )
    sizes = []
    for pod in listed.stdout.split():
        status = _kubectl(cluster, "exec", "-n", namespace, pod, "--", "cat", "/proc/1/status")
        line = next(x for x in status.stdout.splitlines() if x.startswith("VmRSS:"))
        sizes.append(int(line.split()[1]) / 1024)
    return sizes


def test_the_chart_runs_with_its_defaults_on_a_pod_network(
    cluster: Cluster, release: Release
) -> None:
    core = client.CoreV1Api(cluster.api)
    apps = client.AppsV1Api(cluster.api)
    gateway = apps.read_namespaced_deployment(
        f"{release.name}-secure-keys-gateway", release.namespace
    )
    assert gateway.status.ready_replicas == 2
    hook = client.AdmissionregistrationV1Api(cluster.api).read_mutating_webhook_configuration(
        f"{release.name}-secure-keys-gateway"
    )
    assert hook.webhooks[0].client_config.url is None
    assert hook.webhooks[0].client_config.service.name == f"{release.name}-secure-keys-gateway"
    for pod in core.list_namespaced_pod(release.namespace).items:
        assert not pod.spec.host_network
        env = {e.name for c in pod.spec.containers for e in c.env or ()}
        assert "KUBERNETES_SERVICE_HOST" not in env  # the kubelet's, i.e. the Service's


def test_the_user_story_through_the_pods_the_chart_created(
    cluster: Cluster, release: Release
) -> None:
    core = client.CoreV1Api(cluster.api)
    ns = release.app_namespace
    started = time.monotonic()
    _apply_key_and_role(cluster.api, ns)
    eventually(
        lambda: (get_apikey(cluster.api, ns, KEY).get("status") or {}).get("currentVersion"),
        120,
        "the chart's controller sealed the key",
    )
    created = _create_pod(core, ns, _pod("reader", "app"))
    release.pods_created.append("reader")
    assert "securekeys.io/injected" in (created.metadata.annotations or {})
    # The key container reaches the broker by the Service's DNS name.
    broker = next(
        e.value
        for c in [*(created.spec.init_containers or ()), *created.spec.containers]
        for e in c.env or ()
        if e.value and e.value.startswith("https://")
    )
    assert broker.startswith(f"https://{release.name}-secure-keys-gateway.{release.namespace}.svc")
    first = _read_key(cluster, ns, "reader")
    first_key_s = time.monotonic() - started
    assert len(first.strip()) >= 40

    request_rotation(cluster.api, ns, KEY)
    eventually(
        lambda: (r := _read_key(cluster, ns, "reader")) != first and r,
        120,
        "the rotation arrives in the running pod",
    )

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(ns, _pod("intruder", "stranger"))
    assert refused.value.status == 403
    assert "secure-keys" in str(refused.value.body)

    gateway_rss = _rss_mib(cluster, release.namespace, "gateway")
    controller_rss = _rss_mib(cluster, release.namespace, "controller")
    print(
        f"\nhelm install (defaults, pod network) to every pod Ready: "
        f"{release.installed_in:.1f} s; ApiKey applied to its first key read in a pod: "
        f"{first_key_s:.1f} s; RSS gateways {[round(r) for r in gateway_rss]} MiB, "
        f"controller {[round(r) for r in controller_rss]} MiB"
    )


def _gateway_pods(core: client.CoreV1Api, release: Release) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = core.list_namespaced_pod(
        release.namespace, label_selector="app.kubernetes.io/component=gateway"
    ).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def test_an_upgrade_under_load_refuses_no_admission_and_loses_no_key(
    cluster: Cluster, release: Release
) -> None:
    core = client.CoreV1Api(cluster.api)
    ns = release.app_namespace
    before = _read_key(cluster, ns, "reader")
    version = get_apikey(cluster.api, ns, KEY)["status"]["currentVersion"]
    old_pods = {p.metadata.name for p in _gateway_pods(core, release)}
    refused: list[str] = []
    created: list[str] = []
    seen: list[tuple[int, int]] = []  # (gateway pods not terminating, of them Ready)
    upgrading = threading.Event()
    upgrading.set()

    def create_in_a_loop() -> None:
        # At most LOAD pods: each starts a key container on the one node.
        while upgrading.is_set() and len(created) + len(refused) < LOAD:
            name = f"during-{len(created) + len(refused)}"
            try:
                core.create_namespaced_pod(ns, _pod(name, "app"))
                created.append(name)
            except ApiException as exc:
                refused.append(f"{exc.status}: {str(exc.body)[:200]}")
            time.sleep(1.0)

    def watch_the_gateway() -> None:
        while upgrading.is_set():
            pods = _gateway_pods(core, release)
            seen.append((len(pods), sum(_ready(p) for p in pods)))
            time.sleep(0.2)

    workers = [
        threading.Thread(target=create_in_a_loop),
        threading.Thread(target=watch_the_gateway),
    ]
    for worker in workers:
        worker.start()
    try:
        request_rotation(cluster.api, ns, KEY)
        done = _helm(
            cluster,
            "upgrade",
            release.name,
            str(chart.CHART),
            "--namespace",
            release.namespace,
            "--values",
            str(release.values),
            "--set",
            "gateway.heartbeatSeconds=7",
            "--wait",
            "--timeout",
            "8m",
        )
        state = _kubectl(cluster, "get", "pods,replicasets", "-n", release.namespace, "-o", "wide")
        assert done.returncode == 0, done.stderr[-2000:] + state.stdout
    finally:
        upgrading.clear()
        for worker in workers:
            worker.join()
    print(
        f"\nhelm upgrade under load: {len(created)} opted-in pods admitted, "
        f"{len(refused)} refused; gateway pods (not terminating, Ready) seen: "
        f"{sorted(set(seen))}"
    )
    assert refused == []
    assert created
    # Every replica was replaced, one at a time: never fewer than 2 Ready, never more
    # than 3 pods (maxUnavailable 0, maxSurge 1).
    assert not old_pods & {p.metadata.name for p in _gateway_pods(core, release)}
    assert all(ready >= 2 and count <= 3 for count, ready in seen), seen
    # The rotation finished, reached the running pod, and every pod admitted during the
    # upgrade reads the current key.
    eventually(
        lambda: get_apikey(cluster.api, ns, KEY)["status"]["currentVersion"] > version,
        120,
        "the rotation finished",
    )
    current = eventually(
        lambda: (r := _read_key(cluster, ns, "reader")) != before and r,
        120,
        "the rotation reaches the pod that ran through the upgrade",
    )

    def reads_current(pod: str) -> bool:
        return _read_key(cluster, ns, pod, 180) == current

    for name in created:
        eventually(functools.partial(reads_current, name), 60, f"{name} reads the current key")
    for name in created:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


def _secret_cas(core: client.CoreV1Api, release: Release) -> tuple[str, str]:
    """The TLS Secret's signing CA and successor (PEM, base64; "" when none)."""
    data = core.read_namespaced_secret(
        f"{release.name}-secure-keys-gateway-tls", release.namespace
    ).data
    return data["ca.crt"], data.get("next.crt", "")


def _gateway_rolled(cluster: Cluster, release: Release) -> bool:
    done = _kubectl(
        cluster,
        "rollout",
        "status",
        "-n",
        release.namespace,
        f"deployment/{release.name}-secure-keys-gateway",
        "--timeout=5s",
    )
    return done.returncode == 0


def test_a_ca_rotation_on_demand_refuses_no_admission(cluster: Cluster, release: Release) -> None:
    core = client.CoreV1Api(cluster.api)
    ns = release.app_namespace
    old_ca, _ = _secret_cas(core, release)
    core.patch_namespaced_secret(
        f"{release.name}-secure-keys-gateway-tls",
        release.namespace,
        {"metadata": {"annotations": {"securekeys.io/rotate-ca": secrets.token_hex(4)}}},
    )
    successor = eventually(lambda: _secret_cas(core, release)[1], 60, "a successor published")
    # The bundle changed: the gateway restarts, one replica at a time, so that it injects
    # both CAs; an admission in the meantime is answered by a replica that is Ready.
    core.create_namespaced_pod(ns, _pod("while-rolling", "app"))
    eventually(lambda: _gateway_rolled(cluster, release), 180, "the gateway restarted")
    fresh = core.create_namespaced_pod(ns, _pod("fresh", "app"))
    assert fresh.metadata.annotations["securekeys.io/gateway-ca"].count("BEGIN CERT") == 2
    before = _read_key(cluster, ns, "fresh")
    eventually(lambda: _secret_cas(core, release)[0] == successor, 90, "the successor signs")
    time.sleep(5)  # every replica has read the Secret and serves the new pair
    core.create_namespaced_pod(ns, _pod("after-switch", "app"))
    request_rotation(cluster.api, ns, KEY)
    eventually(
        lambda: (r := _read_key(cluster, ns, "fresh")) != before and r,
        120,
        "a rotation reaches the pod admitted between the two steps",
    )
    assert _read_key(cluster, ns, "after-switch") == _read_key(cluster, ns, "fresh")
    assert _secret_cas(core, release)[0] != old_ca


def test_killing_the_controller_and_the_gateway_mid_rotation_loses_nothing(
    cluster: Cluster, release: Release
) -> None:
    core = client.CoreV1Api(cluster.api)
    ns = release.app_namespace
    before = _read_key(cluster, ns, "fresh")
    version = get_apikey(cluster.api, ns, KEY)["status"]["currentVersion"]
    request_rotation(cluster.api, ns, KEY)
    for component in ("controller", "gateway"):
        for pod in core.list_namespaced_pod(
            release.namespace, label_selector=f"app.kubernetes.io/component={component}"
        ).items:
            core.delete_namespaced_pod(pod.metadata.name, release.namespace, grace_period_seconds=0)
    eventually(
        lambda: get_apikey(cluster.api, ns, KEY)["status"]["currentVersion"] > version,
        180,
        "the rotation finished by the replacement controller",
    )
    eventually(
        lambda: (r := _read_key(cluster, ns, "fresh")) != before and r,
        180,
        "the rotated key reaches the running pod through the replacement gateway",
    )
    # The killed gateways could not withdraw their rollout entries: the replacements
    # remove every entry whose id is not a live gateway pod (docs/rollout.md, "Replica
    # death"), an entry forged by whoever may patch apikeys/status too.
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "apikeys", KEY,
        {"status": {"rollout": {"replicas": {"forged-gateway": {
            "version": version + 1, "connected": 9, "current": 9, "behind": [],
        }}}}},
    )  # fmt: skip

    def only_live_replicas() -> set[str] | None:
        live = {p.metadata.name for p in _gateway_pods(core, release)}
        rollout = get_apikey(cluster.api, ns, KEY)["status"].get("rollout") or {}
        entries = set(rollout.get("replicas") or {})
        return entries if entries and entries <= live else None

    eventually(only_live_replicas, 120, "only live gateway replicas have rollout entries")


def test_uninstall_keeps_every_key_and_blocks_no_pod_and_a_reinstall_opens_them(
    cluster: Cluster, release: Release
) -> None:
    core = client.CoreV1Api(cluster.api)
    ns = release.app_namespace
    # "fresh" trusts the gateway's current CA (it was admitted during the CA rotation).
    before = _read_key(cluster, ns, "fresh")
    done = _helm(cluster, "uninstall", release.name, "--namespace", release.namespace, "--wait")
    assert done.returncode == 0, done.stderr
    admission = client.AdmissionregistrationV1Api(cluster.api)
    hooks = [h.metadata.name for h in admission.list_mutating_webhook_configuration().items]
    assert not any(h.startswith(release.name) for h in hooks)
    # Nothing blocks an opted-in pod now: it is admitted as it is (no key container).
    plain = core.create_namespaced_pod(ns, _pod("after-uninstall", "app"))
    assert "securekeys.io/injected" not in (plain.metadata.annotations or {})
    # What opens the keys stays: the CRDs and ApiKeys, the blob, the controller's keys
    # and the KMS Secret.
    assert get_apikey(cluster.api, ns, KEY)["status"]["currentVersion"] >= 2
    core.read_namespaced_secret(f"{KEY}.sealed", ns)
    core.read_namespaced_secret("secure-keys-controller-keys", release.namespace)
    core.read_namespaced_secret(f"{release.name}-secure-keys-kms-local", release.namespace)

    _install(cluster, release.name, release.namespace, release.values)
    _create_pod(core, ns, _pod("reader-again", "app"))
    assert _read_key(cluster, ns, "reader-again") == before
