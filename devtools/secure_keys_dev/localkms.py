"""A local KMS for development: a password-derived keyring and the controller's KMS config.

Writes, into a directory the caller owns, a random password file (mode 0600), the
keyring metadata derived from it, and the JSON KMS config the controller reads
(``--kms-config``). This is the embedded default of ``make demo`` and the e2e tests; a
real installation mounts the password from a Secret instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from secure_keys.core.hierarchy import DEFAULT_ITERATIONS
from secure_keys.core.kms.local import LocalKeyring
from secure_keys.core.memory import random_secret, zero

KEY_ID = "default"


def write_local_kms(
    directory: Path, *, key_id: str = KEY_ID, iterations: int = DEFAULT_ITERATIONS
) -> Path:
    """Create the keyring, password file and KMS config; return the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / f"{key_id}.password"
    entropy = random_secret(32)
    try:
        password = bytearray(entropy.hex().encode())
    finally:
        zero(entropy)
    try:
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(password + b"\n")
        keyring = LocalKeyring.create(key_id, password, iterations=iterations)
    finally:
        zero(password)
    keyring_path = directory / f"{key_id}.keyring.json"
    keyring_path.write_text(keyring.to_json())
    return write_kms_config(
        directory / "kms.json",
        [(key_id, keyring_path, password_file)],
        default=key_id,
    )


@dataclass(frozen=True)
class LocalKey:
    """Where one local key's files are."""

    key_id: str
    keyring: Path
    password_file: Path


def add_local_key(
    base_config: Path,
    directory: Path,
    key_id: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[Path, LocalKey]:
    """A new local key in ``directory``, and a KMS config listing the keys of
    ``base_config`` plus it (``base_config``'s default stays the default)."""
    write_local_kms(directory, key_id=key_id, iterations=iterations)
    added = LocalKey(key_id, directory / f"{key_id}.keyring.json", directory / f"{key_id}.password")
    base = json.loads(base_config.read_text())
    keys = [
        (
            entry["keyId"],
            Path(entry["options"]["keyringPath"]),
            Path(entry["options"]["passwordFile"]),
        )
        for entry in base["keys"]
        if entry["provider"] == "local"
    ]
    config = write_kms_config(
        directory / "kms.json",
        [*keys, (added.key_id, added.keyring, added.password_file)],
        default=base["default"]["keyId"],
    )
    return config, added


def write_kms_config(path: Path, local_keys: list[tuple[str, Path, Path]], *, default: str) -> Path:
    """A controller KMS config listing local keys (key id, keyring, password file)."""
    document = {
        "default": {"provider": "local", "keyId": default},
        "keys": [
            {
                "provider": "local",
                "keyId": key_id,
                "options": {"keyringPath": str(keyring), "passwordFile": str(password)},
            }
            for key_id, keyring, password in local_keys
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
