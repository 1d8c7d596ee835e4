"""The demo's working directory: a run killed with SIGKILL leaves it; the next run sweeps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from secure_keys_dev.demo import WORKDIR_PREFIX, demo_workdir

ROOT = Path(__file__).parents[3]

_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from secure_keys_dev.demo import demo_workdir
with demo_workdir(Path(sys.argv[1])) as workdir:
    (workdir / "kms").mkdir()
    (workdir / "kms" / "default.password").write_text("a password")
    print(workdir, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_directory_is_swept_by_the_next_run(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "devtools"))
    killed = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", _KILLED_RUN, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    assert left.name.startswith(WORKDIR_PREFIX)
    assert (left / "kms" / "default.password").exists()  # what SIGKILL leaves behind

    # A directory whose owner is alive (this process) is not touched.
    alive = tmp_path / f"{WORKDIR_PREFIX}alive"
    alive.mkdir()
    (alive / "owner.pid").write_text(str(os.getpid()))

    with demo_workdir(tmp_path) as workdir:
        assert not left.exists()
        assert alive.exists()
        assert (workdir / "owner.pid").read_text() == str(os.getpid())
        assert workdir.stat().st_mode & 0o077 == 0
    assert not workdir.exists()
    assert alive.exists()
