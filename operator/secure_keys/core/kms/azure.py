"""Owns the ``azure`` KMS provider: data keys wrapped by an Azure Key Vault RSA key.

The only module that imports the Azure SDKs (``azure-keyvault-keys``, ``azure-identity``;
the ``azure`` extra; an import-linter contract says so). A provider is bound to one key,
named by its versionless identifier ``https://<vault>.vault.azure.net/keys/<name>``.

- **Wrap** is ``wrapKey`` with RSA-OAEP-256 (or RSA-OAEP) under the key's current version;
  that version (Key Vault's 32-hex-digit id) is recorded as the ``WrappedKey``'s
  ``key_version``, so a rotated key still unwraps old data keys with the version that
  wrapped them. The SDK wraps with the version's public key locally once it has fetched
  it (a wrap needs only the public key); unwrap always goes to the vault.
- **The wrap context**: RSA-OAEP in Key Vault takes no associated data, so the context is
  bound here: the stored ciphertext is ``0x01 || u16 length || wrapped DEK || tag``, where
  ``tag`` is HMAC-SHA256, under a key derived from the DEK by HKDF, over the key id, the
  key version and the context. ``unwrap`` checks it in constant time after Key Vault has
  unwrapped the DEK: a wrapped key moved to another ApiKey, version or key (or relabelled
  with another key version) is refused (``KmsCorrupt``). Only whoever holds the DEK
  could forge a tag, and they need nothing from the vault any more.
- **Rotation**: ``key_version()`` is the key's current version (``get_key``, cached for
  ``keyVersionCacheSeconds``). A wrap with an older version is due a ``rewrap``
  (``base.rewrap``: unwrap, then wrap under the new version). Key Vault's
  ``rotate`` (or a new version made by ``create``) is the KEK rotation.
- **Errors**: no connection, timeouts, 408, 429 and 5xx are retried by the SDK (bounded
  attempts), then raise ``KmsUnavailable``; 401, 403 (a disabled key version, a missing
  permission) and 404 (a deleted key or version) raise ``KmsDenied``; 400 on unwrap (a
  ciphertext that does not decrypt under that version) and a tag that does not check
  raise ``KmsCorrupt``. Messages name the provider and key id, never key material.
- **Credentials** (option ``credential``): ``default`` is azure-identity's
  ``DefaultAzureCredential`` (environment, workload identity in AKS, managed identity,
  then the Azure CLI on a laptop); ``workload-identity``, ``managed-identity`` and
  ``cli`` pick one; ``client-secret`` reads ``tenantId``, ``clientId`` and the secret from
  ``clientSecretFile`` (never from the options themselves). ``authorityHost`` and
  ``caFile`` point a credential and the vault client at a test vault (``tools/azurekv``);
  ``verifyChallengeResource: "false"`` is needed there, because a loopback vault is not a
  subdomain of the ``vault.azure.net`` resource its challenge names.

Memory: the SDK takes the DEK as ``bytes`` and returns it as ``bytes``; those immutable
copies cannot be zeroed. What ``unwrap`` returns is a fresh ``bytearray`` (``docs/memory.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import (
    AzureCliCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from secure_keys.core.aead import KEY_SIZE
from secure_keys.core.binding import WrapContext, length_prefixed
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.hierarchy import hkdf_sha256
from secure_keys.core.kms.base import HealthStatus, WrappedKey
from secure_keys.core.memory import random_secret, read_secret_file, zero

__all__ = ["PROVIDER", "AzureKeyVaultKms", "AzureKmsOptions", "from_config"]

PROVIDER = "azure"
WRAP_FORMAT = 0x01
TAG_SIZE = 32
MAX_WRAPPED = 1024  # RSA-4096 gives 512 bytes
_KEY_ID = re.compile(r"(https://[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?)/keys/([A-Za-z0-9-]{1,127})\Z")
_VERSION = re.compile(r"[0-9a-f]{32}\Z")
_TAG_INFO = b"securekeys.io/azure-wrap-context"
_TAG_DOMAIN = b"securekeys.io/azure-wrap\x00"
_ALGORITHMS = {
    "RSA-OAEP-256": KeyWrapAlgorithm.rsa_oaep_256,
    "RSA-OAEP": KeyWrapAlgorithm.rsa_oaep,
}
CredentialKind = Literal["default", "client-secret", "workload-identity", "managed-identity", "cli"]
_CREDENTIALS: tuple[CredentialKind, ...] = (
    "default",
    "client-secret",
    "workload-identity",
    "managed-identity",
    "cli",
)


def _number(
    options: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"azure KMS option {name} must be a number") from None
    if not low <= value <= high:
        raise ValueError(f"azure KMS option {name} must be from {low:g} to {high:g}")
    return value


@dataclass(frozen=True, slots=True)
class AzureKmsOptions:
    """The ``options`` of an ``azure`` entry, parsed and checked."""

    credential: CredentialKind = "default"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_file: Path | None = None
    authority_host: str | None = None
    ca_file: str | None = None
    verify_challenge_resource: bool = True
    algorithm: str = "RSA-OAEP-256"
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    key_version_cache_seconds: float = 30.0

    _KNOWN = frozenset(
        {
            "credential",
            "tenantId",
            "clientId",
            "clientSecretFile",
            "authorityHost",
            "caFile",
            "verifyChallengeResource",
            "algorithm",
            "timeoutSeconds",
            "maxAttempts",
            "keyVersionCacheSeconds",
        }
    )

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> AzureKmsOptions:
        unknown = sorted(set(options) - cls._KNOWN)
        if unknown:
            raise ValueError(f"unknown azure KMS option(s): {', '.join(unknown)}")
        credential = options.get("credential", "default")
        if credential not in _CREDENTIALS:
            raise ValueError(
                f"azure KMS option credential must be one of {', '.join(_CREDENTIALS)}"
            )
        algorithm = options.get("algorithm", "RSA-OAEP-256")
        if algorithm not in _ALGORITHMS:
            raise ValueError("azure KMS option algorithm must be RSA-OAEP-256 or RSA-OAEP")
        verify = options.get("verifyChallengeResource", "true").lower()
        if verify not in ("true", "false"):
            raise ValueError("azure KMS option verifyChallengeResource must be true or false")
        secret_file = options.get("clientSecretFile")
        if credential == "client-secret" and not (
            options.get("tenantId") and options.get("clientId") and secret_file
        ):
            raise ValueError(
                "azure client-secret credential needs tenantId, clientId, clientSecretFile"
            )
        authority = options.get("authorityHost")
        if authority is not None and not authority.startswith("https://"):
            raise ValueError("azure KMS option authorityHost must be an https:// URL")
        attempts = _number(options, "maxAttempts", 3, 1, 10)
        if attempts != int(attempts):
            raise ValueError("azure KMS option maxAttempts must be a whole number")
        return cls(
            credential=credential,
            tenant_id=options.get("tenantId"),
            client_id=options.get("clientId"),
            client_secret_file=Path(secret_file) if secret_file else None,
            authority_host=authority,
            ca_file=options.get("caFile"),
            verify_challenge_resource=verify == "true",
            algorithm=algorithm,
            timeout_seconds=_number(options, "timeoutSeconds", 5.0, 0.05, 300),
            max_attempts=int(attempts),
            key_version_cache_seconds=_number(options, "keyVersionCacheSeconds", 30.0, 0, 3600),
        )

    def transport(self) -> dict[str, Any]:
        """Keyword arguments for every azure-core client: timeouts, retries, trust."""
        kwargs: dict[str, Any] = {
            "connection_timeout": self.timeout_seconds,
            "read_timeout": self.timeout_seconds,
            "retry_total": self.max_attempts - 1,
            "retry_backoff_factor": 0.2,
            "retry_backoff_max": 2,
        }
        if self.ca_file:
            kwargs["connection_verify"] = self.ca_file
        return kwargs

    def build_credential(self) -> TokenCredential:
        common = self.transport()
        if self.authority_host:
            common["authority"] = self.authority_host
        if self.credential == "client-secret":
            if self.client_secret_file is None or not self.tenant_id or not self.client_id:
                raise ValueError("azure client-secret credential needs all of its options")
            raw = read_secret_file(self.client_secret_file)
            try:
                secret = raw.decode().strip()
            finally:
                zero(raw)
            return ClientSecretCredential(
                self.tenant_id,
                self.client_id,
                secret,
                disable_instance_discovery=self.authority_host is not None,
                **common,
            )
        if self.credential == "workload-identity":
            return WorkloadIdentityCredential(**common)
        if self.credential == "managed-identity":
            return ManagedIdentityCredential(client_id=self.client_id, **common)
        if self.credential == "cli":
            return AzureCliCredential(tenant_id=self.tenant_id or "")
        return DefaultAzureCredential(**common)


def _tag(dek: bytes | bytearray, key_id: str, version: str, context: WrapContext) -> bytes:
    tag_key = hkdf_sha256(dek, salt=b"", info=_TAG_INFO)
    try:
        message = b"".join(
            (_TAG_DOMAIN, length_prefixed(key_id), length_prefixed(version), context.canonical)
        )
        return hmac.new(tag_key, message, hashlib.sha256).digest()
    finally:
        zero(tag_key)


class AzureKeyVaultKms:
    """One Key Vault key. Thread-safe: share one per key across tasks."""

    def __init__(
        self,
        key_id: str,
        credential: TokenCredential,
        options: AzureKmsOptions,
    ) -> None:
        match = _KEY_ID.match(key_id)
        if match is None:
            raise ValueError(
                f"azure KMS key id {key_id[:200]!r} is not a versionless Key Vault key "
                "identifier (https://<vault>.vault.azure.net/keys/<name>)"
            )
        self._key_id = key_id
        self._vault_url, self._name = match.group(1), match.group(2)
        self._credential = credential
        self._options = options
        self._algorithm = _ALGORITHMS[options.algorithm]
        self._client_kwargs = {
            "verify_challenge_resource": options.verify_challenge_resource,
            **options.transport(),
        }
        self._keys = KeyClient(self._vault_url, credential, **self._client_kwargs)
        self._crypto: dict[str, CryptographyClient] = {}
        self._lock = threading.Lock()
        self._current: str | None = None
        self._current_at = 0.0

    def __repr__(self) -> str:
        return f"AzureKeyVaultKms(key_id={self._key_id!r})"

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._key_id

    def _error(self, exc: Exception, operation: str) -> KmsError:
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return KmsUnavailable(
                PROVIDER, self._key_id, f"{operation}: the vault cannot be reached"
            )
        if isinstance(exc, ClientAuthenticationError):
            return KmsDenied(
                PROVIDER, self._key_id, f"{operation}: the credential was refused or failed"
            )
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            code = getattr(exc.error, "code", None) or str(status)
            detail = f"{operation} failed with {status} {code}"
            if status in (408, 429) or status >= 500:
                return KmsUnavailable(PROVIDER, self._key_id, detail)
            if status == 400 and operation == "unwrapKey":
                return KmsCorrupt(PROVIDER, self._key_id, detail)
            return KmsDenied(PROVIDER, self._key_id, detail)
        return KmsUnavailable(PROVIDER, self._key_id, f"{operation} failed: {type(exc).__name__}")

    def key_version(self) -> str:
        """The key's current version (cached for ``keyVersionCacheSeconds``)."""
        with self._lock:
            cached, at = self._current, self._current_at
        ttl = self._options.key_version_cache_seconds
        if cached is not None and ttl > 0 and time.monotonic() - at < ttl:
            return cached
        try:
            key = self._keys.get_key(self._name)
        except Exception as exc:
            raise self._error(exc, "getKey") from None
        version = key.properties.version or ""
        if not _VERSION.match(version):
            raise KmsCorrupt(PROVIDER, self._key_id, "the vault answered a malformed key version")
        if key.properties.enabled is False:
            raise KmsDenied(PROVIDER, self._key_id, f"key version {version} is disabled")
        with self._lock:
            self._current, self._current_at = version, time.monotonic()
        return version

    def _client(self, version: str) -> CryptographyClient:
        with self._lock:
            client = self._crypto.get(version)
            if client is None:
                if len(self._crypto) >= 64:
                    self._crypto.clear()
                client = CryptographyClient(
                    f"{self._vault_url}/keys/{self._name}/{version}",
                    self._credential,
                    **self._client_kwargs,
                )
                self._crypto[version] = client
        return client

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        if len(dek) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")
        version = self.key_version()
        try:
            result = self._client(version).wrap_key(self._algorithm, bytes(dek))
        except Exception as exc:
            raise self._error(exc, "wrapKey") from None
        wrapped = result.encrypted_key
        if not 0 < len(wrapped) <= MAX_WRAPPED:
            raise KmsCorrupt(PROVIDER, self._key_id, "the vault answered a malformed wrapped key")
        blob = b"".join(
            (
                bytes((WRAP_FORMAT,)),
                struct.pack(">H", len(wrapped)),
                wrapped,
                _tag(dek, self._key_id, version, context),
            )
        )
        return WrappedKey(PROVIDER, self._key_id, version, blob)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        if wrapped.provider != PROVIDER or wrapped.key_id != self._key_id:
            raise KmsCorrupt(
                PROVIDER, self._key_id, f"wrapped by {wrapped.provider} key {wrapped.key_id[:64]!r}"
            )
        version = wrapped.key_version
        if not _VERSION.match(version):
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed key version")
        blob = wrapped.ciphertext
        if len(blob) < 3 + TAG_SIZE or blob[0] != WRAP_FORMAT:
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed wrapped key")
        (size,) = struct.unpack(">H", blob[1:3])
        if len(blob) != 3 + size + TAG_SIZE or not 0 < size <= MAX_WRAPPED:
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed wrapped key")
        try:
            result = self._client(version).unwrap_key(self._algorithm, blob[3 : 3 + size])
        except Exception as exc:
            raise self._error(exc, "unwrapKey") from None
        dek = bytearray(result.key)
        if len(dek) != KEY_SIZE or not hmac.compare_digest(
            _tag(dek, self._key_id, version, context), blob[3 + size :]
        ):
            zero(dek)
            raise KmsCorrupt(
                PROVIDER, self._key_id, "wrapped key did not authenticate for this context"
            )
        return dek

    def health(self) -> HealthStatus:
        """Round-trip a throwaway key under the current version. Never raises."""
        probe = random_secret(KEY_SIZE)
        context = WrapContext((("securekeys.io/health", "probe"),))
        version = self._current or ""
        try:
            wrapped = self.wrap(probe, context)
            version = wrapped.key_version
            back = self.unwrap(wrapped, context)
            healthy = back == probe
            zero(back)
        except KmsError as exc:
            return HealthStatus(False, PROVIDER, self._key_id, version, exc.detail)
        finally:
            zero(probe)
        detail = "" if healthy else "round trip returned a different key"
        return HealthStatus(healthy, PROVIDER, self._key_id, version, detail)


def from_config(key_id: str, options: Mapping[str, str]) -> AzureKeyVaultKms:
    parsed = AzureKmsOptions.parse(options)
    return AzureKeyVaultKms(key_id, parsed.build_credential(), parsed)
