"""Nothing committed is lost: concurrent writer processes, and writers killed with SIGKILL.

Real processes on a real store (no mocks): each writer prints a line only after the
store's write returned, i.e. after SQLite committed and fsync'ed it. The test then
kills it (``SIGKILL``, at a random moment: mid-KDF, mid-transaction, mid-fsync, between
writes) and checks that a fresh process-free open finds every reported key with exactly
the value written, that the database passes SQLite's check, and that the audit chain
still verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.store import LocalStore

PASSWORD = "durability password"
ROOT = Path(__file__).parents[3]

# One writer: adds keys w<id>-<n> and, from the second on, rotates the previous one, then
# reports it. Values are derived from the names, so the reader knows what to expect.
WRITER = """
import sys
from pathlib import Path
from secure_keys.store import LocalStore

directory, ident, count, password = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
with LocalStore.open(directory, password=password) as store:
    print("ready", flush=True)
    n = 0
    while count < 0 or n < count:
        name = f"w{ident}-{n}"
        store.add(name, f"value-{name}-1".encode())
        print("added", name, flush=True)
        if n:
            previous = f"w{ident}-{n - 1}"
            store.rotate(previous, f"value-{previous}-2".encode())
            print("rotated", previous, flush=True)
        n += 1
"""

PASSWD = """
import sys
from pathlib import Path
from secure_keys.store import LocalStore

directory, first, second = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
current, new = first, second
while True:
    with LocalStore.open(directory, password=current) as store:
        store.change_password(current, new, iterations=100_000)
    print("password", new, flush=True)
    current, new = new, current
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _expected(lines: list[str]) -> dict[str, tuple[int, bytes]]:
    """Key name -> (active version, value), from what the writers reported."""
    state: dict[str, tuple[int, bytes]] = {}
    for line in lines:
        what, _, name = line.partition(" ")
        if what == "added":
            state[name] = (1, f"value-{name}-1".encode())
        elif what == "rotated":
            state[name] = (2, f"value-{name}-2".encode())
    return state


def _check(directory: Path, expected: dict[str, tuple[int, bytes]], password: str) -> None:
    with LocalStore.open(directory, password=password) as store:  # runs quick_check
        actives = {k.name: k.active for k in store.list_keys()}
        for name, (version, value) in expected.items():
            active = actives[name]
            assert active is not None, name
            # A rotation may have committed after the last line was printed (the kill
            # came before the print), never the other way round.
            assert active.version >= version, name
            if active.version == version:
                assert store.get(name) == value, name
            else:
                assert store.get(name) == value[:-1] + str(active.version).encode(), name
        count, broken = store.verify_audit()
        assert broken is None, broken
        assert count >= len(expected)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secure-keys"
    LocalStore.init(directory, password=PASSWORD, iterations=MIN_ITERATIONS).close()
    return directory


def test_two_processes_adding_and_rotating_at_once_lose_nothing(store_dir: Path) -> None:
    writers = [_spawn(WRITER, str(store_dir), ident, "25", PASSWORD) for ident in "ab"]
    lines: list[str] = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
        lines += out.splitlines()
    expected = _expected(lines)
    assert len(expected) == 50
    assert sum(1 for v, _ in expected.values() if v == 2) == 48
    _check(store_dir, expected, PASSWORD)
    with LocalStore.open(store_dir, password=PASSWORD) as store:
        assert store.get("wa-3", previous=True) == b"value-wa-3-1"


def _kill_after(process: subprocess.Popen[str], lines_wanted: int, jitter: float) -> list[str]:
    assert process.stdout is not None
    seen: list[str] = []
    while len(seen) < lines_wanted:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
    time.sleep(jitter)
    process.send_signal(signal.SIGKILL)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return seen + rest.splitlines()


def test_a_writer_killed_at_any_point_leaves_every_committed_key(store_dir: Path) -> None:
    rng = random.Random(22)
    lines: list[str] = []
    for round_ in range(6):
        writer = _spawn(WRITER, str(store_dir), f"r{round_}x", "-1", PASSWORD)
        # Kill after the first report plus a random number of writes and a random
        # fraction of one more (a write is a few milliseconds here, mostly fsync).
        lines += _kill_after(writer, rng.randint(1, 12), rng.uniform(0, 0.05))
        _check(store_dir, _expected(lines), PASSWORD)
    assert len(_expected(lines)) >= 6


def test_a_password_change_killed_midway_leaves_one_password_that_opens_everything(
    store_dir: Path,
) -> None:
    with LocalStore.open(store_dir, password=PASSWORD) as store:
        for n in range(30):
            store.add(f"k{n}", f"v{n}".encode())
    expected = {f"k{n}": (1, f"v{n}".encode()) for n in range(30)}
    rng = random.Random(7)
    current = PASSWORD
    for _ in range(3):
        process = _spawn(PASSWD, str(store_dir), current, "other password")
        reported = _kill_after(process, rng.randint(0, 2), rng.uniform(0, 0.3))
        candidates = [current, "other password", PASSWORD]
        changes = [line.split(" ", 1)[1] for line in reported if line.startswith("password ")]
        if changes:
            candidates.insert(0, changes[-1])
        opened = [p for p in dict.fromkeys(candidates) if _opens(store_dir, p)]
        assert len(opened) == 1, "exactly one password opens the store, never none"
        current = opened[0]
        _check(store_dir, expected, current)


def _opens(directory: Path, password: str) -> bool:
    try:
        LocalStore.open(directory, password=password).close()
    except Exception:  # any refusal means "not this password"
        return False
    return True
