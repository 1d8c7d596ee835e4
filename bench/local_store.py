"""Benchmark: the local store's ``get`` and ``add`` against plain baselines, in one run.

- ``get_vs_file``: one ``LocalStore.get`` of a 64-byte value (a read transaction, one
  AES-256-GCM unwrap under the local KEK, one envelope open, and the audit record with its
  fsync) divided by reading a plain file of the same size;
- ``get_vs_sqlite``: the same ``get`` divided by ``sqlite3`` reading an unencrypted
  64-byte row from a table of the same size;
- ``adds_per_s``: ``add`` of new keys, one committed (fsync'ed) transaction and one audit
  record each;
- ``kdf_ms``: one PBKDF2 derivation at the default iteration count: what opening the
  store with a password costs, once per process.

All timings interleave several rounds and keep the best of each. The last line printed
is JSON with those keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "operator"))

from secure_keys.core.hierarchy import (  # noqa: E402 - after the path set-up above
    DEFAULT_ITERATIONS,
    MIN_ITERATIONS,
    KdfParams,
    KeyHierarchy,
)
from secure_keys.core.memory import zero  # noqa: E402
from secure_keys.store import LocalStore  # noqa: E402

VALUE = os.urandom(64)
PASSWORD = os.urandom(16).hex()  # a throwaway store
KEYS = 100


def _per_op(fn: Callable[[], None], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-local-store-") as tmp:
        base = Path(tmp)
        store = LocalStore.init(base / "store", password=PASSWORD, iterations=MIN_ITERATIONS)
        for n in range(KEYS):
            store.add(f"key-{n}", VALUE)
        plain = base / "plain.txt"
        plain.write_bytes(VALUE)
        db = sqlite3.connect(base / "plain.db", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE kv (name TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"key-{n}", VALUE) for n in range(KEYS)])

        def get() -> None:
            zero(store.get("key-42"))

        def read_file() -> None:
            with open(plain, "rb") as handle:
                handle.read()

        def read_sqlite() -> None:
            db.execute("SELECT value FROM kv WHERE name = ?", ("key-42",)).fetchone()

        added = [0]

        def add() -> None:
            store.add(f"new-{added[0]}", VALUE)
            added[0] += 1

        get_t = file_t = sqlite_t = add_t = float("inf")
        for _ in range(args.rounds):
            file_t = min(file_t, _per_op(read_file, args.ops))
            sqlite_t = min(sqlite_t, _per_op(read_sqlite, args.ops))
            get_t = min(get_t, _per_op(get, args.ops))
            add_t = min(add_t, _per_op(add, max(args.ops // 5, 10)))
        kdf_t = float("inf")
        params = KdfParams.generate(DEFAULT_ITERATIONS)
        for _ in range(3):
            start = time.perf_counter()
            KeyHierarchy.derive(PASSWORD, params).wipe()
            kdf_t = min(kdf_t, time.perf_counter() - start)
        store.close()
        db.close()

    result = {
        "bench": "local_store",
        "get_vs_file": round(get_t / file_t, 1),
        "get_vs_sqlite": round(get_t / sqlite_t, 1),
        "adds_per_s": round(1 / add_t, 1),
        "kdf_ms": round(kdf_t * 1e3, 1),
        "get_us": round(get_t * 1e6, 1),
        "file_read_us": round(file_t * 1e6, 1),
        "sqlite_read_us": round(sqlite_t * 1e6, 1),
        "kdf_iterations": DEFAULT_ITERATIONS,
    }
    print(
        f"get {result['get_us']} us (file {result['file_read_us']} us, sqlite "
        f"{result['sqlite_read_us']} us); {result['adds_per_s']} adds/s; "
        f"KDF {result['kdf_ms']} ms at {DEFAULT_ITERATIONS:,} iterations"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
