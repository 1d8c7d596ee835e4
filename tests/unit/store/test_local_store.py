"""The local store: layout and modes, keys and their versions, rotation, the password."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.store import (
    AuthenticationFailed,
    KeyExists,
    KeyNotFound,
    LocalStore,
    StoreError,
    StoreExists,
    StoreNotFound,
    StorePermissions,
    TooManyAttempts,
    default_store_dir,
)
from secure_keys.store.local import failure_delay
from tests.unit.store.conftest import PASSWORD, Clock


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_store_follows_xdg_config_home() -> None:
    assert default_store_dir({"XDG_CONFIG_HOME": "/x/conf"}) == Path("/x/conf/secure-keys")
    # The spec says a relative value is ignored.
    assert default_store_dir({"XDG_CONFIG_HOME": "rel"}) == Path.home() / ".config/secure-keys"
    assert default_store_dir({}) == Path.home() / ".config/secure-keys"


def test_init_lays_out_the_design_files_private(store: LocalStore, store_dir: Path) -> None:
    store.add("github-token", b"v1")
    assert _mode(store_dir) == 0o700
    for name in ("config.json", "keys.db", "keys.db.lock", "audit.log"):
        assert _mode(store_dir / name) == 0o600, name
    config = json.loads((store_dir / "config.json").read_text())
    assert config["kms"]["provider"] == "local"
    assert set(config) == {"kind", "format", "storeId", "kms", "rotation", "mfa"}


def test_init_refuses_to_overwrite_a_store(store: LocalStore, store_dir: Path) -> None:
    with pytest.raises(StoreExists):
        LocalStore.init(store_dir, password="other", iterations=MIN_ITERATIONS)
    assert LocalStore.open(store_dir, password=PASSWORD).config == store.config


def test_a_missing_store_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound, match="init"):
        LocalStore.open(tmp_path / "nothing", password=PASSWORD)


@pytest.mark.parametrize(
    ("target", "mode", "fix"),
    [(".", 0o755, "chmod 700"), ("keys.db", 0o644, "chmod 600"), ("audit.log", 0o660, "chmod 600")],
)
def test_loose_modes_are_refused_with_the_fix(
    store: LocalStore, store_dir: Path, target: str, mode: int, fix: str
) -> None:
    store.add("k", b"v")
    os.chmod(store_dir / target, mode)
    with pytest.raises(StorePermissions, match=fix) as caught:
        LocalStore.open(store_dir, password=PASSWORD)
    assert str(store_dir / target).rstrip("/.") in str(caught.value)


def test_add_then_get_returns_the_value(store: LocalStore) -> None:
    assert store.add("github-token", b"ghp_123") == 1
    assert store.get("github-token") == bytearray(b"ghp_123")
    with store.value("github-token") as value:
        held = value
        assert value == b"ghp_123"
    assert held == bytearray(7), "value() zeroes the buffer when the block ends"


def test_add_of_an_existing_key_is_refused_and_keeps_it(store: LocalStore) -> None:
    store.add("k", b"first")
    with pytest.raises(KeyExists, match="rotate"):
        store.add("k", b"second")
    assert store.get("k") == b"first"


@pytest.mark.parametrize("name", ["UPPER", "under_score", "-lead", "a" * 300, "sp ace", ""])
def test_key_names_are_kubernetes_names(store: LocalStore, name: str) -> None:
    with pytest.raises(StoreError, match="not valid"):
        store.add(name, b"v")


def test_rotate_archives_the_old_version_for_its_grace_period(
    store: LocalStore, clock: Clock
) -> None:
    store.add("k", b"one")
    clock.advance(seconds=10)
    assert store.rotate("k", b"two") == 2
    assert store.get("k") == b"two"
    assert store.get("k", previous=True) == b"one"
    [info] = store.list_keys()
    assert [(v.version, v.state) for v in info.versions] == [(1, "Archived"), (2, "Active")]
    clock.advance(seconds=600)  # the grace period (600 s) is over
    with pytest.raises(KeyNotFound, match="previous"):
        store.get("k", previous=True)


def test_versions_beyond_retain_are_destroyed_after_their_grace(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    store.add("k", b"one")
    store.rotate("k", b"two")
    clock.advance(seconds=601)
    store.rotate("k", b"three")  # retain=2: v3 Active, v2 Archived (in grace), v1 past it
    [info] = store.list_keys()
    assert [(v.version, v.state) for v in info.versions] == [
        (1, "Destroyed"),
        (2, "Archived"),
        (3, "Active"),
    ]
    with sqlite3.connect(store_dir / "keys.db") as conn:
        blobs = dict(conn.execute("SELECT version, envelope FROM versions").fetchall())
    assert blobs[1] is None, "a Destroyed version's envelope (and data key) is gone"
    assert blobs[2] is not None


def test_a_staged_version_is_pending_until_promoted(store: LocalStore) -> None:
    store.add("k", b"one")
    assert store.rotate("k", b"two", stage=True) == 2
    assert store.get("k") == b"one"
    assert [v.state for v in store.list_keys()[0].versions] == ["Active", "Pending"]
    with pytest.raises(StoreError, match="promote"):
        store.rotate("k", b"three")
    assert store.promote("k") == 2
    assert store.get("k") == b"two"
    assert store.get("k", previous=True) == b"one"


def test_rm_destroys_every_version_and_numbers_never_repeat(store: LocalStore) -> None:
    store.add("k", b"one")
    store.rotate("k", b"two")
    assert store.remove("k") == [1, 2]
    assert store.list_keys() == []
    with pytest.raises(KeyNotFound):
        store.get("k")
    with pytest.raises(KeyNotFound):
        store.remove("k")
    assert store.add("k", b"again") == 3


def test_rotate_of_a_missing_key_says_add(store: LocalStore) -> None:
    with pytest.raises(KeyNotFound, match="add"):
        store.rotate("nope", b"v")


def test_a_wrong_password_is_refused(store: LocalStore, store_dir: Path) -> None:
    store.add("k", b"v")
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        LocalStore.open(store_dir, password="not it")
    with pytest.raises(AuthenticationFailed, match="needs its password"):
        LocalStore.open(store_dir)


def test_repeated_wrong_passwords_are_refused_until_their_delay_ran_out(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    def attempt(password: str) -> str:
        try:
            LocalStore.open(store_dir, password=password, clock=clock).close()
        except TooManyAttempts as exc:
            return f"refused {exc.retry_after:g}"
        except AuthenticationFailed:
            return "wrong"
        return "opened"

    # The count is kept in keys.db, so separate openings add up; from the third
    # failure in a row the next attempt is allowed only 1 s, 2 s, 4 s ... later, and an
    # attempt before that is refused without running the KDF.
    assert [attempt("guess") for _ in range(3)] == ["wrong"] * 3
    assert attempt("guess") == "refused 1"
    assert attempt(PASSWORD) == "refused 1", "even the right password waits its turn"
    clock.advance(seconds=1)
    assert attempt("guess") == "wrong"
    assert attempt("guess") == "refused 2"
    clock.advance(seconds=1.5)
    assert attempt("guess") == "refused 0.5"
    clock.advance(seconds=0.5)
    assert attempt(PASSWORD) == "opened"
    assert attempt("guess") == "wrong", "a right password resets the count"
    events = [r for r in store.audit_records() if r["event"] == "auth.failures"]
    assert [r["count"] for r in events] == [4]


def test_a_refusal_names_the_time_to_retry(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed, match="wrong password"):
            LocalStore.open(store_dir, password="guess", clock=clock)
    with pytest.raises(TooManyAttempts, match=r"allowed at 2026-12-01T12:00:01\.000\+00:00"):
        LocalStore.open(store_dir, password="guess", clock=clock)


def test_a_clock_set_back_never_lengthens_the_wait(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            LocalStore.open(store_dir, password="guess", clock=clock)
    clock.advance(days=-1)
    with pytest.raises(TooManyAttempts) as refused:
        LocalStore.open(store_dir, password=PASSWORD, clock=clock)
    assert refused.value.retry_after == 1.0


def test_the_failure_delay_is_capped() -> None:
    assert [failure_delay(n) for n in range(6)] == [0, 0, 0, 1, 2, 4]
    assert failure_delay(1000) == 30


def test_passwd_moves_every_key_to_the_new_password(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    store.add("a", b"alpha")
    store.rotate("a", b"alpha-2")
    store.add("b", b"beta")
    with pytest.raises(AuthenticationFailed):
        store.change_password("wrong current", "new password")
    store.change_password(PASSWORD, "new password", iterations=MIN_ITERATIONS)
    with pytest.raises(AuthenticationFailed):
        LocalStore.open(store_dir, password=PASSWORD)
    with LocalStore.open(store_dir, password="new password", clock=clock) as reopened:
        assert reopened.get("a") == b"alpha-2"
        assert reopened.get("a", previous=True) == b"alpha"
        assert reopened.get("b") == b"beta"
        assert {v.kms_key_version for k in reopened.list_keys() for v in k.versions} == {"2"}


def test_the_audit_log_records_each_operation_and_verifies(
    store: LocalStore, store_dir: Path
) -> None:
    store.add("k", b"v")
    store.get("k")
    store.remove("k")
    events = [(r["event"], r.get("key")) for r in store.audit_records()]
    assert events == [("store.init", None), ("key.add", "k"), ("key.get", "k"), ("key.rm", "k")]
    assert store.verify_audit() == (4, None)
    lines = (store_dir / "audit.log").read_text().splitlines()
    lines[2] = lines[2].replace('"key.get"', '"key.gex"')
    (store_dir / "audit.log").write_text("\n".join(lines) + "\n")
    count, broken = store.verify_audit()
    assert broken is not None
    assert (count, broken.index) == (4, 2)
