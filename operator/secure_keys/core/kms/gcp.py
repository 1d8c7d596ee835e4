"""Owns the ``gcp`` KMS provider: data keys wrapped by Google Cloud KMS (google-cloud-kms).

The only module that imports the Google SDK (an import-linter contract says so). A
provider is bound to one ``ENCRYPT_DECRYPT`` CryptoKey, named by its resource name
``projects/P/locations/L/keyRings/R/cryptoKeys/K``.

- **Wrap** is ``Encrypt`` with additional authenticated data (AAD) that binds the key id,
  the CryptoKeyVersion expected to be primary and the caller's wrap context. Cloud KMS
  encrypts with the key's primary version and answers with that version's name: it is
  recorded as the ``WrappedKey``'s ``key_version`` (the version id, e.g. ``"3"``). If the
  primary was not the version the AAD named (it changed since we last looked), the DEK
  is encrypted again naming that version explicitly, so the recorded version is always
  the one inside the AAD.
- **Unwrap** is ``Decrypt`` with the same AAD rebuilt from the ``WrappedKey``: Cloud KMS
  picks the version from the ciphertext, and authenticates the AAD, so a ``key_version``
  (or context, or key id) altered after the wrap makes the KMS refuse (``KmsCorrupt``).
- **CRC32C both ways**, as Google recommends: requests carry ``plaintext_crc32c`` /
  ``ciphertext_crc32c`` and ``additional_authenticated_data_crc32c``; responses must say
  ``verified_*`` and carry checksums that match. A mismatch means corruption in
  transit: the attempt is retried, then reported as ``KmsUnavailable``.
- **Rotation**: ``key_version()`` is the current primary version (``GetCryptoKey``,
  cached for ``keyVersionCacheSeconds``, refreshed by every ``Encrypt`` answer). When it
  differs from a wrap's recorded version, ``base.rewrap`` moves the DEK. ``wrap`` itself
  never waits for the cache: it starts from the last primary seen, and Encrypt's answer
  corrects it.
- **Errors**: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and server errors are
  retried (bounded attempts, exponential backoff with jitter, a per-attempt deadline),
  then raise ``KmsUnavailable``; FAILED_PRECONDITION (a disabled or destroyed version),
  PERMISSION_DENIED, UNAUTHENTICATED and NOT_FOUND raise ``KmsDenied``; INVALID_ARGUMENT
  on ``Decrypt`` raises ``KmsCorrupt``. Messages name the provider and key id, never
  plaintext, AAD bytes or credentials.

Memory: the SDK takes the DEK as ``bytes`` and returns it as ``bytes`` (protobuf copies
it); those immutable copies cannot be zeroed. What ``unwrap`` returns is a fresh
``bytearray`` as the protocol requires (see ``docs/memory.md``).
"""

from __future__ import annotations

import importlib
import ipaddress
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import grpc  # type: ignore[import-untyped]  # ships no type information
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcTransport,
)

from secure_keys.core.aead import KEY_SIZE
from secure_keys.core.binding import WrapContext, length_prefixed
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, WrappedKey, probe_health
from secure_keys.core.memory import zero

__all__ = ["PROVIDER", "GcpKms", "GcpKmsOptions", "crc32c", "from_config"]

PROVIDER = "gcp"
_CRYPTO_KEY = re.compile(
    r"projects/[a-z0-9._:-]{1,100}/locations/[a-z0-9-]{1,63}"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}\Z"
)
_VERSION_ID = re.compile(r"[1-9][0-9]{0,9}\Z")
_AAD_DOMAIN = b"securekeys.io/gcp-wrap\x00"
_AAD_FORMAT = 0x01
_ENDPOINT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")
_LOOPBACK_NAMES = frozenset({"localhost"})
# An emulator's plaintext channel reconnects quickly after the server comes back.
_PLAINTEXT_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)

_T = TypeVar("_T")


# -- CRC32C (Castagnoli) ----------------------------------------------------------------
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_native() -> Callable[[bytes], int] | None:
    """google-crc32c's C implementation, when that package is installed with it."""
    try:
        module = importlib.import_module("google_crc32c")
    except ImportError:
        return None
    if getattr(module, "implementation", None) != "c":
        return None
    value: Callable[[bytes], int] = module.value
    return value


_CRC32C_NATIVE = _crc32c_native()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data``, as Cloud KMS's ``*_crc32c`` fields carry it.

    google-crc32c's C code when it is installed (Google's samples use it); otherwise a
    table-driven loop, about 25 us for the 200 bytes of an AAD: small next to a network
    round trip, and no dependency the ``gcp`` extra must carry.
    """
    if _CRC32C_NATIVE is not None:
        return _CRC32C_NATIVE(data)
    return _crc32c_python(data)


# -- options --------------------------------------------------------------------------
def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise ValueError(f"gcp KMS option {name} must be true or false")


def _as_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"gcp KMS option {name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"gcp KMS option {name} must be a number") from None
    if not low <= number <= high:
        raise ValueError(f"gcp KMS option {name} must be from {low:g} to {high:g}")
    return number


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class GcpKmsOptions:
    """The ``options`` of a ``gcp`` entry in ``--kms-config``, parsed and checked.

    ``endpoint``: ``host:port`` instead of ``cloudkms.googleapis.com:443`` (a private
    endpoint, or the test emulator). ``insecure``: plaintext gRPC, for an emulator on a
    loopback address only; it implies anonymous credentials, so no token is ever sent in
    the clear. ``credentials``: ``default`` (Application Default Credentials: Workload
    Identity on GKE, a service-account key file named by GOOGLE_APPLICATION_CREDENTIALS,
    gcloud's user credentials) or ``anonymous`` (only with an endpoint override).
    """

    endpoint: str | None = None
    insecure: bool = False
    credentials: Literal["default", "anonymous"] = "default"
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 2.0
    key_version_cache_seconds: float = 30.0

    _KNOWN = frozenset(
        {
            "endpoint",
            "insecure",
            "credentials",
            "timeoutSeconds",
            "maxAttempts",
            "backoffSeconds",
            "maxBackoffSeconds",
            "keyVersionCacheSeconds",
        }
    )

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> GcpKmsOptions:
        """Parse the camelCase options; raises ``ValueError`` naming what is wrong."""
        unknown = sorted(set(options) - cls._KNOWN)
        if unknown:
            raise ValueError(f"unknown gcp KMS option(s): {', '.join(unknown)}")
        endpoint = options.get("endpoint")
        if endpoint is not None and (
            not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint)
        ):
            raise ValueError("gcp KMS option endpoint must be host:port")
        insecure = _as_bool("insecure", options.get("insecure", False))
        if insecure and (endpoint is None or not _is_loopback(endpoint)):
            raise ValueError("gcp KMS option insecure needs an endpoint on a loopback address")
        credentials = options.get("credentials", "anonymous" if insecure else "default")
        if credentials not in ("default", "anonymous"):
            raise ValueError("gcp KMS option credentials must be default or anonymous")
        if credentials == "anonymous" and endpoint is None:
            raise ValueError("gcp KMS anonymous credentials need an endpoint override")
        if insecure and credentials != "anonymous":
            raise ValueError("gcp KMS option insecure sends no credentials: use anonymous")
        attempts = _as_number("maxAttempts", options.get("maxAttempts", 3), 1, 10)
        if attempts != int(attempts):
            raise ValueError("gcp KMS option maxAttempts must be a whole number")
        return cls(
            endpoint=endpoint,
            insecure=insecure,
            credentials="anonymous" if credentials == "anonymous" else "default",
            timeout_seconds=_as_number(
                "timeoutSeconds", options.get("timeoutSeconds", 5.0), 0.05, 300
            ),
            max_attempts=int(attempts),
            backoff_seconds=_as_number(
                "backoffSeconds", options.get("backoffSeconds", 0.25), 0, 60
            ),
            max_backoff_seconds=_as_number(
                "maxBackoffSeconds", options.get("maxBackoffSeconds", 2.0), 0, 300
            ),
            key_version_cache_seconds=_as_number(
                "keyVersionCacheSeconds", options.get("keyVersionCacheSeconds", 30.0), 0, 3600
            ),
        )


# -- errors ---------------------------------------------------------------------------
class _InTransitCorruption(Exception):
    """A CRC32C check failed: the request or response was damaged on the way."""


_RETRYABLE: tuple[type[Exception], ...] = (
    google_errors.ServiceUnavailable,
    google_errors.DeadlineExceeded,
    google_errors.ResourceExhausted,
    google_errors.InternalServerError,
    google_errors.Unknown,
    google_errors.Aborted,
    auth_errors.TransportError,
    _InTransitCorruption,
)


def _server_message(exc: google_errors.GoogleAPICallError) -> str:
    # Cloud KMS messages name resources and states, never payloads; cut them short anyway.
    message = " ".join(str(exc.message or "").split())
    return message[:240]


def _map_error(exc: Exception, key_id: str, operation: str) -> KmsError:
    """The ``KmsError`` for an SDK error raised by ``operation`` on ``key_id``."""
    if isinstance(exc, _InTransitCorruption):
        return KmsUnavailable(PROVIDER, key_id, f"{operation}: {exc}")
    if isinstance(exc, auth_errors.TransportError):
        return KmsUnavailable(PROVIDER, key_id, f"{operation}: could not reach the token source")
    if isinstance(exc, auth_errors.GoogleAuthError):
        return KmsDenied(
            PROVIDER, key_id, f"{operation}: credentials refused ({type(exc).__name__})"
        )
    if isinstance(exc, google_errors.GoogleAPICallError):
        code = getattr(exc.grpc_status_code, "name", None) or type(exc).__name__
        detail = f"{operation} failed with {code}: {_server_message(exc)}"
        if isinstance(exc, _RETRYABLE):
            return KmsUnavailable(PROVIDER, key_id, detail)
        if isinstance(exc, google_errors.InvalidArgument) and operation == "Decrypt":
            return KmsCorrupt(PROVIDER, key_id, detail)
        # FAILED_PRECONDITION (a version disabled or destroyed), PERMISSION_DENIED,
        # UNAUTHENTICATED, NOT_FOUND, and anything else a retry cannot change.
        return KmsDenied(PROVIDER, key_id, detail)
    return KmsUnavailable(PROVIDER, key_id, f"{operation} failed: {type(exc).__name__}")


# -- the provider ---------------------------------------------------------------------
class GcpKms:
    """One Cloud KMS CryptoKey. Thread-safe: share one per key across tasks."""

    __slots__ = (
        "_channel",
        "_client",
        "_key_id",
        "_lock",
        "_options",
        "_primary",
        "_primary_at",
        "_sleep",
        "_version_prefix",
    )

    def __init__(
        self,
        key_id: str,
        client: kms_v1.KeyManagementServiceClient,
        options: GcpKmsOptions,
        *,
        channel: object | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not _CRYPTO_KEY.match(key_id):
            raise ValueError(
                f"gcp KMS key id {key_id[:200]!r} is not a CryptoKey resource name "
                "(projects/P/locations/L/keyRings/R/cryptoKeys/K)"
            )
        self._key_id = key_id
        self._client = client
        self._options = options
        self._channel = channel
        self._sleep = sleep
        self._version_prefix = f"{key_id}/cryptoKeyVersions/"
        self._lock = threading.Lock()
        self._primary: str | None = None
        self._primary_at = 0.0

    def __repr__(self) -> str:
        return f"GcpKms(key_id={self._key_id!r}, endpoint={self._options.endpoint!r})"

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._key_id

    def close(self) -> None:
        """Close the gRPC channel (the provider is unusable afterwards)."""
        if self._channel is not None:
            self._channel.close()  # type: ignore[attr-defined]
        else:
            self._client.transport.close()  # type: ignore[no-untyped-call]

    # -- calls ----------------------------------------------------------------------
    def _call(self, operation: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (one RPC and its checks) with bounded retries and backoff."""
        options = self._options
        delay = options.backoff_seconds
        for number in range(1, options.max_attempts + 1):
            try:
                return attempt()
            except _RETRYABLE as exc:
                if number == options.max_attempts:
                    raise _map_error(exc, self._key_id, operation) from None
            except (google_errors.GoogleAPICallError, auth_errors.GoogleAuthError) as exc:
                raise _map_error(exc, self._key_id, operation) from None
            # Exponential backoff with jitter, so many callers do not retry in step.
            jitter = random.uniform(0.5, 1.0)  # noqa: S311 - timing, not cryptography
            self._sleep(min(delay, options.max_backoff_seconds) * jitter)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _version_of(self, resource: str) -> str:
        """The version id in a CryptoKeyVersion name of this key."""
        version = resource.removeprefix(self._version_prefix)
        if version == resource or not _VERSION_ID.match(version):
            raise KmsCorrupt(
                PROVIDER,
                self._key_id,
                f"KMS answered with a version of another key: {resource[:200]!r}",
            )
        return version

    def _remember_primary(self, version: str) -> None:
        with self._lock:
            self._primary, self._primary_at = version, time.monotonic()

    def _cached_primary(self) -> str | None:
        with self._lock:
            if self._primary is None:
                return None
            if time.monotonic() - self._primary_at >= self._options.key_version_cache_seconds:
                return None
            return self._primary

    def key_version(self) -> str:
        """The CryptoKey's current primary version id (cached briefly)."""
        cached = self._cached_primary()
        if cached is not None:
            return cached

        def get() -> kms_v1.CryptoKey:
            return self._client.get_crypto_key(
                request={"name": self._key_id}, retry=None, timeout=self._options.timeout_seconds
            )

        key = self._call("GetCryptoKey", get)
        if not key.primary or not key.primary.name:
            raise KmsDenied(PROVIDER, self._key_id, "the CryptoKey has no primary version")
        version = self._version_of(key.primary.name)
        self._remember_primary(version)
        return version

    def _aad(self, version: str, context: WrapContext) -> bytes:
        return b"".join(
            (
                _AAD_DOMAIN,
                bytes((_AAD_FORMAT,)),
                length_prefixed(self._key_id),
                length_prefixed(version),
                context.canonical,
            )
        )

    def _encrypt(self, name: str, dek: bytes, aad: bytes) -> kms_v1.EncryptResponse:
        dek_crc, aad_crc = crc32c(dek), crc32c(aad)

        def encrypt() -> kms_v1.EncryptResponse:
            response = self._client.encrypt(
                request={
                    "name": name,
                    "plaintext": dek,
                    "additional_authenticated_data": aad,
                    "plaintext_crc32c": dek_crc,
                    "additional_authenticated_data_crc32c": aad_crc,
                },
                retry=None,
                timeout=self._options.timeout_seconds,
            )
            if not (
                response.verified_plaintext_crc32c
                and response.verified_additional_authenticated_data_crc32c
            ):
                raise _InTransitCorruption("the KMS did not verify the request's CRC32C")
            if response.ciphertext_crc32c != crc32c(response.ciphertext):
                raise _InTransitCorruption("the ciphertext failed its CRC32C check")
            return response

        return self._call("Encrypt", encrypt)

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        if len(dek) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")
        plaintext = bytes(dek)  # the SDK needs bytes; see the module docstring
        # The last primary seen, however old: Encrypt's answer says if it moved since.
        with self._lock:
            expected = self._primary
        if expected is None:
            expected = self.key_version()
        # First by CryptoKey (Cloud KMS uses its primary); if the primary moved since we
        # looked, once more naming the version the answer reported, so that the version
        # recorded is the one the AAD binds.
        for name in (self._key_id, None):
            response = self._encrypt(
                name or self._version_prefix + expected, plaintext, self._aad(expected, context)
            )
            used = self._version_of(response.name)
            self._remember_primary(used)
            if used == expected:
                return WrappedKey(PROVIDER, self._key_id, used, bytes(response.ciphertext))
            expected = used
        raise KmsCorrupt(
            PROVIDER, self._key_id, f"Encrypt used version {used}, not the one it was asked for"
        )

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        if wrapped.provider != PROVIDER or wrapped.key_id != self._key_id:
            raise KmsCorrupt(
                PROVIDER,
                self._key_id,
                f"wrapped by {wrapped.provider} key {wrapped.key_id[:200]!r}",
            )
        if not _VERSION_ID.match(wrapped.key_version):
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed CryptoKeyVersion id")
        ciphertext = bytes(wrapped.ciphertext)
        aad = self._aad(wrapped.key_version, context)
        ciphertext_crc, aad_crc = crc32c(ciphertext), crc32c(aad)

        def decrypt() -> kms_v1.DecryptResponse:
            response = self._client.decrypt(
                request={
                    "name": self._key_id,
                    "ciphertext": ciphertext,
                    "additional_authenticated_data": aad,
                    "ciphertext_crc32c": ciphertext_crc,
                    "additional_authenticated_data_crc32c": aad_crc,
                },
                retry=None,
                timeout=self._options.timeout_seconds,
            )
            if response.plaintext_crc32c != crc32c(response.plaintext):
                raise _InTransitCorruption("the plaintext failed its CRC32C check")
            return response

        response = self._call("Decrypt", decrypt)
        dek = bytearray(response.plaintext)
        if len(dek) != KEY_SIZE:
            zero(dek)
            raise KmsCorrupt(PROVIDER, self._key_id, "the unwrapped data key has the wrong size")
        return dek

    def health(self) -> HealthStatus:
        """Round-trip a throwaway key under the primary version. Never raises."""
        return probe_health(self, lambda: self._primary or "")


def _client_for(
    key_id: str, options: GcpKmsOptions
) -> tuple[kms_v1.KeyManagementServiceClient, object | None]:
    """The SDK client (and the plaintext channel, when this module made one)."""
    if options.insecure:
        channel = grpc.insecure_channel(options.endpoint, options=_PLAINTEXT_CHANNEL_OPTIONS)
        transport = KeyManagementServiceGrpcTransport(channel=channel)
        return kms_v1.KeyManagementServiceClient(transport=transport), channel
    client_options = ClientOptions(api_endpoint=options.endpoint) if options.endpoint else None
    credentials = None  # None: the SDK asks Application Default Credentials
    if options.credentials == "anonymous":
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        client = kms_v1.KeyManagementServiceClient(
            credentials=credentials, client_options=client_options
        )
    except auth_errors.DefaultCredentialsError:
        raise KmsDenied(
            PROVIDER,
            key_id,
            "no Application Default Credentials found (Workload Identity, "
            "GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login)",
        ) from None
    return client, None


def from_config(key_id: str, options: Mapping[str, object]) -> GcpKms:
    """Build a ``GcpKms`` for the CryptoKey ``key_id`` from ``--kms-config`` options."""
    parsed = GcpKmsOptions.parse(options)
    if not _CRYPTO_KEY.match(key_id):
        raise ValueError(
            f"gcp KMS key id {key_id[:200]!r} is not a CryptoKey resource name "
            "(projects/P/locations/L/keyRings/R/cryptoKeys/K)"
        )
    client, channel = _client_for(key_id, parsed)
    return GcpKms(key_id, client, parsed, channel=channel)
