"""Owns the ``aws`` KMS provider: data keys wrapped by AWS KMS (boto3), and nothing else does.

Wrapping is ``Encrypt``/``Decrypt`` under a symmetric KMS key, with the wrap context as
the ``EncryptionContext`` (every binding field, plus the configured key id), so a wrapped
DEK does not decrypt for another ApiKey, version or key. Rewrapping is ``ReEncrypt``: the
DEK never leaves the KMS.

What ``key_version`` means here. AWS does not expose the backing-key versions of a KMS
key: its automatic (yearly) and on-demand rotation keep the key ARN, AWS keeps every old
backing key, and ``Decrypt`` picks the right one. That rotation is invisible to us and
needs no rewrap. The rotation we *can* see is an **alias moved to a new key**:

- the configured key id is normally an alias (``alias/secure-keys``);
- ``key_version`` is the ARN of the key that alias points at now (``DescribeKey``,
  cached for ``keyVersionCacheSeconds``); each wrap records the ARN ``Encrypt`` answered
  with, so the record is exactly the key that made the ciphertext;
- ``unwrap`` decrypts with ``KeyId`` set to that recorded ARN: KMS refuses a ciphertext
  that another key made, so the recorded version is authenticated, not just a label;
- a recorded ARN unlike the alias's current target is a stale wrap: the controller then
  rewraps it (``ReEncrypt`` from the recorded key to the alias), as for any provider.

Configured with a key ARN or id instead of an alias, ``key_version`` is that key's ARN and
never changes. Credentials come from the SDK's default chain (environment, web identity
token as IRSA mounts it, container or instance metadata), or from a shared credentials
file named in the options; they are never logged or put in an error. Every call has a
connect and read timeout and a bounded number of attempts with backoff (botocore's
"standard" retry mode), and every SDK error is mapped to ``KmsUnavailable`` (retry),
``KmsDenied`` or ``KmsCorrupt``.

boto3 takes and returns the DEK as ``bytes``: a copy this module cannot zero (see
``docs/memory.md`` for what that means in Python).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from secure_keys.core.binding import WrapContext
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, WrappedKey, probe_health
from secure_keys.core.memory import zero

__all__ = ["CONTEXT_KEY_ID", "PROVIDER", "AwsKms", "AwsOptions", "KmsClient", "from_config"]

PROVIDER = "aws"
DEK_SIZE = 32
CONTEXT_KEY_ID = "securekeys.io/kms-key-id"
"""Added to every EncryptionContext: the configured key id (an alias, usually)."""

# A key ARN (not an alias ARN): arn:<partition>:kms:<region>:<account>:key/<id>
_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]{1,128}\Z")
_KEY_ID = re.compile(r"[A-Za-z0-9:/_.+=@-]{1,2048}\Z")

# Error codes, by what the caller should do. Anything else: 5xx -> unavailable,
# other 4xx -> denied (a request we should not repeat unchanged).
_CORRUPT_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "KMSInternalException",
        "InternalFailure",
        "ServiceUnavailable",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.NoCredentialsError,  # e.g. an IRSA token not mounted yet
)


class KmsClient(Protocol):
    """The few AWS KMS calls this provider makes (a boto3 ``kms`` client has them)."""

    def encrypt(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def decrypt(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def re_encrypt(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def describe_key(self, **kwargs: Any) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class AwsOptions:
    """The ``options`` of an ``aws`` entry in ``--kms-config``, parsed and checked."""

    region: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3
    key_version_cache_seconds: float = 30.0
    credentials_file: str | None = None
    profile: str | None = None

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> AwsOptions:
        known = {
            "region",
            "endpointUrl",
            "connectTimeoutSeconds",
            "readTimeoutSeconds",
            "maxAttempts",
            "keyVersionCacheSeconds",
            "credentialsFile",
            "profile",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"aws KMS: unknown option(s) {unknown}; known: {sorted(known)}")

        def text(name: str) -> str | None:
            value = options.get(name)
            return None if value in (None, "") else str(value)

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"aws KMS option {name} must be a number") from None
            if not low <= value <= high:
                raise ValueError(f"aws KMS option {name} must be from {low} to {high}")
            return value

        return cls(
            region=text("region"),
            endpoint_url=text("endpointUrl"),
            connect_timeout=number("connectTimeoutSeconds", 2.0, 0.05, 60),
            read_timeout=number("readTimeoutSeconds", 5.0, 0.05, 120),
            max_attempts=int(number("maxAttempts", 3, 1, 10)),
            key_version_cache_seconds=number("keyVersionCacheSeconds", 30.0, 0, 3600),
            credentials_file=text("credentialsFile"),
            profile=text("profile"),
        )


def _region_of(key_id: str) -> str | None:
    parts = key_id.split(":")
    return parts[3] if key_id.startswith("arn:") and len(parts) > 4 and parts[3] else None


def make_client(key_id: str, options: AwsOptions) -> KmsClient:
    """A boto3 KMS client with timeouts and bounded retries; credentials stay lazy.

    One client per provider, shared by every thread (boto3 clients are thread-safe;
    sessions are not, so the session is used only here, once).
    """
    core = botocore.session.Session()
    if options.credentials_file:
        core.set_config_variable("credentials_file", options.credentials_file)
    if options.profile:
        core.set_config_variable("profile", options.profile)
    region = options.region or _region_of(key_id) or core.get_config_variable("region")
    if not region:
        raise ValueError(
            "aws KMS: no region: set the region option, use a key ARN, or set AWS_REGION"
        )
    config = Config(
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"total_max_attempts": options.max_attempts, "mode": "standard"},
        user_agent_extra="secure-keys",
    )
    session = boto3.session.Session(botocore_session=core, region_name=region)
    client: KmsClient = session.client("kms", endpoint_url=options.endpoint_url, config=config)
    return client


def _error(exc: Exception, key_id: str, action: str) -> KmsError:
    """The ``KmsError`` for an SDK exception. Names the call and the AWS error code only."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{action}: {code}"
        if code in _CORRUPT_CODES:
            return KmsCorrupt(PROVIDER, key_id, f"{detail} (the wrapped key does not authenticate)")
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            return KmsUnavailable(PROVIDER, key_id, detail)
        return KmsDenied(PROVIDER, key_id, detail)
    if isinstance(exc, _CONNECTION_ERRORS):
        return KmsUnavailable(PROVIDER, key_id, f"{action}: {type(exc).__name__}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        # Configuration or credential problems (partial credentials, a bad profile).
        return KmsDenied(PROVIDER, key_id, f"{action}: {type(exc).__name__}")
    return KmsUnavailable(PROVIDER, key_id, f"{action}: {type(exc).__name__}")


class AwsKms:
    """An AWS KMS key (normally an alias): wraps with it, unwraps with the recorded key."""

    __slots__ = ("_client", "_clock", "_key_id", "_lock", "_version", "_version_ttl")

    def __init__(
        self,
        key_id: str,
        client: KmsClient,
        *,
        key_version_cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _KEY_ID.match(key_id):
            raise ValueError(f"invalid AWS KMS key id {key_id[:80]!r}")
        self._key_id = key_id
        self._client = client
        self._version_ttl = key_version_cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._version: tuple[float, str] | None = None

    def __repr__(self) -> str:
        return f"AwsKms(key_id={self._key_id!r})"

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._key_id

    def _context(self, context: WrapContext) -> dict[str, str]:
        pairs = context.as_dict()
        if CONTEXT_KEY_ID in pairs:
            raise ValueError(f"wrap context may not set {CONTEXT_KEY_ID}")
        pairs[CONTEXT_KEY_ID] = self._key_id
        return pairs

    def _call(self, action: str, fn: Callable[..., Mapping[str, Any]], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise _error(exc, self._key_id, action) from None

    def _seen_version(self, arn: str) -> None:
        with self._lock:
            self._version = (self._clock() + self._version_ttl, arn)

    def _arn_from(self, response: Mapping[str, Any], action: str) -> str:
        arn = response.get("KeyId")
        if not isinstance(arn, str) or not _KEY_ARN.match(arn):
            raise KmsCorrupt(PROVIDER, self._key_id, f"{action}: the response names no key ARN")
        return arn

    def key_version(self) -> str:
        """The ARN of the key the configured id resolves to now (cached briefly)."""
        with self._lock:
            cached = self._version
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        response = self._call("DescribeKey", self._client.describe_key, KeyId=self._key_id)
        arn = response.get("KeyMetadata", {}).get("Arn")
        if not isinstance(arn, str) or not _KEY_ARN.match(arn):
            raise KmsDenied(PROVIDER, self._key_id, "DescribeKey: not a KMS key ARN")
        self._seen_version(arn)
        return arn

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        if len(dek) != DEK_SIZE:
            raise ValueError(f"data keys are {DEK_SIZE} bytes")
        response = self._call(
            "Encrypt",
            self._client.encrypt,
            KeyId=self._key_id,
            Plaintext=bytes(dek),
            EncryptionContext=self._context(context),
            EncryptionAlgorithm="SYMMETRIC_DEFAULT",
        )
        arn = self._arn_from(response, "Encrypt")
        self._seen_version(arn)
        return WrappedKey(PROVIDER, self._key_id, arn, bytes(response["CiphertextBlob"]))

    def _check(self, wrapped: WrappedKey) -> None:
        if wrapped.provider != PROVIDER or wrapped.key_id != self._key_id:
            raise KmsCorrupt(
                PROVIDER, self._key_id, f"wrapped by {wrapped.provider} key {wrapped.key_id[:80]!r}"
            )
        if not _KEY_ARN.match(wrapped.key_version):
            # Never let an alias stand in for the recorded key: it would resolve to
            # whatever the alias points at now, and the version would go unchecked.
            raise KmsCorrupt(PROVIDER, self._key_id, "the recorded key version is not a key ARN")

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        self._check(wrapped)
        response = self._call(
            "Decrypt",
            self._client.decrypt,
            CiphertextBlob=wrapped.ciphertext,
            KeyId=wrapped.key_version,
            EncryptionContext=self._context(context),
            EncryptionAlgorithm="SYMMETRIC_DEFAULT",
        )
        if self._arn_from(response, "Decrypt") != wrapped.key_version:
            raise KmsCorrupt(PROVIDER, self._key_id, "Decrypt answered for another key")
        dek = bytearray(response["Plaintext"])
        if len(dek) != DEK_SIZE:
            zero(dek)
            raise KmsCorrupt(PROVIDER, self._key_id, "the unwrapped data key has the wrong size")
        return dek

    def reencrypt(self, wrapped: WrappedKey, context: WrapContext) -> WrappedKey:
        """Move ``wrapped`` to the key the configured id names now, inside AWS KMS."""
        self._check(wrapped)
        pairs = self._context(context)
        response = self._call(
            "ReEncrypt",
            self._client.re_encrypt,
            CiphertextBlob=wrapped.ciphertext,
            SourceKeyId=wrapped.key_version,
            SourceEncryptionContext=pairs,
            DestinationKeyId=self._key_id,
            DestinationEncryptionContext=pairs,
            SourceEncryptionAlgorithm="SYMMETRIC_DEFAULT",
            DestinationEncryptionAlgorithm="SYMMETRIC_DEFAULT",
        )
        source = response.get("SourceKeyId")
        if source is not None and source != wrapped.key_version:
            raise KmsCorrupt(PROVIDER, self._key_id, "ReEncrypt read another source key")
        arn = self._arn_from(response, "ReEncrypt")
        self._seen_version(arn)
        return WrappedKey(PROVIDER, self._key_id, arn, bytes(response["CiphertextBlob"]))

    def health(self) -> HealthStatus:
        """Round-trip a throwaway key through Encrypt and Decrypt. Never raises."""
        return probe_health(self, lambda: "")


def from_config(key_id: str, options: Mapping[str, object]) -> AwsKms:
    """Build an ``AwsKms`` from a ``--kms-config`` entry. Makes no network call."""
    parsed = AwsOptions.parse(options)
    return AwsKms(
        key_id,
        make_client(key_id, parsed),
        key_version_cache_seconds=parsed.key_version_cache_seconds,
    )
