"""The local encrypted store for developers: keys on a laptop, without a cluster.

``~/.config/secure-keys/`` (``$XDG_CONFIG_HOME/secure-keys/``) holds ``config.json``
(nothing secret), ``keys.db`` (SQLite; one AES-256-GCM envelope per key version, the same
envelope as the cluster's, its data key wrapped by a provider from the KMS registry),
``keys.db.lock`` (serialises writers) and ``audit.log`` (HMAC-chained records). The CLI's
``--store local`` and ``KeyManager(store="local")`` both use ``LocalStore``.

This layer sits beside the CLI's: it imports ``secure_keys.core`` only, never the
controller, the gateway or the Kubernetes client (``.importlinter``). ``LocalStore`` and
its companions are loaded on first use: the CLI imports ``secure_keys.store.errors`` for
every command, and the store's KMS registry and SQLite cost a cluster ``get`` a tenth of
a second of start-up it never uses (bench/access.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secure_keys.store.errors import (
    AuthenticationFailed,
    KeyExists,
    KeyNotFound,
    StoreCorrupt,
    StoreError,
    StoreExists,
    StoreNotFound,
    StorePermissions,
    TooManyAttempts,
)
from secure_keys.store.layout import StoreLayout, default_store_dir

if TYPE_CHECKING:
    from secure_keys.store.local import KeyInfo, LocalStore, VersionInfo
    from secure_keys.store.manager import KeyManager

__all__ = [
    "AuthenticationFailed",
    "KeyExists",
    "KeyInfo",
    "KeyManager",
    "KeyNotFound",
    "LocalStore",
    "StoreCorrupt",
    "StoreError",
    "StoreExists",
    "StoreLayout",
    "StoreNotFound",
    "StorePermissions",
    "TooManyAttempts",
    "VersionInfo",
    "default_store_dir",
]


_LAZY = {
    "KeyInfo": "secure_keys.store.local",
    "LocalStore": "secure_keys.store.local",
    "VersionInfo": "secure_keys.store.local",
    "KeyManager": "secure_keys.store.manager",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'secure_keys.store' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
