"""Real pods on a real kubelet: the semantics secure-keys builds on.

Native sidecars gated by a startupProbe, memory-backed emptyDir volumes, projected
ServiceAccount tokens, logs and exec through an authenticated kubelet, Deployments,
rollouts and Jobs. The tests run on any cluster that can run pods (the `pods` fixture
skips with the reason otherwise); checks of the local node's own plumbing (its kubelet
port, containerd, mount namespace) run only there.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from secure_keys_dev.cluster import LocalCluster
from tests.e2e.conftest import IDLE, PodEnvironment, Target
from tests.support.kubectl import kubectl, wait_for

AUDIENCE = "securekeys.io"
TOKEN_DIR = "/var/run/secrets/securekeys"
SIDECAR_DELAY = 2  # seconds the sidecar waits before its startupProbe can pass
# PID 1 of a container ignores SIGTERM unless it traps it: exit at once, so deleting a
# pod does not wait out its grace period.


# -- helpers ---------------------------------------------------------------------------
def wait_for_default_service_account(core: client.CoreV1Api, namespace: str) -> None:
    def exists() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(f"the default ServiceAccount in {namespace}", exists, timeout=30)


def container(name: str, pods: PodEnvironment, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": pods.busybox_image,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        **extra,
    }


def pod_spec(pods: PodEnvironment, **spec: Any) -> dict[str, Any]:
    """A pod spec for the cluster under test (hostNetwork where the node has no pod
    network)."""
    return {"hostNetwork": pods.host_network, "terminationGracePeriodSeconds": 5, **spec}


def started_at(statuses: list[client.V1ContainerStatus] | None, name: str) -> datetime:
    for status in statuses or []:
        if status.name == name and status.state and status.state.running:
            moment: datetime = status.state.running.started_at
            return moment
    raise AssertionError(f"container {name} is not running")


def running(pod: client.V1Pod, name: str) -> bool:
    statuses = (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])
    return any(s.name == name and s.state and s.state.running for s in statuses)


# -- the shared pod: a sidecar gating an app, a memory volume, a projected token ----------
@dataclass(frozen=True)
class SidecarPod:
    namespace: str
    name: str
    marker: str
    """What the sidecar writes into the shared volume (and the app prints)."""
    apply_to_running: float
    """Seconds from creating the pod to the app container running."""


@pytest.fixture(scope="module")
def sidecar_pod(
    kube: Target, admin_api: client.ApiClient, pods: PodEnvironment
) -> Iterator[SidecarPod]:
    core = client.CoreV1Api(admin_api)
    namespace = f"e2e-node-{secrets.token_hex(4)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for_default_service_account(core, namespace)
    marker = secrets.token_hex(8)
    sidecar = container(
        "sidecar",
        pods,
        f'trap "exit 0" TERM; sleep {SIDECAR_DELAY}; echo "$MARKER" > /shared/ready; '
        "while true; do sleep 1; done",
        restartPolicy="Always",
        env=[{"name": "MARKER", "value": marker}],
        startupProbe={
            "exec": {"command": ["/bin/cat", "/shared/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
    )
    app = container(
        "app",
        pods,
        f"cat /shared/ready; {IDLE}",
        volumeMounts=[
            {"name": "shared", "mountPath": "/shared", "readOnly": True},
            {"name": "securekeys-token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    )
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sidecar-app", "namespace": namespace},
        "spec": pod_spec(
            pods,
            automountServiceAccountToken=False,
            initContainers=[sidecar],
            containers=[app],
            volumes=[
                {"name": "shared", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                {
                    "name": "securekeys-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": AUDIENCE,
                                    "expirationSeconds": 600,
                                    "path": "token",
                                }
                            }
                        ]
                    },
                },
            ],
        ),
    }
    began = time.monotonic()
    core.create_namespaced_pod(namespace, manifest)
    wait_for(
        "the app container to run",
        lambda: running(core.read_namespaced_pod("sidecar-app", namespace), "app"),
    )
    took = time.monotonic() - began
    print(f"\npod with a sidecar: created to app Running in {took:.1f} s")
    yield SidecarPod(namespace, "sidecar-app", marker, took)
    core.delete_namespace(namespace)


def exec_in(
    kube: Target, pod: SidecarPod, name: str, script: str
) -> subprocess.CompletedProcess[str]:
    return kubectl(
        kube, "exec", "-n", pod.namespace, pod.name, "-c", name, "--", "sh", "-c", script
    )


# -- 1. native sidecar ----------------------------------------------------------------------
def test_the_app_starts_only_after_the_sidecar_probe_passes(
    kube: Target, admin_api: client.ApiClient, sidecar_pod: SidecarPod
) -> None:
    pod = client.CoreV1Api(admin_api).read_namespaced_pod(sidecar_pod.name, sidecar_pod.namespace)
    sidecar_started = started_at(pod.status.init_container_statuses, "sidecar")
    app_started = started_at(pod.status.container_statuses, "app")
    # The probe cannot pass before the sidecar has slept SIDECAR_DELAY s; the timestamps
    # have one-second resolution, which the subtraction of two floored values keeps exact.
    assert (app_started - sidecar_started).total_seconds() >= SIDECAR_DELAY
    sidecar_status = next(s for s in pod.status.init_container_statuses if s.name == "sidecar")
    assert sidecar_status.started is True
    # The app's first act was to print the file the sidecar wrote.
    logs = wait_for(
        "the app's log",
        lambda: (
            kubectl(kube, "logs", "-n", sidecar_pod.namespace, sidecar_pod.name, "-c", "app").stdout
        ),
        timeout=20,
    )
    assert logs.splitlines()[0] == sidecar_pod.marker


# -- 2. memory-backed emptyDir ---------------------------------------------------------------
def test_a_memory_emptydir_is_a_tmpfs_read_only_in_the_app_and_size_limited(
    kube: Target, admin_api: client.ApiClient, sidecar_pod: SidecarPod
) -> None:
    for name, options in (("sidecar", "rw"), ("app", "ro")):
        mounts = exec_in(kube, sidecar_pod, name, "grep ' /shared ' /proc/mounts")
        assert mounts.returncode == 0, mounts.stderr
        _device, point, fstype, flags = mounts.stdout.split()[:4]
        assert (point, fstype) == ("/shared", "tmpfs"), mounts.stdout
        assert flags.split(",")[0] == options, mounts.stdout
        # sizeLimit becomes the tmpfs size (1 MiB).
        assert "size=1024k" in flags.split(","), mounts.stdout
    write = exec_in(kube, sidecar_pod, "app", "echo x > /shared/from-app")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    # Past the limit, the kubelet's tmpfs refuses the write (ENOSPC); it does not evict.
    fill = exec_in(kube, sidecar_pod, "sidecar", "dd if=/dev/zero of=/shared/fill bs=64k count=32")
    assert fill.returncode != 0
    assert "No space left on device" in fill.stderr
    exec_in(kube, sidecar_pod, "sidecar", "rm -f /shared/fill")
    pod = client.CoreV1Api(admin_api).read_namespaced_pod(sidecar_pod.name, sidecar_pod.namespace)
    assert pod.status.phase == "Running"
    # The sidecar's file is intact and visible to the app.
    assert exec_in(kube, sidecar_pod, "app", "cat /shared/ready").stdout.strip() == (
        sidecar_pod.marker
    )


# -- 3. projected token ----------------------------------------------------------------------
def test_the_projected_token_is_bound_to_its_audience_and_the_pod(
    kube: Target, admin_api: client.ApiClient, sidecar_pod: SidecarPod
) -> None:
    read = exec_in(kube, sidecar_pod, "app", f"cat {TOKEN_DIR}/token")
    assert read.returncode == 0, read.stderr
    token = read.stdout.strip()
    authn = client.AuthenticationV1Api(admin_api)
    review = authn.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
    )
    assert review.status.authenticated is True, review.status.error
    assert review.status.audiences == [AUDIENCE]
    user = review.status.user
    assert user.username == f"system:serviceaccount:{sidecar_pod.namespace}:default"
    pod = client.CoreV1Api(admin_api).read_namespaced_pod(sidecar_pod.name, sidecar_pod.namespace)
    assert user.extra["authentication.kubernetes.io/pod-name"] == [sidecar_pod.name]
    assert user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]
    # The same token is no good for the API server's own audience.
    default = authn.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert default.status.authenticated is not True


# -- 4. logs and exec through the authenticated kubelet -------------------------------------
def test_logs_and_exec_go_through_the_kubelet(kube: Target, sidecar_pod: SidecarPod) -> None:
    def app_log() -> subprocess.CompletedProcess[str] | None:
        done = kubectl(kube, "logs", "-n", sidecar_pod.namespace, sidecar_pod.name, "-c", "app")
        return done if done.returncode != 0 or done.stdout.strip() else None

    logs = wait_for("the app's log", app_log, timeout=20)  # printed once it started
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip() == sidecar_pod.marker
    done = exec_in(kube, sidecar_pod, "sidecar", "echo exec-$((6 * 7)) && hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "exec-42"


@dataclass(frozen=True)
class KubeletAnswer:
    status: int
    body: str


def _ask_kubelet(
    cluster: LocalCluster, address: str, port: int, cert_dir: Path | None
) -> KubeletAnswer:
    context = ssl.create_default_context(cafile=str(cluster.workdir / "pki" / "ca.crt"))
    if cert_dir is not None:
        context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=10)
    try:
        connection.request("GET", "/pods")
        response = connection.getresponse()
        return KubeletAnswer(response.status, response.read().decode(errors="replace"))
    finally:
        connection.close()


def test_the_kubelet_refuses_anonymous_and_unauthorized_callers(
    kube: Target, admin_api: client.ApiClient, tmp_path: Path
) -> None:
    if kube.cluster is None or kube.cluster.node is None:
        pytest.skip("checks the local node's kubelet")
    node = client.CoreV1Api(admin_api).read_node("127.0.0.1")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    assert port == kube.cluster.node.ports.kubelet
    # The node's address: 127.0.0.1 on the host's network, else the node end of the veth
    # pair inside the node's network namespace (docs/local-cluster-network.md).
    address = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    network = kube.cluster.network
    assert address == ("127.0.0.1" if network is None else network.node_address)
    # Its serving certificate is the cluster CA's, for that address (verified here).
    anonymous = _ask_kubelet(kube.cluster, address, port, None)
    assert anonymous.status == 401, anonymous
    # A valid client certificate of a user with no rights: authenticated, then refused.
    nobody = kube.cluster.ca
    assert nobody is not None
    pair = nobody.issue_client("e2e-nobody")
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    refused = _ask_kubelet(kube.cluster, address, port, tmp_path)
    assert refused.status == 403, refused
    assert "e2e-nobody" in refused.body


def test_the_kubelet_authenticates_as_its_node(kube: Target) -> None:
    if kube.cluster is None or kube.cluster.node is None:
        pytest.skip("checks the local node's kubelet identity")
    who = subprocess.run(  # noqa: S603
        [
            str(kube.cluster.binaries.kubectl),
            f"--kubeconfig={kube.cluster.node.credentials.kubelet_kubeconfig}",
            "auth",
            "whoami",
            "-o=json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(who.stdout)["status"]["userInfo"]
    assert info["username"] == "system:node:127.0.0.1"
    assert "system:nodes" in info["groups"]
    assert "system:masters" not in info["groups"]


# -- 5. Deployment, rollout, pod deletion ----------------------------------------------------
def _deployment(pods: PodEnvironment, version: str) -> dict[str, Any]:
    labels = {"app": "idle"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "idle"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(
                    pods,
                    automountServiceAccountToken=False,
                    containers=[
                        container(
                            "idle",
                            pods,
                            IDLE,
                            env=[{"name": "VERSION", "value": version}],
                            volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
                        )
                    ],
                    # A volume the kubelet mounts (a tmpfs), to see it unmounted on delete.
                    volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
                ),
            },
        },
    }


def _ready_pods(core: client.CoreV1Api, namespace: str, version: str) -> list[client.V1Pod]:
    listed = core.list_namespaced_pod(namespace, label_selector="app=idle").items
    ready = [
        p
        for p in listed
        if p.metadata.deletion_timestamp is None
        and p.spec.containers[0].env[0].value == version
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    return ready if len(ready) == 2 and len(listed) == 2 else []


def _node_task_ids(cluster: LocalCluster) -> set[str]:
    """Containers with a running task in the local node's containerd."""
    assert cluster.node is not None
    listed = subprocess.run(  # noqa: S603
        [
            str(cluster.node.tools.ctr),
            f"--address={cluster.node.socket}",
            "--namespace=k8s.io",
            "tasks",
            "ls",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split()[0] for line in listed.stdout.splitlines()[1:] if "RUNNING" in line.split()}


def _node_mounts(cluster: LocalCluster) -> str:
    """The mount table inside the local node's mount namespace."""
    assert cluster.node is not None
    assert cluster.node.containerd is not None
    return Path(f"/proc/{cluster.node.containerd.process.pid}/mountinfo").read_text()


def test_deployment_pods_run_roll_out_and_clean_up_when_deleted(
    kube: Target, admin_api: client.ApiClient, pods: PodEnvironment, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    apps = client.AppsV1Api(admin_api)
    wait_for_default_service_account(core, namespace)
    apps.create_namespaced_deployment(namespace, _deployment(pods, "1"))
    first = wait_for("two ready pods", lambda: _ready_pods(core, namespace, "1"))
    first_uids = {p.metadata.uid for p in first}

    apps.patch_namespaced_deployment("idle", namespace, _deployment(pods, "2"))
    second = wait_for("the rollout to replace both pods", lambda: _ready_pods(core, namespace, "2"))
    assert not first_uids & {p.metadata.uid for p in second}

    victim = second[0]
    container_id = victim.status.container_statuses[0].container_id.split("://", 1)[1]
    if kube.cluster is not None and kube.cluster.node is not None:
        assert container_id in _node_task_ids(kube.cluster)
        assert victim.metadata.uid in _node_mounts(kube.cluster)
    core.delete_namespaced_pod(victim.metadata.name, namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(victim.metadata.name, namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for("the deleted pod to be gone", gone)
    wait_for("a replacement pod", lambda: _ready_pods(core, namespace, "2"))
    if kube.cluster is not None and kube.cluster.node is not None:
        cluster = kube.cluster
        wait_for("its container to stop", lambda: container_id not in _node_task_ids(cluster))

        def unmounted() -> bool:
            mounts = _node_mounts(cluster)
            return victim.metadata.uid not in mounts and container_id not in mounts

        wait_for("its volumes and rootfs to be unmounted", unmounted, timeout=30)


# -- 6. Job with a native sidecar ------------------------------------------------------------
def test_a_job_with_a_native_sidecar_completes(
    admin_api: client.ApiClient, pods: PodEnvironment, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    wait_for_default_service_account(core, namespace)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": pod_spec(
                    pods,
                    restartPolicy="Never",
                    automountServiceAccountToken=False,
                    initContainers=[container("sidecar", pods, IDLE, restartPolicy="Always")],
                    containers=[container("work", pods, "echo done")],
                )
            },
        },
    }
    batch = client.BatchV1Api(admin_api)
    batch.create_namespaced_job(namespace, job)

    def finished() -> str | None:
        status = batch.read_namespaced_job_status("once", namespace).status
        for condition in status.conditions or []:
            if condition.type in ("Complete", "Failed") and condition.status == "True":
                return str(condition.type)
        return None

    assert wait_for("the Job to finish", finished) == "Complete"
    (job_pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=once").items
    assert job_pod.status.phase == "Succeeded"
