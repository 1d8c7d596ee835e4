"""Controller configuration: its namespace, and the KMS keys it may use.

The KMS file (``--kms-config``, JSON) lists the keys this controller can wrap with and
which one is the cluster default::

    {"default": {"provider": "local", "keyId": "default"},
     "keys": [{"provider": "local", "keyId": "default",
               "options": {"keyringPath": "...", "passwordFile": "..."}}]}

``KmsDirectory`` builds each provider lazily, on first use, and keeps it. A provider
that fails to build (a password file not mounted yet, a KMS endpoint down) is reported as
``KmsUnavailable`` and tried again on the next reconcile, so one broken key never stops
ApiKeys that use another.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secure_keys.controller.models import KmsRef
from secure_keys.core.errors import KmsError, KmsUnavailable
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import (
    KmsConfig,
    KmsRegistry,
    UnknownProviderError,
    default_registry,
)


class KmsNotConfigured(LookupError):
    """spec.kms names a provider or key this controller has no configuration for."""


@dataclass(frozen=True)
class KmsSettings:
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


class KmsDirectory:
    """Resolves spec.kms to a built provider; builds each provider once, lazily."""

    def __init__(
        self,
        settings: KmsSettings,
        registry: KmsRegistry | None = None,
        *,
        retry_after: float = 5.0,
    ) -> None:
        self.settings = settings
        self._registry = registry or default_registry()
        self._built: dict[tuple[str, str], KmsProvider] = {}
        self._failed: dict[tuple[str, str], tuple[float, KmsError]] = {}
        self._lock = threading.Lock()
        self.retry_after = retry_after

    def resolve(self, ref: KmsRef) -> KmsConfig:
        provider = ref.provider or self.settings.default[0]
        if ref.key_id:
            key = (provider, ref.key_id)
        elif provider == self.settings.default[0]:
            key = self.settings.default
        else:
            matches = sorted(k for k in self.settings.keys if k[0] == provider)
            if not matches:
                raise KmsNotConfigured(f"KMS provider {provider!r} is not configured")
            key = matches[0]
        config = self.settings.keys.get(key)
        if config is None:
            raise KmsNotConfigured(f"KMS key {key[0]}/{key[1]} is not configured")
        return config

    def built(self, ref: KmsRef) -> KmsProvider | None:
        """The provider for ``ref`` if it is already built (never blocks, never builds)."""
        try:
            config = self.resolve(ref)
        except KmsNotConfigured:
            return None
        with self._lock:
            return self._built.get((config.provider, config.key_id))

    def provider(self, ref: KmsRef) -> KmsProvider:
        config = self.resolve(ref)
        key = (config.provider, config.key_id)
        with self._lock:
            built = self._built.get(key)
            failed = self._failed.get(key)
        if built is not None:
            return built
        if failed is not None and time.monotonic() < failed[0]:
            # A build costs PBKDF2 per KEK version: one attempt per key per interval, not
            # one per ApiKey reconcile.
            raise failed[1]
        try:
            built = self._registry.create(config)
        except KmsError as exc:
            self._remember_failure(key, exc)
            raise
        except UnknownProviderError as exc:
            # Configured, but this build lacks the provider (e.g. the aws extra).
            raise KmsNotConfigured(str(exc)) from None
        except (OSError, ValueError) as exc:
            # The message names the file or setting, never its contents.
            error = KmsUnavailable(config.provider, config.key_id, str(exc))
            self._remember_failure(key, error)
            raise error from None
        with self._lock:
            self._failed.pop(key, None)
            return self._built.setdefault(key, built)

    def _remember_failure(self, key: tuple[str, str], error: KmsError) -> None:
        with self._lock:
            self._failed[key] = (time.monotonic() + self.retry_after, error)

    def default(self) -> KmsProvider:
        return self.provider(KmsRef())
