"""The local control plane's own guarantees: real versions, clean shutdown, no leftovers.

These run only against the LocalCluster (they start and kill extra clusters).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kubernetes import client

from secure_keys_dev import access
from secure_keys_dev.cluster import (
    WORKDIR_PREFIX,
    LocalCluster,
    PortInUse,
    sweep_stale_workdirs,
)
from tests.e2e.conftest import Target

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(kube: Target) -> LocalCluster:
    if kube.cluster is None:
        pytest.skip("checks the local control plane itself")
    return kube.cluster


def _pinned_kubernetes_version() -> str:
    for line in (REPO / "tools" / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise AssertionError("k8s.io/kubernetes is not pinned in tools/k8s/go.mod")


def test_server_and_kubectl_report_the_pinned_release(local: LocalCluster) -> None:
    pinned = _pinned_kubernetes_version()
    out = subprocess.run(  # noqa: S603
        [str(local.binaries.kubectl), f"--kubeconfig={local.kubeconfig}", "version", "-o=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    versions = json.loads(out)
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitTreeState"] == "clean"
    # kubectl skew warnings only appear when versions differ by more than one minor.
    assert "WARNING" not in out


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie still answers kill(0); it is gone for our purposes once reaped.
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] != "Z":
            alive.append(pid)
    return alive


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a leak
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_stop_leaves_no_processes_ports_or_directories(local: LocalCluster, tmp_path: Path) -> None:
    # A directory left by a run that was SIGKILLed: its owner pid is gone.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = Path(tempfile.gettempdir()) / f"{WORKDIR_PREFIX}stale-{dead}"
    stale.mkdir()
    (stale / "owner.pid").write_text(dead)
    with LocalCluster(binaries=local.binaries) as other:
        assert not stale.exists(), "start() did not sweep a dead owner's directory"
        pids = [c.process.pid for c in other._components]
        ports = [other.ports.etcd_client, other.ports.apiserver, other.ports.controller_manager]
        workdir = other.workdir
        assert len(_pids_alive(pids)) == 3
        assert not any(_port_free(p) for p in ports)
        assert other.started_in is not None
    assert _pids_alive(pids) == []
    assert all(_port_free(p) for p in ports)
    assert not workdir.exists()


def test_a_killed_owner_takes_its_cluster_with_it(local: LocalCluster, tmp_path: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from secure_keys_dev.cluster import LocalCluster\n"
        "c = LocalCluster().start()\n"
        "print(json.dumps({'pids': [x.process.pid for x in c._components],"
        " 'workdir': str(c.workdir)}), flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "SECUREKEYS_BIN_DIR": str(local.binaries.etcd.parent),
            "PYTHONPATH": str(REPO / "devtools"),  # development-only code is not installed
        },
    )
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)  # no finally blocks, no atexit: only the kernel helps
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 15
    while _pids_alive(started["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_alive(started["pids"]) == []
    workdir = Path(started["workdir"])
    assert workdir.exists()  # nobody cleaned up...
    assert workdir in sweep_stale_workdirs(workdir.parent)  # ...until the next start sweeps
    assert not workdir.exists()


def test_a_taken_port_is_a_clear_error(local: LocalCluster) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"port {port} on 127.0.0.1 is already in use"):
            LocalCluster(binaries=local.binaries, api_port=port).start()


def test_users_from_the_csr_api_work_on_the_local_cluster(
    local: LocalCluster, kube: Target, namespace: str
) -> None:
    """The path used for clusters whose CA key we do not hold (kind) also works here."""
    path = access.csr_user_kubeconfig(
        local.kubeconfig, f"carol-{namespace}", ["e2e-csr"], kube.scratch / "carol.kubeconfig"
    )
    with access.api_client(path) as api:
        who = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
    assert who.status.user_info.username == f"carol-{namespace}"
    assert "e2e-csr" in who.status.user_info.groups
