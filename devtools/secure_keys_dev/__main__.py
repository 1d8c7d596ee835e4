"""`python -m secure_keys_dev up|down|status`: a long-lived local cluster.

`up` starts a detached supervisor process (`serve`) that owns a LocalCluster
and stops it on SIGTERM/SIGINT. The supervisor writes the admin kubeconfig to
`<state-dir>/kubeconfig` (atomically) once the cluster is ready and removes it
on the way out. `up` prints that path, and only that, on stdout, and only once
the supervisor is alive and the API server answers `/readyz` through that
kubeconfig. A supervisor killed outright (SIGKILL) cannot remove its files:
`up` recognises them as stale (no live supervisor behind the pid file) and
removes them before starting a new cluster, so it never hands out the
kubeconfig of a dead cluster. `down` signals the supervisor and waits for it.

The cluster has a node (kubelet, containerd, kube-scheduler, with the project's
images imported) whenever this machine can run one, so `kubectl apply` of a pod
works (with `hostNetwork: true`); `--no-node` leaves it out. Without root or the
node's packages the cluster starts without a node and the log says why.
`--pod-network` (`make cluster-up POD_NETWORK=1`) gives the node its own network
namespace with a pod network, kube-proxy and cluster DNS (`secure_keys_dev.podnet`):
pods then run without `hostNetwork` and Services work.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from secure_keys.kube.client import Credentials
from secure_keys_dev.cluster import (
    Binaries,
    ControlPlaneError,
    LocalCluster,
    repository_root,
)
from secure_keys_dev.image import ImageBuildError
from secure_keys_dev.node import NodeUnavailable, node_arguments

DEFAULT_STATE_DIR = repository_root() / "build" / "cluster"
_SUPERVISOR_MARK = b"secure_keys_dev\0serve\0"


def supervisor_pid(state: Path) -> int | None:
    """The pid in the pid file if it is alive and is this state directory's supervisor.

    Checking the command line, not just that the pid exists, keeps a recycled pid (the
    supervisor was killed and the number reused) from passing for a live supervisor.
    """
    try:
        pid = int((state / "supervisor.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if _SUPERVISOR_MARK not in cmdline or f"--state-dir={state}".encode() not in cmdline:
        return None
    return pid


def api_ready(kubeconfig: Path, timeout: float = 2.0) -> bool:
    """Whether the API server named in ``kubeconfig`` answers ``/readyz`` with ok."""
    try:
        credentials = Credentials.from_kubeconfig(kubeconfig)
        url = urlsplit(credentials.server)
        connection = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1",
            url.port or 443,
            context=credentials.ssl_context(),
            timeout=timeout,
        )
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            return response.status == 200 and response.read() == b"ok"
        finally:
            connection.close()
    except (OSError, ValueError, KeyError, yaml.YAMLError, http.client.HTTPException):
        return False


def _remove_stale(state: Path) -> None:
    stale = [state / "kubeconfig", state / "supervisor.pid"]
    if any(path.exists() for path in stale):
        print(f"removing the state of a supervisor that is gone ({state})", file=sys.stderr)
    for path in stale:
        path.unlink(missing_ok=True)


def _node_settings(state: Path) -> dict[str, Any]:
    try:
        return node_arguments(Binaries.find().etcd.parent, state / "images")
    except NodeUnavailable as exc:
        print(f"starting without a node: {exc}", file=sys.stderr, flush=True)
        return {}


def serve(state: Path, port: int | None, node: bool = True, pod_network: bool = False) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = state / "kubeconfig"
    try:
        settings = _node_settings(state) if node else {}
        if settings and pod_network:
            settings["pod_network"] = True
        with LocalCluster(api_port=port, **settings) as cluster:
            staged = state / ".kubeconfig.tmp"
            shutil.copy(cluster.kubeconfig, staged)
            staged.chmod(0o600)
            os.replace(staged, ready)  # `up` never sees a half-written file
            print(
                f"cluster ready in {cluster.started_in:.1f} s at {cluster.server}; "
                f"workdir {cluster.workdir}",
                flush=True,
            )
            if cluster.node is not None:
                network = cluster.network
                print(
                    f"node 127.0.0.1 ready in {cluster.node.ready_in:.1f} s; pods need "
                    + (
                        "hostNetwork: true and "
                        if network is None
                        else f"no hostNetwork (pod CIDR {network.pods}, Services "
                        f"{network.services}, DNS {network.dns_service_ip}), and "
                    )
                    + "imagePullPolicy: Never (images: "
                    f"{', '.join(str(p.name) for p in cluster.node.images)})",
                    flush=True,
                )
            stop.wait()
            ready.unlink(missing_ok=True)
    except (ControlPlaneError, ImageBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ready.unlink(missing_ok=True)
        (state / "supervisor.pid").unlink(missing_ok=True)
    return 0


def _wait_ready(state: Path, alive: Callable[[], bool], timeout: float) -> bool:
    """Until the supervisor has published a kubeconfig whose API server is ready.

    False at once if the supervisor dies (``alive``), else at the timeout.
    """
    kubeconfig = state / "kubeconfig"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if kubeconfig.exists() and api_ready(kubeconfig):
            return True
        time.sleep(0.1)
    return False


def up(
    state: Path, port: int | None, timeout: float, node: bool = True, pod_network: bool = False
) -> int:
    kubeconfig = state / "kubeconfig"
    running = supervisor_pid(state)
    if running is not None:
        if _wait_ready(state, lambda: supervisor_pid(state) == running, timeout):
            print(kubeconfig)
            return 0
        print(
            f"error: supervisor {running} is running but its cluster is not ready "
            f"(log {state / 'supervisor.log'}); try: make cluster-down",
            file=sys.stderr,
        )
        return 1
    state.mkdir(parents=True, exist_ok=True)
    _remove_stale(state)
    log_path = state / "supervisor.log"
    argv = [sys.executable, "-m", "secure_keys_dev", "serve", f"--state-dir={state}"]
    if port is not None:
        argv.append(f"--port={port}")
    if not node:
        argv.append("--no-node")
    if pod_network:
        argv.append("--pod-network")
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state / "supervisor.pid").write_text(str(process.pid))
    # Its liveness from the handle: /proc/<pid>/cmdline can be empty just after exec.
    if not _wait_ready(state, lambda: process.poll() is None, timeout):
        if process.poll() is None:
            process.terminate()
            process.wait()
        print(log_path.read_text(), file=sys.stderr)
        print(f"error: the cluster did not start (log {log_path})", file=sys.stderr)
        return 1
    print(kubeconfig)
    return 0


def down(state: Path, timeout: float) -> int:
    pid = supervisor_pid(state)
    if pid is None:
        _remove_stale(state)
        print("no local cluster is running", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while supervisor_pid(state) is not None:
        if time.monotonic() > deadline:
            print(f"error: supervisor {pid} did not stop in {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print("local cluster stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secure_keys_dev")
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--port", type=int, default=None, help="API server port (default: any)")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--no-node", action="store_true", help="no kubelet, containerd, scheduler")
    parser.add_argument(
        "--pod-network",
        action="store_true",
        help="the node in its own network namespace: pod network, kube-proxy, cluster DNS",
    )
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    if args.command == "serve":
        return serve(state, args.port, node=not args.no_node, pod_network=args.pod_network)
    if args.command == "up":
        return up(
            state, args.port, args.timeout, node=not args.no_node, pod_network=args.pod_network
        )
    if args.command == "down":
        return down(state, args.timeout)
    running = supervisor_pid(state) is not None and api_ready(state / "kubeconfig")
    print(state / "kubeconfig" if running else "no local cluster is running")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
