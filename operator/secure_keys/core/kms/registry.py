"""Owns the registry of KMS providers: provider name -> factory that builds a provider.

The name is the one-of field an ApiKey sets under ``spec.kms`` (``local``, ``aws``,
``gcp``, ``pkcs11``). Registering a name twice is refused, so a provider can never be
silently replaced.

``default_registry`` registers every provider this project ships, but the cloud ones
lazily: the factory of ``aws``, ``gcp`` or ``pkcs11`` imports its module (and so its SDK)
only when a configuration names it. Without the extra installed, building that provider
raises ``UnknownProviderError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from secure_keys.core.kms import local
from secure_keys.core.kms.base import PROVIDER_NAME, KmsProvider

__all__ = [
    "LAZY_PROVIDERS",
    "DuplicateProviderError",
    "KmsConfig",
    "KmsRegistry",
    "ProviderFactory",
    "UnknownProviderError",
    "default_registry",
]


@dataclass(frozen=True, slots=True)
class KmsConfig:
    """Which provider and key to use, and that provider's own options."""

    provider: str
    key_id: str
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


ProviderFactory = Callable[[KmsConfig], KmsProvider]


class DuplicateProviderError(ValueError):
    """A provider name was registered twice."""


class UnknownProviderError(LookupError):
    """No provider is registered under the requested name."""


class KmsRegistry:
    """Factories keyed by provider name. Thread-safe; names are registered once."""

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._lock = threading.Lock()

    def register(self, name: str, factory: ProviderFactory) -> None:
        if not PROVIDER_NAME.match(name):
            raise ValueError(f"invalid KMS provider name {name!r}")
        with self._lock:
            if name in self._factories:
                raise DuplicateProviderError(f"KMS provider {name!r} is already registered")
            self._factories[name] = factory

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._factories))

    def create(self, config: KmsConfig) -> KmsProvider:
        """Build the provider ``config`` names. Raises ``UnknownProviderError`` if none."""
        with self._lock:
            factory = self._factories.get(config.provider)
        if factory is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownProviderError(
                f"unknown KMS provider {config.provider!r} (registered: {known})"
            )
        provider = factory(config)
        if provider.name != config.provider:
            raise ValueError(
                f"factory for {config.provider!r} built a provider named {provider.name!r}"
            )
        return provider


def _local_factory(config: KmsConfig) -> KmsProvider:
    return local.from_config(config.key_id, config.options)


LAZY_PROVIDERS: Mapping[str, str] = MappingProxyType(
    {"aws": "aws", "gcp": "gcp", "pkcs11": "pkcs11", "azure": "azure", "keychain": "keychain"}
)
"""Provider name -> the extra (``pip install 'secure-keys[<extra>]'``) its SDK comes with."""


def _lazy_factory(name: str) -> ProviderFactory:
    """A factory that imports ``secure_keys.core.kms.<name>`` on first use, not before."""
    module_name = f"secure_keys.core.kms.{name}"

    def factory(config: KmsConfig) -> KmsProvider:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownProviderError(
                f"KMS provider {name!r} cannot be loaded ({type(exc).__name__}: {exc}); "
                f"install the {LAZY_PROVIDERS[name]!r} extra: "
                f"pip install 'secure-keys[{LAZY_PROVIDERS[name]}]'"
            ) from None
        provider: KmsProvider = module.from_config(config.key_id, config.options)
        return provider

    return factory


def default_registry() -> KmsRegistry:
    """A registry of every provider: ``local`` built in, the cloud ones loaded lazily."""
    registry = KmsRegistry()
    registry.register(local.PROVIDER, _local_factory)
    for name in LAZY_PROVIDERS:
        registry.register(name, _lazy_factory(name))
    return registry
