"""The ``local`` provider's "server": two password-derived keyrings in a directory.

There is no process: the KEK is derived inside whichever process reads the keyring and
its password file. So the server's operations act on those files, as an operator would:

- ``rotate`` adds a KEK version (fresh salt, new password listed first in the file);
- ``disable`` withholds the newest version's password (the file then holds an unrelated
  one), so building a provider raises ``KmsDenied``; ``enable`` puts it back;
- ``destroy`` overwrites the password file: no version can be derived again;
- ``stop``/``start`` have nothing to act on: a provider already built holds its KEKs in
  memory and never goes "unreachable". They skip the calling test, saying why.

A disabled or destroyed local key is refused when a provider is *built* from its files
(which is when the controller reads them); a provider built before keeps its KEKs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.local import LocalKeyring
from secure_keys.core.kms.registry import KmsConfig
from tests.integration.kms.harness import KEYS, KmsTestServer, build_provider

__all__ = ["LocalTestServer", "open_server"]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


@dataclass
class LocalTestServer:
    """Keyrings ``primary`` and ``other`` in ``directory``, at the PBKDF2 iteration floor."""

    directory: Path
    name: str = "local"
    _withheld: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for key in KEYS:
            password = secrets.token_hex(16)
            keyring = LocalKeyring.create(key, password, iterations=MIN_ITERATIONS)
            self._keyring_path(key).write_text(keyring.to_json())
            _write_private(self._password_path(key), password + "\n")

    def _keyring_path(self, key: str) -> Path:
        return self.directory / f"{key}.keyring.json"

    def _password_path(self, key: str) -> Path:
        return self.directory / f"{key}.password"

    def config(self, key: str = "primary") -> KmsConfig:
        return KmsConfig(
            "local",
            key,
            {
                "keyringPath": str(self._keyring_path(key)),
                "passwordFile": str(self._password_path(key)),
            },
        )

    def provider(self, key: str = "primary") -> KmsProvider:
        return build_provider(self.config(key))

    def rotate(self, key: str = "primary") -> None:
        password = secrets.token_hex(16)
        ring = LocalKeyring.from_json(self._keyring_path(key).read_text())
        ring = ring.with_new_version(password, iterations=MIN_ITERATIONS)
        self._keyring_path(key).write_text(ring.to_json())
        older = self._password_path(key).read_text()
        _write_private(self._password_path(key), password + "\n" + older)

    def disable(self, key: str = "primary") -> None:
        if key in self._withheld:
            return
        self._withheld[key] = self._password_path(key).read_text()
        # Not an empty file (that is a configuration error, not a refusal): a password
        # that opens no version, so unlocking the newest version is denied.
        _write_private(self._password_path(key), secrets.token_hex(16) + "\n")

    def enable(self, key: str = "primary") -> None:
        withheld = self._withheld.pop(key, None)
        if withheld is not None:
            _write_private(self._password_path(key), withheld)

    def destroy(self, key: str = "primary") -> None:
        self._withheld.pop(key, None)
        _write_private(self._password_path(key), secrets.token_hex(16) + "\n")

    def stop(self) -> None:
        raise pytest.skip.Exception(
            "the local provider has no server to stop: its KEKs are derived in the process "
            "that uses them, so it cannot become unreachable"
        )

    def start(self) -> None:
        self.stop()


@contextlib.contextmanager
def open_server(tmp: Path) -> Iterator[KmsTestServer]:
    yield LocalTestServer(tmp)
