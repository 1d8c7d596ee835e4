"""The ``aws`` provider's test server: local-kms (the AWS KMS API in Go), one process per test.

local-kms is built from ``tools/local-kms`` into ``build/bin`` (``make kms-servers``). It
listens on plain HTTP; the provider reaches it through ``endpointUrl`` with static
credentials from a shared credentials file in the test's directory (any value works).
Its data (LevelDB) lives in the test directory, so ``stop``/``start`` keep every key.

Keys are aliases, as production should configure them: ``alias/secure-keys-primary`` and
``alias/secure-keys-other``. local-kms does not implement ``RotateKeyOnDemand`` (501), and
AWS's own rotation keeps the key ARN anyway, so ``rotate`` models KEK rotation the way
this provider can see it: a new key, and the alias moved onto it. ``disable``/``enable``
act on the key the alias points at; ``destroy`` schedules its deletion (7 days, the
minimum), which AWS treats as unusable at once (``KMSInvalidStateException``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import KmsConfig
from secure_keys_dev.cluster import free_port
from tests.integration.kms.harness import KEYS, KmsTestServer, binary, build_provider

__all__ = ["REGION", "LocalKmsServer", "alias_of", "open_server"]

REGION = "eu-west-1"
STARTUP_SECONDS = 15.0


def alias_of(key: str) -> str:
    return f"alias/secure-keys-{key}"


class LocalKmsServer:
    """A local-kms process on a loopback port, with data in ``directory``."""

    name = "aws"

    def __init__(self, directory: Path, executable: Path) -> None:
        self.directory = directory
        self.executable = executable
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.credentials = directory / "credentials"
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: Any = None

    # -- process --------------------------------------------------------------------------
    def start(self) -> None:
        if self._process is not None:
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "KMS_DATA_PATH": str(self.data),
            "KMS_REGION": REGION,
            "KMS_SEED_PATH": str(self.directory / "no-seed.yaml"),
        }
        log = (self.directory / "local-kms.log").open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our own built binary
            [str(self.executable)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                self.admin().list_keys(Limit=1)
                return
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.directory / "local-kms.log").read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"local-kms did not start: {tail}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    # -- administration (what an operator would do with the AWS CLI) ------------------------
    def admin(self) -> Any:
        if self._admin is None:
            import boto3  # type: ignore[import-untyped]  # only the aws server needs it
            from botocore.config import Config  # type: ignore[import-untyped]

            self._admin = boto3.session.Session().client(
                "kms",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id="test",
                aws_secret_access_key="test",
                config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
            )
        return self._admin

    def target(self, key: str) -> str:
        """The ARN the key's alias points at now."""
        arn: str = self.admin().describe_key(KeyId=alias_of(key))["KeyMetadata"]["Arn"]
        return arn

    def create(self, key: str) -> None:
        key_id = self.admin().create_key(Description=f"secure-keys test {key}")["KeyMetadata"][
            "KeyId"
        ]
        self.admin().create_alias(AliasName=alias_of(key), TargetKeyId=key_id)

    # -- KmsTestServer --------------------------------------------------------------------
    def config(self, key: str = "primary") -> KmsConfig:
        return KmsConfig(
            "aws",
            alias_of(key),
            {
                "region": REGION,
                "endpointUrl": self.endpoint,
                "credentialsFile": str(self.credentials),
                "connectTimeoutSeconds": "1",
                "readTimeoutSeconds": "2",
                "maxAttempts": "3",
                "keyVersionCacheSeconds": "0",
            },
        )

    def provider(self, key: str = "primary") -> KmsProvider:
        return build_provider(self.config(key))

    def rotate(self, key: str = "primary") -> None:
        new = self.admin().create_key(Description=f"secure-keys test {key}, rotated")
        self.admin().update_alias(AliasName=alias_of(key), TargetKeyId=new["KeyMetadata"]["KeyId"])

    def disable(self, key: str = "primary") -> None:
        self.admin().disable_key(KeyId=self.target(key))

    def enable(self, key: str = "primary") -> None:
        self.admin().enable_key(KeyId=self.target(key))

    def destroy(self, key: str = "primary") -> None:
        self.admin().schedule_key_deletion(KeyId=self.target(key), PendingWindowInDays=7)


@contextlib.contextmanager
def open_server(tmp: Path) -> Iterator[KmsTestServer]:
    if importlib.util.find_spec("boto3") is None:
        raise pytest.skip.Exception(
            "boto3 is not installed: run `make test` (installs the aws extra)"
        )
    tmp.mkdir(parents=True, exist_ok=True)
    server = LocalKmsServer(tmp, binary("local-kms"))
    server.start()
    try:
        for key in KEYS:
            server.create(key)
        yield server
    finally:
        server.stop()
