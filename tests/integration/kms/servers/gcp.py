"""The ``gcp`` provider's test server: our Cloud KMS emulator (tools/gcpkms) as a process.

``build/bin/gcpkms`` (``make kms-servers``) listens with plain gRPC on a free loopback
port and keeps its state in ``<tmp>/data``, so ``stop`` (the process is terminated, by
its PID) and ``start`` (a new process on the same port and data directory) bring back
the same keys. The key ring holds two ENCRYPT_DECRYPT keys, ``primary`` and ``other``.
The server is administered through the unmodified google-cloud-kms SDK, over gRPC:

- ``rotate``: a new CryptoKeyVersion, made primary;
- ``disable`` / ``enable``: the primary version's state, DISABLED / ENABLED;
- ``destroy``: the primary version is scheduled for destruction (DESTROY_SCHEDULED).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc  # type: ignore[import-untyped]  # ships no type information
import pytest
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcTransport,
)

from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import KmsConfig
from tests.integration.kms.harness import KEYS, KmsTestServer, build_provider

__all__ = ["BINARY", "KEY_RING", "GcpTestServer", "open_server"]

ROOT = Path(__file__).resolve().parents[4]
BINARY = Path(os.environ.get("SECUREKEYS_BIN_DIR", ROOT / "build" / "bin")) / "gcpkms"
LOCATION = "projects/secure-keys-test/locations/global"
KEY_RING = f"{LOCATION}/keyRings/contract"
START_WITHIN = 15.0
# What a test --kms-config entry holds: a short deadline, so an outage is seen quickly;
# four attempts, so their backoff outlasts the channel's reconnect delay once the server
# is back; and no version cache, so a rotation is seen at once and key_version() asks
# the server.
TEST_OPTIONS = {
    "insecure": "true",
    "timeoutSeconds": "2",
    "maxAttempts": "4",
    "keyVersionCacheSeconds": "0",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class GcpTestServer:
    """The emulator process, its port and data directory, and an admin client."""

    directory: Path
    name: str = "gcp"
    port: int = field(default_factory=_free_port)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)
    _channel: object | None = field(default=None, repr=False)
    _admin: kms_v1.KeyManagementServiceClient | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def key_name(self, key: str = "primary") -> str:
        return f"{KEY_RING}/cryptoKeys/{key}"

    # -- the process ----------------------------------------------------------------
    def start(self) -> None:
        if self._process is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = (self.directory / "gcpkms.log").open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [str(BINARY), "--port", str(self.port), "--data-dir", str(self.directory / "data")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.directory / "gcpkms.log").read_text(errors="replace")
                self._forget_process()
                raise RuntimeError(f"gcpkms exited at start: {log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"gcpkms did not listen on {self.endpoint} in {START_WITHIN} s")
        channel = grpc.insecure_channel(self.endpoint)
        self._channel = channel
        self._admin = kms_v1.KeyManagementServiceClient(
            transport=KeyManagementServiceGrpcTransport(channel=channel)
        )

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if self._channel is not None:
            self._channel.close()  # type: ignore[attr-defined]
        self._channel = self._admin = None
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

    @property
    def admin(self) -> kms_v1.KeyManagementServiceClient:
        if self._admin is None:
            raise RuntimeError("the gcpkms emulator is not running")
        return self._admin

    # -- keys -----------------------------------------------------------------------
    def create_keys(self) -> None:
        self.admin.create_key_ring(
            request={"parent": LOCATION, "key_ring_id": KEY_RING.rsplit("/", 1)[1]}
        )
        for key in KEYS:
            self.admin.create_crypto_key(
                request={
                    "parent": KEY_RING,
                    "crypto_key_id": key,
                    "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT},
                }
            )

    def primary_version(self, key: str = "primary") -> str:
        """The primary CryptoKeyVersion's full resource name."""
        name: str = self.admin.get_crypto_key(request={"name": self.key_name(key)}).primary.name
        return name

    def _set_primary_state(self, key: str, state: int) -> None:
        self.admin.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": self.primary_version(key), "state": state},
                "update_mask": {"paths": ["state"]},
            }
        )

    # -- KmsTestServer ------------------------------------------------------------------
    def config(self, key: str = "primary") -> KmsConfig:
        return KmsConfig("gcp", self.key_name(key), {"endpoint": self.endpoint, **TEST_OPTIONS})

    def provider(self, key: str = "primary") -> KmsProvider:
        return build_provider(self.config(key))

    def rotate(self, key: str = "primary") -> None:
        version = self.admin.create_crypto_key_version(
            request={"parent": self.key_name(key), "crypto_key_version": {}}
        )
        self.admin.update_crypto_key_primary_version(
            request={
                "name": self.key_name(key),
                "crypto_key_version_id": version.name.rsplit("/", 1)[1],
            }
        )

    def disable(self, key: str = "primary") -> None:
        self._set_primary_state(key, kms_v1.CryptoKeyVersion.CryptoKeyVersionState.DISABLED)

    def enable(self, key: str = "primary") -> None:
        self._set_primary_state(key, kms_v1.CryptoKeyVersion.CryptoKeyVersionState.ENABLED)

    def destroy(self, key: str = "primary") -> None:
        self.admin.destroy_crypto_key_version(request={"name": self.primary_version(key)})


@contextlib.contextmanager
def open_server(tmp: Path) -> Iterator[KmsTestServer]:
    """Start the emulator in ``tmp`` with keys ``primary`` and ``other``; stop it after."""
    if not os.access(BINARY, os.X_OK):
        raise pytest.skip.Exception(
            f"the Cloud KMS emulator {BINARY} is not built: run `make kms-servers`"
        )
    server = GcpTestServer(tmp)
    server.start()
    try:
        server.create_keys()
        yield server
    finally:
        server.stop()
