"""A damaged, truncated or tampered store gives a clear error and never a wrong value."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from secure_keys.store import LocalStore, StoreCorrupt
from tests.unit.store.conftest import PASSWORD


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
