"""Owns the KMS provider interface: what a provider does, and the wrapped-key record.

A provider is bound to one key at construction (an AWS key ARN, a Google CryptoKey, a
PKCS#11 key label, a local keyring). It wraps and unwraps 256-bit data keys under that
key, always with a ``WrapContext`` that the KMS authenticates, and it reports which
version of its key new wraps use, so callers can tell when a rewrap is due.

Errors are ``secure_keys.core.errors.KmsError`` subclasses: ``KmsUnavailable`` (retry),
``KmsDenied`` (do not retry) and ``KmsCorrupt`` (the wrapped key or its context is bad).
``probe_health`` is every provider's ``health()``: one round trip of a throwaway key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Self, runtime_checkable

from secure_keys.core.binding import WrapContext
from secure_keys.core.errors import KmsError
from secure_keys.core.memory import random_secret, zero

__all__ = [
    "PROVIDER_NAME",
    "HealthStatus",
    "KmsProvider",
    "ReencryptingProvider",
    "WrappedKey",
    "probe_health",
    "rewrap",
]

PROVIDER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
"""Provider names: short lowercase identifiers such as ``local``, ``aws``, ``gcp``."""


class _WrappedKeyFields(NamedTuple):
    provider: str
    key_id: str
    key_version: str
    ciphertext: bytes


# Names that certainly match PROVIDER_NAME: a set lookup skips the regex on the hot path.
_KNOWN_PROVIDERS = frozenset({"local", "aws", "gcp", "pkcs11"})


class WrappedKey(_WrappedKeyFields):
    """A data key as the KMS returned it: opaque ciphertext plus where it came from.

    Immutable and validated on construction. (A named tuple: one is built per seal and per
    parse, and a frozen dataclass costs three times as much.)
    """

    __slots__ = ()

    def __new__(cls, provider: str, key_id: str, key_version: str, ciphertext: bytes) -> Self:
        if provider not in _KNOWN_PROVIDERS and not PROVIDER_NAME.match(provider):
            raise ValueError(f"invalid KMS provider name {provider!r}")
        if not key_id:
            raise ValueError("KMS key id must not be empty")
        if not ciphertext:
            raise ValueError("wrapped key ciphertext must not be empty")
        return tuple.__new__(cls, (provider, key_id, key_version, ciphertext))

    def __repr__(self) -> str:
        # The ciphertext is not secret, but it is long and tells a reader nothing.
        return (
            f"WrappedKey(provider={self.provider!r}, key_id={self.key_id!r}, "
            f"key_version={self.key_version!r}, ciphertext=<{len(self.ciphertext)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """What ``health()`` found: whether the key can wrap and unwrap right now, and why not."""

    healthy: bool
    provider: str
    key_id: str
    key_version: str
    detail: str = ""


@runtime_checkable
class KmsProvider(Protocol):
    """A key-encryption key held by some KMS, able to wrap and unwrap data keys.

    Calls may block on the network: async callers run them with ``asyncio.to_thread``.
    """

    @property
    def name(self) -> str:
        """The provider name recorded in every ``WrappedKey`` it makes (e.g. ``local``)."""
        ...

    @property
    def key_id(self) -> str:
        """The KMS key this provider wraps under, as recorded in envelopes."""
        ...

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        """Wrap ``dek`` under the newest key version, authenticating ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        """Return the data key in a fresh ``bytearray`` the caller must zero.

        Raises ``KmsCorrupt`` if the ciphertext or context does not authenticate,
        ``KmsDenied`` if the key or key version may not be used, ``KmsUnavailable`` if
        the KMS cannot be reached.
        """
        ...

    def key_version(self) -> str:
        """The key version new wraps use. A wrap with another version is due a rewrap."""
        ...

    def health(self) -> HealthStatus:
        """Check that the key can be used now. Never raises for an unhealthy KMS."""
        ...


@runtime_checkable
class ReencryptingProvider(Protocol):
    """A provider whose KMS can move a wrapped key to its newest version by itself
    (AWS KMS ``ReEncrypt``), so the data key never leaves the KMS."""

    def reencrypt(self, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
        """``wrapped`` rewrapped under the newest key version, for the same ``context``."""
        ...


def rewrap(provider: KmsProvider, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
    """Move a wrapped data key to the provider's newest key version.

    Returns ``wrapped`` itself when it already uses that version. A provider that can
    re-encrypt inside its KMS (``ReencryptingProvider``) does; otherwise the data key is
    held only for the moment between unwrap and wrap, and zeroed straight after.
    """
    if (
        wrapped.provider == provider.name
        and wrapped.key_id == provider.key_id
        and wrapped.key_version == provider.key_version()
    ):
        return wrapped
    if isinstance(provider, ReencryptingProvider):
        return provider.reencrypt(wrapped, context)
    dek = provider.unwrap(wrapped, context)
    try:
        return provider.wrap(dek, context)
    finally:
        zero(dek)


HEALTH_CONTEXT = WrapContext((("securekeys.io/health", "probe"),))
"""The context a health probe wraps under: no real data key is ever wrapped with it."""
PROBE_SIZE = 32
"""A probe is a throwaway key of a data key's size (256 bits)."""


def probe_health(provider: KmsProvider, version_if_failed: Callable[[], str]) -> HealthStatus:
    """Round-trip a throwaway key through ``provider``'s wrap and unwrap. Never raises a
    KMS error: a failure is reported in the status, with the KMS's own short detail.

    The key version reported is the one the probe was wrapped under; when the wrap itself
    failed, ``version_if_failed()`` (what the provider last knew, or ``""``). The probe and
    what came back are zeroed whatever happens.
    """
    probe = random_secret(PROBE_SIZE)
    version = ""
    try:
        wrapped = provider.wrap(probe, HEALTH_CONTEXT)
        version = wrapped.key_version
        back = provider.unwrap(wrapped, HEALTH_CONTEXT)
        healthy = back == probe
        zero(back)
    except KmsError as exc:
        return HealthStatus(
            False, provider.name, provider.key_id, version or version_if_failed(), exc.detail
        )
    finally:
        zero(probe)
    detail = "" if healthy else "round trip returned a different key"
    return HealthStatus(healthy, provider.name, provider.key_id, version, detail)
