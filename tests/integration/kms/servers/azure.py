"""The ``azure`` provider's test server: our Key Vault test double (tools/azurekv).

``tools/azurekv/azurekv.py`` runs as a process of this interpreter on a free loopback
port, with TLS (a certificate it makes in its data directory, the only one the clients
here trust) and a client-secret identity whose token endpoint it serves itself. ``stop``
ends the process (by its PID); ``start`` runs a new one on the same port and data
directory, which brings back the same keys and honours the tokens issued before.

Administered through the unmodified ``azure-keyvault-keys`` SDK, as an operator would:

- ``rotate``: Key Vault's ``rotate`` (a new current version);
- ``disable`` / ``enable``: the current version's ``enabled`` attribute;
- ``destroy``: the key is deleted.

Workload identity and managed identity are not exercised here: only a client-secret
credential can be checked by a server of our own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import KmsConfig
from tests.integration.kms.harness import KEYS, KmsTestServer, build_provider

__all__ = ["SERVER", "AzureTestServer", "open_server"]

ROOT = Path(__file__).resolve().parents[4]
SERVER = ROOT / "tools" / "azurekv" / "azurekv.py"
TENANT = "secure-keys-test"
CLIENT_ID = "contract-suite"
START_WITHIN = 30.0
# Three attempts of at most 5 s: a stopped vault refuses connections at once, so an
# outage is still seen quickly, while a vault slowed by 32 concurrent RSA operations (and
# TLS handshakes) on a loaded machine still answers. No version cache, so a rotation is
# seen at once and key_version() asks the vault.
TEST_OPTIONS = {"timeoutSeconds": "5", "maxAttempts": "3", "keyVersionCacheSeconds": "0"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class AzureTestServer:
    directory: Path
    name: str = "azure"
    port: int = field(default_factory=_free_port)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)
    _versions: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def secret_file(self) -> Path:
        return self.directory / "client-secret"

    @property
    def ca_file(self) -> Path:
        return self.directory / "data" / "tls.crt"

    def key_id(self, key: str = "primary") -> str:
        return f"{self.url}/keys/{key}"

    def options(self) -> dict[str, str]:
        return {
            "credential": "client-secret",
            "tenantId": TENANT,
            "clientId": CLIENT_ID,
            "clientSecretFile": str(self.secret_file),
            "authorityHost": self.url,
            "caFile": str(self.ca_file),
            "verifyChallengeResource": "false",
            **TEST_OPTIONS,
        }

    # -- the process ----------------------------------------------------------------
    def start(self) -> None:
        if self._process is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.secret_file.exists():
            self.secret_file.write_text(secrets.token_urlsafe(24))
            self.secret_file.chmod(0o600)
        self._log = (self.directory / "azurekv.log").open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our interpreter, our server
            [
                sys.executable, str(SERVER), "--port", str(self.port),
                "--data-dir", str(self.directory / "data"), "--tenant", TENANT,
                "--client-id", CLIENT_ID, "--client-secret-file", str(self.secret_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )  # fmt: skip
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.directory / "azurekv.log").read_text(errors="replace")
                self._forget_process()
                raise RuntimeError(f"azurekv exited at start: {log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"azurekv did not listen on {self.url} in {START_WITHIN} s")

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # our own process, by its PID
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self._forget_process()

    def _forget_process(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def admin(self) -> Any:
        from azure.identity import ClientSecretCredential
        from azure.keyvault.keys import KeyClient

        credential = ClientSecretCredential(
            TENANT,
            CLIENT_ID,
            self.secret_file.read_text(),
            authority=self.url,
            disable_instance_discovery=True,
            connection_verify=str(self.ca_file),
        )
        return KeyClient(
            self.url,
            credential,
            verify_challenge_resource=False,
            connection_verify=str(self.ca_file),
        )

    # -- keys -----------------------------------------------------------------------
    def create_keys(self) -> None:
        admin = self.admin()
        for key in KEYS:
            self._versions[key] = admin.create_rsa_key(key, size=2048).properties.version

    # -- KmsTestServer ------------------------------------------------------------------
    def config(self, key: str = "primary") -> KmsConfig:
        return KmsConfig("azure", self.key_id(key), self.options())

    def provider(self, key: str = "primary") -> KmsProvider:
        return build_provider(self.config(key))

    def rotate(self, key: str = "primary") -> None:
        self._versions[key] = self.admin().rotate_key(key).properties.version

    def disable(self, key: str = "primary") -> None:
        self.admin().update_key_properties(key, self._versions[key], enabled=False)

    def enable(self, key: str = "primary") -> None:
        self.admin().update_key_properties(key, self._versions[key], enabled=True)

    def destroy(self, key: str = "primary") -> None:
        self.admin().begin_delete_key(key).wait()


@contextlib.contextmanager
def open_server(tmp: Path) -> Iterator[KmsTestServer]:
    """Start the test vault in ``tmp`` with keys ``primary`` and ``other``; stop it after."""
    try:
        import azure.keyvault.keys  # noqa: F401 - the `azure` extra
    except ImportError:
        raise pytest.skip.Exception(
            "the azure extra is not installed: pip install -e '.[azure]' (make test does)"
        ) from None
    server = AzureTestServer(tmp)
    server.start()
    try:
        server.create_keys()
        yield server
    finally:
        server.stop()
