"""Owns the local store's ``KeyManager``: the original design's library interface on the
developer's local store. ``secure_keys.KeyManager`` (``cli/manager.py``) is the public one:
it uses this class for ``store="local"`` and reads from the cluster or a pod's injected
files otherwise.

::

    from secure_keys import KeyManager

    km = KeyManager(store="local")            # or KeyManager(store="local", path=...)
    km.authenticate(password="...", mfa_token="123456")
    with km.key("github-api-key") as value:   # a bytearray, zeroed after the block
        client = make_client(value.decode())

``store="cluster"`` is refused here with ``NotImplementedError`` naming
``secure_keys.KeyManager``, which reads from the cluster (this package may not import
the Kubernetes client: ``.importlinter``, store-is-standalone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from secure_keys.store.errors import StoreError
from secure_keys.store.layout import default_store_dir
from secure_keys.store.local import KeyInfo, LocalStore, Password

__all__ = ["KeyManager", "StoreKind"]

StoreKind = Literal["local", "cluster"]


class KeyManager:
    """Keys from one store, after ``authenticate``. ``close`` (or ``with``) when done."""

    def __init__(self, store: StoreKind = "local", *, path: Path | None = None) -> None:
        if store == "cluster":
            raise NotImplementedError(
                "secure_keys.store.KeyManager is the local store's: for the cluster use "
                "secure_keys.KeyManager(store='cluster')"
            )
        if store != "local":
            raise ValueError(f"unknown store {str(store)[:32]!r} (local or cluster)")
        self.path = path or default_store_dir()
        self._store: LocalStore | None = None

    def authenticate(self, password: Password | None = None, mfa_token: str | None = None) -> None:
        """Open the store: the password (unless its KMS needs none) and, if the store asks
        for one, a TOTP code. Raises ``AuthenticationFailed`` (a ``StoreError``)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        self._store = LocalStore.open(self.path, password=password, mfa_token=mfa_token)

    def _opened(self) -> LocalStore:
        if self._store is None:
            raise StoreError("call authenticate() first")
        return self._store

    def get_key(self, name: str, *, previous: bool = False) -> bytearray:
        """The key's value in a fresh ``bytearray``; zero it when done (or use ``key``)."""
        return self._opened().get(name, previous=previous)

    @contextmanager
    def key(self, name: str, *, previous: bool = False) -> Iterator[bytearray]:
        """The key's value for a ``with`` block, zeroed when the block ends."""
        with self._opened().value(name, previous=previous) as value:
            yield value

    def add_key(self, name: str, value: bytes | bytearray) -> int:
        return self._opened().add(name, value)

    def rotate_key(self, name: str, value: bytes | bytearray) -> int:
        return self._opened().rotate(name, value)

    def remove_key(self, name: str) -> list[int]:
        return self._opened().remove(name)

    def list_keys(self) -> list[KeyInfo]:
        return self._opened().list_keys()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
