"""`make cluster-up`: one line on stdout, and only a kubeconfig whose API server is ready.

The tests share one private state directory (never the developer's ``build/cluster``);
each works whether or not the other left a cluster running there (``up`` reuses it), and
the last cluster is stopped at the end of the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_keys_dev.__main__ import api_ready, supervisor_pid
from secure_keys_dev.cluster import repository_root

ROOT = repository_root()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A state directory; whatever cluster ran in it is stopped afterwards."""
    directory = tmp_path_factory.mktemp("cluster-up") / "cluster"
    yield directory
    _dev("down", directory)
    pid = supervisor_pid(directory)
    if pid is not None:  # `down` failed: end the supervisor this test started
        os.kill(pid, signal.SIGKILL)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["PYTHONPATH"] = str(ROOT / "devtools")
    return env


def _dev(command: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "secure_keys_dev", command, f"--state-dir={state}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_cluster_up_prints_exactly_one_line_a_ready_kubeconfig(state: Path) -> None:
    # STAMP= : the virtual environment is the one running this test; make must not
    # reinstall it. The build script runs, and finds the binaries up to date.
    made = subprocess.run(  # noqa: S603 - make, in this repository
        ["make", "-s", "cluster-up", f"CLUSTER_STATE={state}", "STAMP="],  # noqa: S607
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [str(state / "kubeconfig")]
    assert made.stdout == f"{state / 'kubeconfig'}\n"
    assert api_ready(state / "kubeconfig")


def test_after_the_supervisor_is_killed_up_waits_for_the_new_cluster(state: Path) -> None:
    first = _dev("up", state)
    assert first.returncode == 0, first.stderr
    kubeconfig = Path(first.stdout.strip())
    supervisor = supervisor_pid(state)
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while supervisor_pid(state) is not None or api_ready(kubeconfig, timeout=0.5):
        assert time.monotonic() < deadline, "the killed cluster did not go away"
        time.sleep(0.1)
    assert kubeconfig.exists()  # what a killed supervisor leaves behind

    second = _dev("up", state)
    # Probe once, at once: the kubeconfig printed must already reach a ready API server.
    assert api_ready(kubeconfig), "up printed a kubeconfig before its cluster was ready"
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"{kubeconfig}\n"
    assert "a supervisor that is gone" in second.stderr
    assert supervisor_pid(state) not in (None, supervisor)
