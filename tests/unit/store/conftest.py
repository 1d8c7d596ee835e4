"""Fixtures for the local store: a fresh store at the PBKDF2 floor and a settable clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.store import LocalStore

PASSWORD = "correct horse battery staple"


class Clock:
    """A clock the test moves by hand (the store takes ``clock=`` as its seam)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "secure-keys"


@pytest.fixture
def store(store_dir: Path, clock: Clock) -> Iterator[LocalStore]:
    opened = LocalStore.init(
        store_dir,
        password=PASSWORD,
        iterations=MIN_ITERATIONS,
        grace_seconds=600,
        retain=2,
        clock=clock,
    )
    with opened:
        yield opened
