"""Owns the error types that cross module boundaries in ``secure_keys.core``.

Three families:

- ``InvalidEnvelope``: the one error for every failure to open a sealed key version.
- ``SealedSourceInvalid``: the one error for every failure to open a sealed source
  (``spec.source.sealed``, made client side by ``secure-keys seal``).
- ``KmsError`` and its three kinds, which tell a caller what to do next: retry
  (``KmsUnavailable``), give up and alert (``KmsDenied``), or treat the wrapped key as
  damaged (``KmsCorrupt``).

No message built here contains key material or plaintext; each names the ApiKey, version,
provider or key id it concerns, which are not secret.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "InvalidEnvelope",
    "KmsCorrupt",
    "KmsDenied",
    "KmsError",
    "KmsUnavailable",
    "OpenFailure",
    "SealedSourceFailure",
    "SealedSourceInvalid",
]

OpenFailure = Literal[
    "malformed",
    "unsupported-format",
    "wrong-key",
    "unwrap-refused",
    "authentication-failed",
]
"""Why an envelope did not open. Coarse on purpose: it helps an operator, not an attacker."""

_REASON_TEXT: dict[OpenFailure, str] = {
    "malformed": "the envelope is truncated or malformed",
    "unsupported-format": "the envelope format version is not supported",
    "wrong-key": "the envelope was wrapped by a different KMS key",
    "unwrap-refused": "the KMS refused to unwrap the data key",
    "authentication-failed": "the ciphertext did not authenticate for this key and version",
}


class InvalidEnvelope(Exception):
    """A sealed key version could not be opened.

    Raised for every failure: wrong key, wrong binding, any flipped bit, truncation, an
    unknown format version, an unwrap the KMS refused. A KMS that is merely unreachable
    raises ``KmsUnavailable`` instead, because that says nothing about the envelope.
    """

    def __init__(self, namespace: str, name: str, version: int, reason: OpenFailure) -> None:
        self.namespace = namespace
        self.name = name
        self.version = version
        self.reason: OpenFailure = reason
        super().__init__(
            f"cannot open ApiKey {namespace}/{name} version {version}: {_REASON_TEXT[reason]}"
        )


SealedSourceFailure = Literal[
    "malformed",
    "unsupported-format",
    "wrong-recipient",
    "authentication-failed",
]
"""Why a sealed source did not open. As coarse as ``OpenFailure``, for the same reason."""

_SEALED_REASON_TEXT: dict[SealedSourceFailure, str] = {
    "malformed": "the sealed value is not valid base64, or is truncated or malformed",
    "unsupported-format": "the sealed value's format version is not supported",
    "wrong-recipient": "the value was sealed to a different recipient key",
    "authentication-failed": "the ciphertext did not authenticate for this ApiKey",
}


class SealedSourceInvalid(Exception):
    """A sealed source (``spec.source.sealed``) could not be opened.

    Raised for every failure: bad base64, truncation, an unknown format version, a value
    sealed to another recipient key, any flipped bit, a value copied from another ApiKey
    or namespace. ``reason`` says which, coarsely; the message never carries key material
    or plaintext.
    """

    def __init__(self, namespace: str, name: str, reason: SealedSourceFailure) -> None:
        self.namespace = namespace
        self.name = name
        self.reason: SealedSourceFailure = reason
        super().__init__(
            f"cannot open the sealed source of ApiKey {namespace}/{name}: "
            f"{_SEALED_REASON_TEXT[reason]}"
        )


class KmsError(Exception):
    """Base class of every error a KMS provider raises."""

    retryable = False

    def __init__(self, provider: str, key_id: str, detail: str) -> None:
        self.provider = provider
        self.key_id = key_id
        self.detail = detail
        super().__init__(f"KMS {provider} key {key_id!r}: {detail}")


class KmsUnavailable(KmsError):
    """The KMS could not be reached or is throttling: retry with backoff."""

    retryable = True


class KmsDenied(KmsError):
    """The KMS refused: missing permission, disabled or locked key. Retrying will not help."""


class KmsCorrupt(KmsError):
    """The wrapped key is damaged, or was wrapped for a different context."""
