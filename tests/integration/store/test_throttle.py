"""Wrong passwords are throttled across real processes trying at the same moment.

Each process below opens the store once with a wrong password, all released together
(they wait for a line on stdin). Each attempt is counted under the writers' lock before
its KDF runs, so only as many KDFs run as the delay schedule allows; the rest are refused
at once. "wrong password" is only ever said after the KDF ran, which is how the test
counts KDFs from outside.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.store import AuthenticationFailed, LocalStore, TooManyAttempts
from secure_keys.store.local import MAX_DELAY, failure_delay

PASSWORD = "throttle password"
ROOT = Path(__file__).parents[3]
PARALLEL = 6

ATTEMPT = """
import sys
from pathlib import Path
from secure_keys.store import AuthenticationFailed, LocalStore, TooManyAttempts

print("ready", flush=True)
sys.stdin.readline()
try:
    LocalStore.open(Path(sys.argv[1]), password=sys.argv[2]).close()
except TooManyAttempts:
    print("refused", flush=True)
except AuthenticationFailed as exc:
    print("kdf" if str(exc) == "wrong password" else f"other {exc}", flush=True)
else:
    print("opened", flush=True)
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", ATTEMPT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _at(when: dt.datetime) -> dt.datetime:
    return when


def _fail_in_the_past(directory: Path, times: int) -> None:
    """``times`` wrong passwords, each when its delay allowed, ending an hour ago."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for n in range(times):
        at = start + dt.timedelta(seconds=sum(failure_delay(k) for k in range(1, n + 1)))
        with pytest.raises(AuthenticationFailed, match="wrong password"):
            LocalStore.open(directory, password="guess", clock=functools.partial(_at, at))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secure-keys"
    LocalStore.init(directory, password=PASSWORD, iterations=MIN_ITERATIONS).close()
    return directory


def test_parallel_wrong_passwords_get_one_kdf_between_them(store_dir: Path) -> None:
    # Eight failures in a row: the next attempt is allowed (their delays ran out long
    # ago), and it makes the one after wait the full 30 s. Six processes that try together
    # therefore get exactly one KDF; before the count was taken under the lock, all six
    # ran theirs after the same short sleep.
    _fail_in_the_past(store_dir, 8)
    assert failure_delay(9) == MAX_DELAY
    attempts = [_spawn(str(store_dir), f"guess-{n}") for n in range(PARALLEL)]
    for attempt in attempts:
        assert attempt.stdout is not None
        assert attempt.stdout.readline().strip() == "ready"
    for attempt in attempts:
        assert attempt.stdin is not None
        attempt.stdin.write("go\n")
        attempt.stdin.flush()
    outcomes = []
    for attempt in attempts:
        out, err = attempt.communicate(timeout=120)
        assert attempt.returncode == 0, err[-2000:]
        outcomes.append(out.strip().splitlines()[-1])  # after any log lines
    assert sorted(outcomes) == ["kdf"] + ["refused"] * (PARALLEL - 1)

    # Nine failures now: even the right password waits until the delay runs out ...
    with pytest.raises(TooManyAttempts) as refused:
        LocalStore.open(store_dir, password=PASSWORD)
    assert 0 < refused.value.retry_after <= MAX_DELAY
    # ... and then opens the store and resets the count (the clock is the store's seam;
    # the test does not sleep 30 s).
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MAX_DELAY + 1)
    with LocalStore.open(store_dir, password=PASSWORD, clock=lambda: later) as store:
        failures = [r["count"] for r in store.audit_records() if r["event"] == "auth.failures"]
    assert failures == [9], "the refused attempts ran no KDF and are not counted"
    attempt = _spawn(str(store_dir), PASSWORD)
    out, err = attempt.communicate("go\n", timeout=120)
    assert out.strip().splitlines()[-1] == "opened", err[-2000:]
