"""The test-server protocol every KMS provider's integration tests are written against.

A ``KmsTestServer`` is one real KMS server started for a test (the local-kms process for
``aws``, the Go Cloud KMS emulator for ``gcp``, a SoftHSM2 token for ``pkcs11``, a keyring
directory for ``local``) holding two keys, ``"primary"`` and ``"other"``. The contract
suite (``test_contract.py``) and the e2e tests drive each server only through this
protocol, so every provider is held to the same cases.

Each ``tests/integration/kms/servers/<name>.py`` exposes
``open_server(tmp: Path) -> AbstractContextManager[KmsTestServer]``. It starts the server,
creates both keys, and on exit stops only the process it started (by PID). A missing
prerequisite raises ``pytest.skip.Exception`` naming the command that installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import KmsConfig, default_registry

__all__ = [
    "KEYS",
    "PROVIDERS",
    "KmsTestServer",
    "OpenServer",
    "binary",
    "build_provider",
    "open_server",
    "server_module",
]

PROVIDERS = ("local", "aws", "gcp", "pkcs11", "azure")
"""Every provider the contract suite runs against, in a stable order."""

KEYS = ("primary", "other")
"""The two keys every test server holds."""


class KmsTestServer(Protocol):
    """One running KMS server with the keys ``"primary"`` and ``"other"``."""

    name: str
    """The provider name: ``local``, ``aws``, ``gcp`` or ``pkcs11``."""

    def config(self, key: str = "primary") -> KmsConfig:
        """Exactly what a ``--kms-config`` entry for this key would hold."""
        ...

    def provider(self, key: str = "primary") -> KmsProvider:
        """A provider built through the default registry from ``config(key)``."""
        ...

    def rotate(self, key: str = "primary") -> None:
        """Make a new KEK version the one new wraps use (older versions still unwrap)."""
        ...

    def disable(self, key: str = "primary") -> None:
        """The key (or its current version) refuses use until ``enable``."""
        ...

    def enable(self, key: str = "primary") -> None:
        """Undo ``disable``."""
        ...

    def destroy(self, key: str = "primary") -> None:
        """Make the key unusable for good (or schedule its destruction)."""
        ...

    def stop(self) -> None:
        """The server goes away: calls raise ``KmsUnavailable`` within the provider timeout."""
        ...

    def start(self) -> None:
        """The server comes back with the same state (same data directory or token)."""
        ...


OpenServer = Callable[[Path], contextlib.AbstractContextManager[KmsTestServer]]


def server_module(name: str) -> OpenServer:
    """``open_server`` of ``tests.integration.kms.servers.<name>``.

    Every provider has one: a missing module is an error, not a skip. (A missing server
    binary or SDK is the module's to report, by skipping with the command that installs
    it; CI installs everything, so nothing skips there.)
    """
    module = importlib.import_module(f"tests.integration.kms.servers.{name}")
    opener: OpenServer = module.open_server
    return opener


def open_server(name: str, tmp: Path) -> contextlib.AbstractContextManager[KmsTestServer]:
    """Start the test server of provider ``name`` in ``tmp`` (skips if unavailable)."""
    return server_module(name)(tmp)


def binary(name: str, install: str = "make kms-servers") -> Path:
    """``build/bin/<name>`` (or ``$SECUREKEYS_BIN_DIR/<name>``); skips if it is not built."""
    env = os.environ.get("SECUREKEYS_BIN_DIR")
    directory = Path(env) if env else Path(__file__).resolve().parents[3] / "build" / "bin"
    path = directory / name
    if not os.access(path, os.X_OK):
        raise pytest.skip.Exception(f"{path} is not built: run `{install}`")
    return path


def build_provider(config: KmsConfig) -> KmsProvider:
    """Build a provider the way the controller does: through the default registry."""
    return default_registry().create(config)
