"""`python -m secure_keys_dev up|down|status`: a long-lived local cluster.

`up` starts a detached supervisor process (`serve`) that owns a LocalCluster
and stops it on SIGTERM/SIGINT. The supervisor copies the admin kubeconfig to
`<state-dir>/kubeconfig` once the cluster is ready and removes it on the way
out; `up` prints that path. `down` signals the supervisor and waits for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from secure_keys_dev.cluster import (
    ControlPlaneError,
    LocalCluster,
    repository_root,
)

DEFAULT_STATE_DIR = repository_root() / "build" / "cluster"


def _pid(state: Path) -> int | None:
    try:
        pid = int((state / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def serve(state: Path, port: int | None) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = state / "kubeconfig"
    try:
        with LocalCluster(api_port=port) as cluster:
            shutil.copy(cluster.kubeconfig, ready)
            ready.chmod(0o600)
            print(
                f"cluster ready in {cluster.started_in:.1f} s at {cluster.server}; "
                f"workdir {cluster.workdir}",
                flush=True,
            )
            stop.wait()
            ready.unlink(missing_ok=True)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ready.unlink(missing_ok=True)
        (state / "supervisor.pid").unlink(missing_ok=True)
    return 0


def up(state: Path, port: int | None, timeout: float) -> int:
    kubeconfig = state / "kubeconfig"
    if _pid(state) is not None and kubeconfig.exists():
        print(kubeconfig)
        return 0
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "supervisor.log"
    argv = [sys.executable, "-m", "secure_keys_dev", "serve", f"--state-dir={state}"]
    if port is not None:
        argv.append(f"--port={port}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state / "supervisor.pid").write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.terminate()
                process.wait()
            print(log_path.read_text(), file=sys.stderr)
            print(f"error: the cluster did not start (log {log_path})", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(kubeconfig)
    return 0


def down(state: Path, timeout: float) -> int:
    pid = _pid(state)
    if pid is None:
        print("no local cluster is running", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid(state) is not None:
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
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    if args.command == "serve":
        return serve(state, args.port)
    if args.command == "up":
        return up(state, args.port, args.timeout)
    if args.command == "down":
        return down(state, args.timeout)
    running = _pid(state) is not None and (state / "kubeconfig").exists()
    print(state / "kubeconfig" if running else "no local cluster is running")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
