"""Controller configuration: its namespace, and the KMS keys it may use.

The KMS file (``--kms-config``, read by ``core.kms.settings.KmsSettings``) lists the
keys this controller can wrap with and which one is the cluster default.

``KmsDirectory`` builds each provider lazily, on first use, and keeps it. A provider
that fails to build (a password file not mounted yet, a KMS endpoint down) is reported as
``KmsUnavailable`` and tried again on the next reconcile, so one broken key never stops
ApiKeys that use another.
"""

from __future__ import annotations

import threading
import time

from secure_keys.controller.models import KmsRef
from secure_keys.core.errors import KmsError, KmsUnavailable
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.registry import (
    KmsConfig,
    KmsRegistry,
    UnknownProviderError,
    default_registry,
)

# Re-exported: the controller's code and tests name it controller.config.KmsSettings.
from secure_keys.core.kms.settings import KmsSettings as KmsSettings


class KmsNotConfigured(LookupError):
    """spec.kms names a provider or key this controller has no configuration for."""


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
