"""A damaged, truncated or tampered store gives a clear error and never a wrong value."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from secure_keys.store import LocalStore, StoreCorrupt
from tests.unit.store.conftest import PASSWORD, Clock


def _envelope(store_dir: Path, name: str, version: int) -> bytes:
    with sqlite3.connect(store_dir / "keys.db") as conn:
        (blob,) = conn.execute(
            "SELECT envelope FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
    assert isinstance(blob, bytes)
    return blob


def _set_envelope(store_dir: Path, name: str, version: int, blob: bytes) -> None:
    with sqlite3.connect(store_dir / "keys.db") as conn:
        conn.execute(
            "UPDATE versions SET envelope = ? WHERE name = ? AND version = ?",
            (blob, name, version),
        )


def test_a_database_of_garbage_is_refused_clearly(store: LocalStore, store_dir: Path) -> None:
    store.add("k", b"v")
    store.close()
    db = store_dir / "keys.db"
    db.write_bytes(b"\x5a" * db.stat().st_size)
    with pytest.raises(StoreCorrupt, match=r"keys\.db is damaged.*backup"):
        LocalStore.open(store_dir, password=PASSWORD)


@pytest.mark.parametrize("keep", [0, 100, 4096, 9000])
def test_a_truncated_database_is_refused_clearly(
    store: LocalStore, store_dir: Path, keep: int
) -> None:
    for n in range(20):
        store.add(f"key-{n}", b"x" * 2000)
    store.close()
    db = store_dir / "keys.db"
    for leftover in (store_dir / "keys.db-wal", store_dir / "keys.db-shm"):
        assert not leftover.exists(), "a clean close checkpoints the WAL into keys.db"
    assert db.stat().st_size > keep
    with db.open("r+b") as handle:
        handle.truncate(keep)
    with pytest.raises(StoreCorrupt, match="damaged"):
        _open_and_read_all(store_dir, [f"key-{n}" for n in range(20)])


def _open_and_read_all(store_dir: Path, names: list[str]) -> None:
    # Should the damage lie only in pages nothing checks on open, reading every key must
    # still refuse rather than answer.
    with LocalStore.open(store_dir, password=PASSWORD) as opened:
        for name in names:
            opened.get(name)


def test_a_flipped_bit_in_an_envelope_never_yields_a_value(
    store: LocalStore, store_dir: Path
) -> None:
    store.add("k", b"the-real-value")
    blob = bytearray(_envelope(store_dir, "k", 1))
    blob[-3] ^= 0x01
    _set_envelope(store_dir, "k", 1, bytes(blob))
    with pytest.raises(StoreCorrupt, match="version 1 does not open"):
        store.get("k")
    assert store.audit_records()[-1]["result"] == "authentication-failed"


def test_an_envelope_moved_to_another_key_does_not_open(store: LocalStore, store_dir: Path) -> None:
    store.add("prod-key", b"production")
    store.add("dev-key", b"development")
    _set_envelope(store_dir, "dev-key", 1, _envelope(store_dir, "prod-key", 1))
    with pytest.raises(StoreCorrupt, match="dev-key"):
        store.get("dev-key")


def test_an_envelope_from_another_store_does_not_open(tmp_path: Path, store: LocalStore) -> None:
    other = LocalStore.init(tmp_path / "other", password=PASSWORD, iterations=100_000)
    other.add("k", b"from the other store")
    store.add("k", b"mine")
    _set_envelope(store.layout.directory, "k", 1, _envelope(tmp_path / "other", "k", 1))
    with pytest.raises(StoreCorrupt):
        store.get("k")


def test_a_config_pointing_at_another_key_is_refused(store: LocalStore, store_dir: Path) -> None:
    store.close()
    config = json.loads((store_dir / "config.json").read_text())
    config["storeId"] = "store-0000000000000000"
    (store_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(StoreCorrupt, match="store-key does not open"):
        LocalStore.open(store_dir, password=PASSWORD)


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"kind": "secure-keys/local-store", "format": 2}', '{"kind": "x"}'],
)
def test_a_malformed_config_is_refused(store: LocalStore, store_dir: Path, text: str) -> None:
    store.close()
    (store_dir / "config.json").write_text(text)
    with pytest.raises(StoreCorrupt, match=r"config\.json"):
        LocalStore.open(store_dir, password=PASSWORD)


def _sql(store_dir: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(store_dir / "keys.db") as conn:
        conn.execute(statement, args)


def test_a_revoked_version_cannot_be_brought_back_by_editing_states(
    store: LocalStore, store_dir: Path
) -> None:
    # The hostile review's attack: swap the states so that `get` serves the old value.
    store.add("k", b"old, revoked value")
    store.rotate("k", b"current value")
    _sql(store_dir, "UPDATE versions SET state = 'Pending' WHERE name = 'k' AND version = 2")
    _sql(store_dir, "UPDATE versions SET state = 'Active' WHERE name = 'k' AND version = 1")
    with pytest.raises(StoreCorrupt, match=r"'k' version \d fails its integrity check"):
        store.get("k")
    with pytest.raises(StoreCorrupt, match="integrity check"):
        store.list_keys()
    with LocalStore.open(store_dir, password=PASSWORD) as other, pytest.raises(StoreCorrupt):
        other.get("k")


@pytest.mark.parametrize(
    "edit",
    [
        "archived_at = '2099-01-01T00:00:00Z'",  # stretch the grace period of --previous
        "created_at = '2000-01-01T00:00:00Z'",
        "kms_key_version = '0'",
        "mac = zeroblob(32)",
    ],
)
def test_any_edit_of_a_version_row_is_refused(
    store: LocalStore, store_dir: Path, edit: str
) -> None:
    store.add("k", b"v1")
    store.rotate("k", b"v2")
    _sql(store_dir, f"UPDATE versions SET {edit} WHERE name = 'k' AND version = 1")  # noqa: S608
    with pytest.raises(StoreCorrupt, match="integrity check"):
        store.get("k", previous=True)


def test_a_row_copied_to_another_key_or_version_is_refused(
    store: LocalStore, store_dir: Path
) -> None:
    store.add("a", b"a1")
    store.add("b", b"b1")
    store.rotate("b", b"b2")
    with sqlite3.connect(store_dir / "keys.db") as conn:
        (mac,) = conn.execute("SELECT mac FROM versions WHERE name = 'a'").fetchone()
        conn.execute("UPDATE versions SET mac = ? WHERE name = 'b' AND version = 2", (mac,))
    with pytest.raises(StoreCorrupt, match="integrity check"):
        store.get("b")


def test_a_tampered_row_is_not_laundered_by_a_rewrap(store: LocalStore, store_dir: Path) -> None:
    store.add("k", b"v1")
    store.rotate("k", b"v2")
    _sql(store_dir, "UPDATE versions SET archived_at = '2099-01-01T00:00:00Z' WHERE version = 1")
    with pytest.raises(StoreCorrupt, match="integrity check"):
        store.change_password(PASSWORD, "another password", iterations=100_000)
    with pytest.raises(StoreCorrupt, match="integrity check"):
        store.get("k")


def test_a_store_of_the_schema_without_macs_says_to_run_init_again(
    store: LocalStore, store_dir: Path
) -> None:
    store.close()
    _sql(store_dir, "PRAGMA user_version = 1")
    with pytest.raises(StoreCorrupt, match="run `init` again"):
        LocalStore.open(store_dir, password=PASSWORD)


def test_every_legitimate_transition_rewrites_the_mac(
    store: LocalStore, store_dir: Path, clock: Clock
) -> None:
    store.add("k", b"v1")
    store.rotate("k", b"v2", stage=True)
    store.promote("k")  # v1 Archived
    clock.advance(seconds=601)
    store.rotate("k", b"v3")  # v2 Archived, v1 past its grace and beyond retain: Destroyed
    store.add("gone", b"x")
    store.remove("gone")
    store.rewrap()
    store.change_password(PASSWORD, "new password", iterations=100_000)
    store.close()
    with LocalStore.open(store_dir, password="new password", clock=clock) as reopened:
        states = {k.name: [v.state for v in k.versions] for k in reopened.list_keys()}
        assert states == {"k": ["Destroyed", "Archived", "Active"]}
        assert reopened.get("k") == b"v3"
        assert reopened.get("k", previous=True) == b"v2"
        with sqlite3.connect(store_dir / "keys.db") as conn:
            rows = conn.execute("SELECT name, state FROM versions ORDER BY name").fetchall()
        assert ("gone", "Destroyed") in rows
