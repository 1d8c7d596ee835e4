"""The local node leaves the host as it found it: sysctls, mounts, cgroups, processes,
and with a pod network its network namespace, veth pair and route.

Each test starts a node of its own with a pod on it (so there are containers, shims,
overlay and tmpfs mounts, pod cgroups, and with a pod network a pod address, a bridge
and kube-proxy's rules in the node's namespace), then checks the host after a clean
stop and after its owner was killed with SIGKILL and the next start swept up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from secure_keys_dev import access, image, podnet
from secure_keys_dev.cluster import LocalCluster, sweep_stale_workdirs
from secure_keys_dev.node import (
    CGROUP_PREFIX,
    cgroup_mounts,
    cgroup_tree_pids,
    read_shielded_sysctls,
    shim_sockets,
)
from tests.e2e.conftest import IDLE, Target
from tests.support.kubectl import wait_for


@dataclass(frozen=True)
class HostState:
    mount_points: frozenset[str]
    mountinfo: str
    sysctls: dict[str, str]
    cgroup_tops: frozenset[tuple[str, str]]  # (hierarchy, entry at its root)

    @classmethod
    def capture(cls) -> HostState:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        tops = {
            (str(m.path), entry.name)
            for m in cgroup_mounts()
            for entry in m.path.iterdir()
            if entry.is_dir()
        }
        return cls(
            frozenset(line.split()[4] for line in mountinfo.splitlines()),
            mountinfo,
            read_shielded_sysctls(),
            frozenset(tops),
        )


def _running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":  # a zombie is gone for our purposes once its parent reaps it
            alive.add(pid)
    return alive


def _processes_mentioning(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return _running(found)


@dataclass(frozen=True)
class NetworkTrace:
    """What a node's pod network put on the host, to look for afterwards."""

    host_link: str
    block: str
    netns_inode: int

    @classmethod
    def of(cls, network: podnet.PodNetwork, containerd_pid: int) -> NetworkTrace:
        inode = os.stat(f"/proc/{containerd_pid}/ns/net").st_ino
        assert inode != os.stat("/proc/self/ns/net").st_ino  # the node has its own
        return cls(network.host_link, str(network.block), inode)


def _net_namespace_inodes() -> set[int]:
    inodes = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                inodes.add(os.stat(entry / "ns" / "net").st_ino)
            except OSError:
                continue
    return inodes


def assert_no_network_left(trace: NetworkTrace) -> None:
    """No process in the node's namespace (so it is gone, with its bridge and iptables
    rules), no host link of ours, no route into its block."""
    assert trace.netns_inode not in _net_namespace_inodes()
    assert not (podnet.SYS_CLASS_NET / trace.host_link).exists()
    assert trace.host_link not in podnet.owned_links()
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"],  # noqa: S607 - iproute2
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert trace.block not in routes
    assert trace.host_link not in routes


def assert_host_as_found(before: HostState, workdir: Path, cgroup: str) -> None:
    after = HostState.capture()
    assert after.sysctls == before.sysctls
    assert str(workdir) not in after.mountinfo
    assert after.mount_points == before.mount_points
    left = {(h, e) for h, e in after.cgroup_tops - before.cgroup_tops}
    # Another cluster's node may have started meanwhile; ours must be gone, and nothing
    # else (no kubepods at a hierarchy's root) may have appeared.
    assert not {e for _, e in left if e == cgroup or not e.startswith(CGROUP_PREFIX)}, left
    assert not any((m.path / cgroup).exists() for m in cgroup_mounts())
    assert _processes_mentioning(str(workdir)) == set()
    assert not workdir.exists()


@dataclass(frozen=True)
class NodeImages:
    archives: tuple[Path, ...]
    pause: str
    busybox: str


@pytest.fixture(scope="module")
def node_images(kube: Target) -> NodeImages:
    if kube.cluster is None or kube.cluster.node is None:
        pytest.skip(kube.no_pods_because or "checks the local node itself")
    return NodeImages(
        tuple(kube.node_settings["node_images"]),
        kube.node_settings["sandbox_image"],
        image.BUSYBOX_REFERENCE,
    )


def _start_pod(kubeconfig: Path, busybox: str, *, host_network: bool = True) -> str:
    """A pod with a memory volume and a projected token (tmpfs mounts), Running."""
    with access.api_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        wait_for(
            "the default ServiceAccount",
            lambda: any(
                s.metadata.name == "default"
                for s in core.list_namespaced_service_account("default").items
            ),
        )
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "host-state"},
            "spec": {
                "hostNetwork": host_network,
                "containers": [
                    {
                        "name": "idle",
                        "image": busybox,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", IDLE],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            },
        }
        core.create_namespaced_pod("default", manifest)

        def uid_when_running() -> str | None:
            pod = core.read_namespaced_pod("host-state", "default")
            return str(pod.metadata.uid) if pod.status.phase == "Running" else None

        uid: str = wait_for("the pod to run", uid_when_running)
        return uid


@pytest.mark.parametrize("pod_network", [False, True], ids=["host-network", "pod-network"])
def test_stop_leaves_the_host_as_found(
    kube: Target, node_images: NodeImages, pod_network: bool
) -> None:
    assert kube.cluster is not None
    before = HostState.capture()
    trace = None
    with LocalCluster(
        binaries=kube.cluster.binaries,
        node=True,
        node_images=node_images.archives,
        sandbox_image=node_images.pause,
        pod_network=pod_network,
    ) as cluster:
        node = cluster.node
        assert node is not None
        uid = _start_pod(cluster.kubeconfig, node_images.busybox, host_network=not pod_network)
        if cluster.network is not None:
            assert node.containerd is not None
            trace = NetworkTrace.of(cluster.network, node.containerd.process.pid)
            assert (podnet.SYS_CLASS_NET / trace.host_link).exists()
        workdir, cgroup = cluster.workdir, node.layout.cgroup_name
        during = HostState.capture()
        # Isolation while running: the kubelet's sysctl writes and every mount stay inside.
        assert during.sysctls == before.sysctls
        assert during.mount_points == before.mount_points
        assert node.containerd is not None
        inside = Path(f"/proc/{node.containerd.process.pid}/mountinfo").read_text()
        assert uid in inside  # the pod's tmpfs exists, in the node's namespace only
        assert uid not in during.mountinfo
        # The kubelet's cgroups exist, under the node's own root, with the pod in them.
        containers = cgroup_tree_pids(cgroup)
        assert containers
        shims = {pid for pid, sock in shim_sockets().items() if sock == node.socket}
        assert shims
        processes = containers | shims | {c.process.pid for c in cluster._components}
    assert _running(processes) == set()
    assert_host_as_found(before, workdir, cgroup)
    if trace is not None:
        assert_no_network_left(trace)


OWNER = """
import json, sys, time
from pathlib import Path
from secure_keys_dev.cluster import LocalCluster
settings = json.loads(sys.argv[1])
cluster = LocalCluster(
    node=True,
    node_images=[Path(p) for p in settings["archives"]],
    sandbox_image=settings["pause"],
    pod_network=settings["pod_network"],
).start()
network = cluster.network
print(json.dumps({
    "workdir": str(cluster.workdir),
    "kubeconfig": str(cluster.kubeconfig),
    "cgroup": cluster.node.layout.cgroup_name,
    "socket": str(cluster.node.socket),
    "components": [c.process.pid for c in cluster._components],
    "containerd": cluster.node.containerd.process.pid,
    "network": network and {"link": network.host_link, "block": str(network.block)},
}), flush=True)
time.sleep(600)
"""


@pytest.fixture(params=[False, True], ids=["host-network", "pod-network"])
def owner(
    kube: Target, node_images: NodeImages, request: pytest.FixtureRequest
) -> Iterator[tuple[HostState, subprocess.Popen[str]]]:
    """(the host before, a process that owns a LocalCluster with a node, with or without
    a pod network)."""
    assert kube.cluster is not None
    before = HostState.capture()
    settings = {
        "archives": [str(a) for a in node_images.archives],
        "pause": node_images.pause,
        "pod_network": request.param,
    }
    process = subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", OWNER, json.dumps(settings)],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "SECUREKEYS_BIN_DIR": str(kube.cluster.binaries.etcd.parent),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "devtools"),
        },
    )
    yield before, process
    if process.poll() is None:
        process.kill()
    process.wait()
    assert process.stdout is not None
    process.stdout.close()
    sweep_stale_workdirs()


def test_after_the_owner_is_killed_the_next_start_cleans_up(
    owner: tuple[HostState, subprocess.Popen[str]], node_images: NodeImages
) -> None:
    before, owner_process = owner
    assert owner_process.stdout is not None
    started = json.loads(owner_process.stdout.readline())
    workdir, cgroup = Path(started["workdir"]), started["cgroup"]
    network = started["network"]
    _start_pod(Path(started["kubeconfig"]), node_images.busybox, host_network=network is None)
    trace = None
    if network is not None:
        inode = os.stat(f"/proc/{started['containerd']}/ns/net").st_ino
        trace = NetworkTrace(network["link"], network["block"], inode)
    containers = cgroup_tree_pids(cgroup)
    shims = {pid for pid, sock in shim_sockets().items() if str(sock) == started["socket"]}
    assert containers
    assert shims

    owner_process.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel helps
    owner_process.wait()
    components = set(started["components"])
    deadline = time.monotonic() + 15
    while _running(components) and time.monotonic() < deadline:
        time.sleep(0.1)
    # PR_SET_PDEATHSIG took the control plane, containerd, kubelet and scheduler along...
    assert _running(components) == set()
    # ...but shims and containers are reparented on purpose, and survive their owner.
    assert _running(containers | shims) == containers | shims

    assert workdir in sweep_stale_workdirs(workdir.parent)  # what the next start does
    assert _running(containers | shims) == set()
    assert_host_as_found(before, workdir, cgroup)
    if trace is not None:
        assert_no_network_left(trace)
