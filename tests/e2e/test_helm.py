"""``helm install secure-keys``: the controller and the gateway as pods the chart created.

On the local cluster (one node, no pod network and no Service routing yet), the chart is
installed with the values such a cluster needs, and only those:

* ``gateway.hostNetwork`` and ``controller.hostNetwork``: there is no pod network;
* ``webhook.url``, ``gateway.brokerUrl`` and ``certificates.ipAddresses``: the API
  server and the key containers reach the gateway on the node's loopback, as there is no
  Service routing;
* ``KUBERNETES_SERVICE_HOST/PORT`` in ``extraEnv``: the pods reach the API server on the
  loopback too (the ``kubernetes`` Service's address is not routed);
* ``gateway.replicas=1``, ``gateway.updateStrategy`` without a surge, and free ports:
  two host-network replicas on one node would share a port (so a gateway restart here
  has a moment without a replica, and admissions in it are refused and retried);
* ``gateway.extraArgs``: a 72 s CA overlap, so that a CA rotation on demand completes
  within the test;
* ``controller.namespaces`` and ``webhook.namespaceLabels``: the session's own controller
  and gateways share this cluster, so this release acts only on its test namespace (a
  ``crash-*`` one, which the session's controller leaves alone);
* ``crds.enabled=false``: the session installed the CRDs (the chart's CRD templates are
  checked in tests/unit/dev/test_chart.py); ``image.pullPolicy=Never``: the project image
  is imported into the node.

Then the user story through those pods: an ApiKey and a KeyRole applied, an opted-in pod
reads its key, a rotation arrives, an unbound pod is refused; a CA rotation on demand
fails no admission for want of trust and a pod admitted after the successor was
published keeps receiving its key; the controller and the gateway killed mid-rotation
lose nothing; ``helm uninstall`` leaves
the ApiKeys, their blobs, the controller's keys and the KMS Secret, and blocks no pod;
``helm install`` again opens every key. It prints how long the install took to every pod
Ready and to the first key delivered, and the pods' RSS.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev import chart, image
from secure_keys_dev.cluster import free_port
from secure_keys_dev.stack import GROUP, VERSION, eventually, get_apikey, request_rotation
from tests.e2e.conftest import IDLE, KEYS, PodEnvironment, Target

HELM = chart.helm_binary()
pytestmark = pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is not built (make helm)")
KEY = "payments"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    app_namespace: str
    values: Path
    installed_in: float
    """Seconds from `helm install` to every pod of the release Ready (`--wait`)."""


def _helm(kube: Target, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "HELM_CACHE_HOME": str(kube.scratch)}
    env["HELM_CONFIG_HOME"] = env["HELM_DATA_HOME"] = str(kube.scratch / "helm")
    return subprocess.run(  # noqa: S603 - our own helm, our arguments
        [str(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def _kubectl(kube: Target, *args: str) -> subprocess.CompletedProcess[str]:
    assert kube.cluster is not None
    return subprocess.run(  # noqa: S603 - our kubectl, our arguments
        [str(kube.cluster.binaries.kubectl), f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _values(kube: Target, tag: str, app_namespace: str) -> dict[str, Any]:
    assert kube.cluster is not None
    api = urlsplit(kube.cluster.server)
    port = free_port()
    reach_api = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
    ]
    repository, _, image_tag = image.PROJECT_REFERENCE.rpartition(":")
    return {
        "image": {
            "repository": repository.removeprefix("docker.io/library/"),
            "tag": image_tag,
            "pullPolicy": "Never",
        },
        "crds": {"enabled": False},
        "controller": {
            "hostNetwork": True,
            "metricsPort": free_port(),
            "namespaces": app_namespace,
            "extraEnv": reach_api,
            "logFormat": "json",
        },
        "gateway": {
            "hostNetwork": True,
            "replicas": 1,
            "port": port,
            "metricsPort": free_port(),
            "brokerUrl": f"https://127.0.0.1:{port}",
            "extraEnv": reach_api,
            # A surge replica could not bind the port on the one node.
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            # A CA rotation on demand completes in 36 s (the overlap is 72 s), and the
            # replicas pick up a new Secret within a few seconds.
            "extraArgs": [
                "--ca-overlap-hours=0.02",
                "--certs-interval=2",
                "--cert-reload-interval=1",
            ],
        },
        "certificates": {"ipAddresses": ["127.0.0.1"]},
        "webhook": {
            "url": f"https://127.0.0.1:{port}/mutate",
            "namespaceLabels": {"securekeys.io/helm-e2e": tag},
        },
    }


def _install(kube: Target, name: str, namespace: str, values: Path) -> float:
    started = time.monotonic()
    done = _helm(
        kube,
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
def release(
    kube: Target, admin_api: client.ApiClient, pods: PodEnvironment, crds: None
) -> Iterator[Release]:
    del pods, crds  # a node that runs pods, and the CRDs, are needed
    tag = secrets.token_hex(4)
    # crash-*: a namespace the session's own controller leaves alone.
    namespace, app_namespace = f"sk-helm-{tag}", f"crash-helm-{tag}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(
        {"metadata": {"name": app_namespace, "labels": {"securekeys.io/helm-e2e": tag}}}
    )
    for account in ("app", "stranger"):
        core.create_namespaced_service_account(app_namespace, {"metadata": {"name": account}})
    values = kube.scratch / f"helm-{tag}.yaml"
    values.write_text(yaml.safe_dump(_values(kube, tag, app_namespace)))
    name = f"sk-{tag}"
    installed_in = _install(kube, name, namespace, values)
    try:
        yield Release(name, namespace, app_namespace, values, installed_in)
    finally:
        _helm(kube, "uninstall", name, "--namespace", namespace, "--wait")
        core.delete_namespace(app_namespace)
        core.delete_namespace(namespace)


def _apply_key_and_role(admin_api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(admin_api)
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
            "hostNetwork": True,
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


def _create_pod(
    core: client.CoreV1Api,
    namespace: str,
    body: dict[str, Any],
    failures: list[str] | None = None,
) -> Any:
    """Create the pod, retrying while the webhook cannot answer (its caches not synced, the
    caBundle not written yet, the one host-network replica restarting); each failed
    attempt's message goes to ``failures``."""
    seen = failures if failures is not None else []

    def attempt() -> Any:
        try:
            return core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            seen.append(str(exc.body)[:300])
            if exc.status in (500, 503) or "not synced" in str(exc.body):
                return None
            raise

    return eventually(attempt, 90, f"pod {body['metadata']['name']} admitted ({seen[-1:]})")


def _read_key(kube: Target, namespace: str, pod: str, timeout: float = 90) -> str:
    def read() -> str | None:
        done = _kubectl(
            kube, "exec", "-n", namespace, pod, "-c", "app", "--", "cat", f"{KEYS}/{KEY}"
        )
        return done.stdout if done.returncode == 0 and done.stdout else None

    return eventually(read, timeout, f"{pod} reads {KEY}")


def _rss_mib(kube: Target, namespace: str, component: str) -> float:
    listed = _kubectl(
        kube,
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/component={component}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    )
    status = _kubectl(kube, "exec", "-n", namespace, listed.stdout, "--", "cat", "/proc/1/status")
    line = next(x for x in status.stdout.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_the_user_story_through_the_pods_the_chart_created(
    kube: Target, admin_api: client.ApiClient, release: Release
) -> None:
    core = client.CoreV1Api(admin_api)
    ns = release.app_namespace
    started = time.monotonic()
    _apply_key_and_role(admin_api, ns)
    eventually(
        lambda: (get_apikey(admin_api, ns, KEY).get("status") or {}).get("currentVersion"),
        120,
        "the chart's controller sealed the key",
    )
    created = _create_pod(core, ns, _pod("reader", "app"))
    assert "securekeys.io/injected" in (created.metadata.annotations or {})
    first = _read_key(kube, ns, "reader")
    first_key_s = time.monotonic() - started
    assert len(first.strip()) >= 40

    request_rotation(admin_api, ns, KEY)
    eventually(
        lambda: (r := _read_key(kube, ns, "reader")) != first and r,
        120,
        "the rotation arrives in the running pod",
    )

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(ns, _pod("intruder", "stranger"))
    assert refused.value.status == 403
    assert "secure-keys" in str(refused.value.body)

    gateway_rss = _rss_mib(kube, release.namespace, "gateway")
    controller_rss = _rss_mib(kube, release.namespace, "controller")
    print(
        f"\nhelm install to every pod Ready: {release.installed_in:.1f} s; ApiKey applied to "
        f"its first key read in a pod: {first_key_s:.1f} s; RSS gateway {gateway_rss:.0f} MiB, "
        f"controller {controller_rss:.0f} MiB"
    )


def _secret_cas(core: client.CoreV1Api, release: Release) -> tuple[str, str]:
    """The TLS Secret's signing CA and successor (PEM, base64; "" when none)."""
    data = core.read_namespaced_secret(
        f"{release.name}-secure-keys-gateway-tls", release.namespace
    ).data
    return data["ca.crt"], data.get("next.crt", "")


def _gateway_rolled(kube: Target, release: Release) -> bool:
    done = _kubectl(
        kube,
        "rollout",
        "status",
        "-n",
        release.namespace,
        f"deployment/{release.name}-secure-keys-gateway",
        "--timeout=5s",
    )
    return done.returncode == 0


def test_a_ca_rotation_on_demand_breaks_no_admission_for_want_of_trust(
    kube: Target, admin_api: client.ApiClient, release: Release
) -> None:
    core = client.CoreV1Api(admin_api)
    ns = release.app_namespace
    old_ca, _ = _secret_cas(core, release)
    failures: list[str] = []

    def admit(name: str) -> Any:
        return _create_pod(core, ns, _pod(name, "app"), failures)

    core.patch_namespaced_secret(
        f"{release.name}-secure-keys-gateway-tls",
        release.namespace,
        {"metadata": {"annotations": {"securekeys.io/rotate-ca": secrets.token_hex(4)}}},
    )
    successor = eventually(lambda: _secret_cas(core, release)[1], 60, "a successor published")
    # The bundle changed: the gateway restarts so that it injects both CAs.
    eventually(lambda: _gateway_rolled(kube, release), 180, "the gateway restarted")
    fresh = admit("fresh")
    assert fresh.metadata.annotations["securekeys.io/gateway-ca"].count("BEGIN CERT") == 2
    before = _read_key(kube, ns, "fresh")
    eventually(lambda: _secret_cas(core, release)[0] == successor, 90, "the successor signs")
    time.sleep(5)  # every replica has read the Secret and serves the new pair
    admit("after-switch")
    request_rotation(admin_api, ns, KEY)
    eventually(
        lambda: (r := _read_key(kube, ns, "fresh")) != before and r,
        120,
        "a rotation reaches the pod admitted between the two steps",
    )
    assert _secret_cas(core, release)[0] != old_ca
    # Refusals while the one replica restarted are this cluster's (connection refused);
    # none may come from a certificate the API server did not trust.
    assert [f for f in failures if "x509" in f or "certificate" in f] == []


def test_killing_the_controller_and_the_gateway_mid_rotation_loses_nothing(
    kube: Target, admin_api: client.ApiClient, release: Release
) -> None:
    core = client.CoreV1Api(admin_api)
    ns = release.app_namespace
    before = _read_key(kube, ns, "fresh")
    version = get_apikey(admin_api, ns, KEY)["status"]["currentVersion"]
    request_rotation(admin_api, ns, KEY)
    for component in ("controller", "gateway"):
        for pod in core.list_namespaced_pod(
            release.namespace, label_selector=f"app.kubernetes.io/component={component}"
        ).items:
            core.delete_namespaced_pod(pod.metadata.name, release.namespace, grace_period_seconds=0)
    eventually(
        lambda: get_apikey(admin_api, ns, KEY)["status"]["currentVersion"] > version,
        180,
        "the rotation finished by the replacement controller",
    )
    eventually(
        lambda: (r := _read_key(kube, ns, "fresh")) != before and r,
        180,
        "the rotated key reaches the running pod through the replacement gateway",
    )


def test_uninstall_keeps_every_key_and_blocks_no_pod_and_a_reinstall_opens_them(
    kube: Target, admin_api: client.ApiClient, release: Release
) -> None:
    core = client.CoreV1Api(admin_api)
    ns = release.app_namespace
    # "fresh" trusts the gateway's current CA (it was admitted during the CA rotation).
    before = _read_key(kube, ns, "fresh")
    done = _helm(kube, "uninstall", release.name, "--namespace", release.namespace, "--wait")
    assert done.returncode == 0, done.stderr
    admission = client.AdmissionregistrationV1Api(admin_api)
    hooks = [h.metadata.name for h in admission.list_mutating_webhook_configuration().items]
    assert not any(h.startswith(release.name) for h in hooks)
    # Nothing blocks an opted-in pod now: it is admitted as it is (no key container).
    plain = core.create_namespaced_pod(ns, _pod("after-uninstall", "app"))
    assert "securekeys.io/injected" not in (plain.metadata.annotations or {})
    # What opens the keys stays: the ApiKey, its blob, the controller's keys, the KMS Secret.
    assert get_apikey(admin_api, ns, KEY)["status"]["currentVersion"] >= 2
    core.read_namespaced_secret(f"{KEY}.sealed", ns)
    core.read_namespaced_secret("secure-keys-controller-keys", release.namespace)
    core.read_namespaced_secret(f"{release.name}-secure-keys-kms-local", release.namespace)

    _install(kube, release.name, release.namespace, release.values)
    _create_pod(core, ns, _pod("reader-again", "app"))
    assert _read_key(kube, ns, "reader-again") == before
