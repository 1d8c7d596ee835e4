"""Owns the KMS configuration file (``--kms-config``): the keys a process may use.

The controller wraps data keys with them and the gateway's broker unwraps with the same
file, so both read it here. JSON, the cluster default first::

    {"default": {"provider": "local", "keyId": "default"},
     "keys": [{"provider": "local", "keyId": "default",
               "options": {"keyringPath": "...", "passwordFile": "..."}}]}

Option values are kept as strings and never logged by this module; a secret (a password)
is named by a file path, never written here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secure_keys.core.kms.registry import KmsConfig

__all__ = ["KmsSettings"]


@dataclass(frozen=True)
class KmsSettings:
    """The configured keys by (provider, key id), and the default one."""

    default: tuple[str, str]
    keys: Mapping[tuple[str, str], KmsConfig] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> KmsSettings:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("KMS config must be a JSON object")
        keys: dict[tuple[str, str], KmsConfig] = {}
        entries = document.get("keys", [])
        if not isinstance(entries, list):
            raise ValueError("KMS config: keys must be a list")
        for index, entry in enumerate(entries):
            where = f"KMS config: keys[{index}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be an object")
            missing = [f for f in ("provider", "keyId") if not isinstance(entry.get(f), str)]
            if missing:
                raise ValueError(f"{where} needs string fields {missing}")
            options = entry.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError(f"{where}.options must be an object")
            config = KmsConfig(
                provider=entry["provider"],
                key_id=entry["keyId"],
                options={str(k): str(v) for k, v in options.items()},
            )
            keys[(config.provider, config.key_id)] = config
        default = document.get("default") or {}
        chosen = (str(default.get("provider", "")), str(default.get("keyId", "")))
        if chosen not in keys:
            raise ValueError(f"default KMS key {chosen[0]}/{chosen[1]} is not among the keys")
        return cls(chosen, keys)

    @classmethod
    def load(cls, path: Path) -> KmsSettings:
        return cls.from_json(path.read_text())
