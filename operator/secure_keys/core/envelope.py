"""Owns the sealed form of one ApiKey version: ``seal``, ``open`` and the envelope format.

Envelope encryption, one data key (DEK) per version:

1. a fresh 256-bit DEK and a fresh 96-bit nonce from the OS CSPRNG;
2. the plaintext is encrypted with AES-256-GCM under the DEK; the associated data binds
   the namespace, name and version of the ApiKey, the KMS provider and key id, and the
   format version;
3. the DEK is wrapped by a KMS provider under a wrap context carrying the same binding;
4. the result is framed as a versioned binary envelope (``docs/envelope-format.md``).

Every failure to open, whatever its cause, raises ``InvalidEnvelope``; only a KMS that
cannot be reached raises something else (``KmsUnavailable``), because then nothing is known
about the envelope. Plaintext and DEKs live in ``bytearray`` buffers that are zeroed after
use (``docs/memory.md`` says how far that goes in Python).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from secure_keys.core.aead import KEY_SIZE, NONCE_SIZE, TAG_SIZE, AeadKey, AuthenticationFailed
from secure_keys.core.binding import KeyBinding, length_prefixed
from secure_keys.core.errors import InvalidEnvelope, KmsError, OpenFailure
from secure_keys.core.kms.base import KmsProvider, WrappedKey
from secure_keys.core.kms.base import rewrap as rewrap_key
from secure_keys.core.memory import random_secret, zero

__all__ = [
    "FORMAT_V1",
    "MAX_PLAINTEXT_SIZE",
    "SUPPORTED_FORMATS",
    "Envelope",
    "EnvelopeFormatError",
    "open",
    "opened",
    "rewrap",
    "seal",
]

FORMAT_V1 = 0x01
SUPPORTED_FORMATS = frozenset({FORMAT_V1})
MAX_PLAINTEXT_SIZE = 64 * 1024
"""API keys, tokens, certificates and service-account JSON all fit; larger is refused."""
MAX_WRAPPED_SIZE = 8 * 1024
MAX_KEY_ID_SIZE = 2048
MAX_KEY_VERSION_SIZE = 1024

_AAD_DOMAIN = b"securekeys.io/envelope\x00"


class EnvelopeFormatError(ValueError):
    """The bytes are not a well-formed envelope of a supported format."""

    def __init__(self, reason: OpenFailure, detail: str) -> None:
        self.reason: OpenFailure = reason
        super().__init__(f"not a valid secure-keys envelope: {detail}")


class Envelope(NamedTuple):
    """One sealed ApiKey version: the wrapped DEK, the nonce and the AES-GCM ciphertext.

    Immutable. (A named tuple rather than a frozen dataclass: seal+open build two of these
    and two ``WrappedKey`` objects per call, and a dataclass costs three times as much.)
    """

    format: int
    wrapped: WrappedKey
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return (
            f"Envelope(format={self.format}, wrapped={self.wrapped!r}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )

    def to_bytes(self) -> bytes:
        """Frame the envelope. Raises ``ValueError`` for fields the format cannot carry."""
        w = self.wrapped
        wrapped_size = len(w.ciphertext)
        if (
            self.format not in SUPPORTED_FORMATS
            or not 0 < wrapped_size <= MAX_WRAPPED_SIZE
            or len(self.nonce) != NONCE_SIZE
            or not TAG_SIZE < len(self.ciphertext) <= MAX_PLAINTEXT_SIZE + TAG_SIZE
        ):
            raise ValueError(f"{w!r} does not fit envelope format {self.format}")
        return b"".join(
            (
                _header(self.format, w.provider, w.key_id, w.key_version),
                wrapped_size.to_bytes(2, "big"),
                w.ciphertext,
                self.nonce,
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Envelope:
        """Parse an envelope. Raises ``EnvelopeFormatError``; does not decrypt anything."""
        raw = bytes(data)
        size = len(raw)
        if not size:
            raise EnvelopeFormatError("malformed", "empty")
        if raw[0] not in SUPPORTED_FORMATS:
            raise EnvelopeFormatError("unsupported-format", f"format version {raw[0]}")
        try:
            # format, u8-prefixed provider, u16-prefixed key id, key version, wrapped DEK
            id_at = 2 + raw[1]
            id_size = (raw[id_at] << 8) | raw[id_at + 1]
            version_at = id_at + 2 + id_size
            version_size = (raw[version_at] << 8) | raw[version_at + 1]
            wrapped_size_at = version_at + 2 + version_size
            wrapped_size = (raw[wrapped_size_at] << 8) | raw[wrapped_size_at + 1]
        except IndexError:
            raise EnvelopeFormatError("malformed", "truncated header") from None
        wrapped_at = wrapped_size_at + 2
        nonce_at = wrapped_at + wrapped_size
        ciphertext_at = nonce_at + NONCE_SIZE
        if (
            id_size > MAX_KEY_ID_SIZE
            or version_size > MAX_KEY_VERSION_SIZE
            or not 0 < wrapped_size <= MAX_WRAPPED_SIZE
        ):
            raise EnvelopeFormatError("malformed", "header field length out of range")
        if not TAG_SIZE < size - ciphertext_at <= MAX_PLAINTEXT_SIZE + TAG_SIZE:
            raise EnvelopeFormatError("malformed", "truncated or oversized")
        header = raw[:wrapped_size_at]
        identity = _parsed_headers.get(header)
        try:
            if identity is None:
                identity = (
                    raw[2:id_at].decode("ascii"),
                    raw[id_at + 2 : version_at].decode(),
                    raw[version_at + 2 : wrapped_size_at].decode(),
                )
                WrappedKey(*identity, b"\x00")  # validates provider name and key id
                if len(_parsed_headers) >= _HEADER_MEMO_LIMIT:
                    _parsed_headers.clear()
                _parsed_headers[header] = identity
            wrapped = WrappedKey(*identity, raw[wrapped_at:nonce_at])
        except (UnicodeDecodeError, ValueError):
            raise EnvelopeFormatError("malformed", "malformed header") from None
        return cls(raw[0], wrapped, raw[nonce_at:ciphertext_at], raw[ciphertext_at:])


# Headers repeat: one provider and key id, a handful of key versions. Both directions are
# memoised (bounded, keyed by their whole input), so framing and parsing skip re-encoding
# and re-validating them.
_HEADER_MEMO_LIMIT = 64
_headers: dict[tuple[int, str, str, str], bytes] = {}
_parsed_headers: dict[bytes, tuple[str, str, str]] = {}


def _header(format_version: int, provider: str, key_id: str, key_version: str) -> bytes:
    memo_key = (format_version, provider, key_id, key_version)
    header = _headers.get(memo_key)
    if header is None:
        encoded_id, encoded_version = key_id.encode(), key_version.encode()
        if len(encoded_id) > MAX_KEY_ID_SIZE or len(encoded_version) > MAX_KEY_VERSION_SIZE:
            raise ValueError("KMS key id or key version too long for the envelope format")
        name = provider.encode("ascii")
        header = (
            bytes((format_version, len(name)))
            + name
            + length_prefixed(encoded_id)
            + length_prefixed(encoded_version)
        )
        if len(_headers) >= _HEADER_MEMO_LIMIT:
            _headers.clear()
        _headers[memo_key] = header
    return header


_AAD_PREFIXES = {version: _AAD_DOMAIN + bytes((version,)) for version in SUPPORTED_FORMATS}


def _aad(format_version: int, binding: KeyBinding, provider: str, key_id: str) -> bytes:
    return binding.associated_data(_AAD_PREFIXES[format_version], provider, key_id)


def seal(plaintext: bytes | bytearray, binding: KeyBinding, kms: KmsProvider) -> Envelope:
    """Seal one ApiKey version under a fresh DEK wrapped by ``kms``.

    The caller still owns ``plaintext`` and should zero it when done.
    """
    dek = random_secret(KEY_SIZE)
    try:
        return _seal_with(plaintext, binding, kms, dek=dek, nonce=os.urandom(NONCE_SIZE))
    finally:
        zero(dek)


def _seal_with(
    plaintext: bytes | bytearray,
    binding: KeyBinding,
    kms: KmsProvider,
    *,
    dek: bytes | bytearray,
    nonce: bytes,
) -> Envelope:
    # Private seam: tests fix the DEK and nonce to check known-answer vectors. Production
    # code goes through ``seal``, which draws both from the CSPRNG.
    if not 1 <= len(plaintext) <= MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext must be 1 to {MAX_PLAINTEXT_SIZE} bytes")
    cipher = AeadKey(dek)  # checks the DEK size; ``encrypt`` checks the nonce size
    wrapped = kms.wrap(dek, binding.wrap_context(FORMAT_V1))
    aad = _aad(FORMAT_V1, binding, wrapped.provider, wrapped.key_id)
    ciphertext = cipher.encrypt(nonce, plaintext, aad)
    return Envelope(FORMAT_V1, wrapped, bytes(nonce), ciphertext)


def _fail(binding: KeyBinding, reason: OpenFailure) -> InvalidEnvelope:
    return InvalidEnvelope(binding.namespace, binding.name, binding.version, reason)


def _check_key(wrapped: WrappedKey, binding: KeyBinding, kms: KmsProvider) -> None:
    if wrapped.provider != kms.name or wrapped.key_id != kms.key_id:
        raise _fail(binding, "wrong-key")


def _refusal(exc: KmsError, binding: KeyBinding) -> Exception:
    # A KMS that cannot be reached says nothing about the envelope: let the caller retry.
    return exc if exc.retryable else _fail(binding, "unwrap-refused")


def open(  # noqa: A001 - the envelope API is seal/open, as the format's docs name them
    sealed: Envelope | bytes | bytearray,
    binding: KeyBinding,
    kms: KmsProvider,
) -> bytearray:
    """Open one sealed ApiKey version and return its plaintext in a fresh ``bytearray``.

    The caller must zero the result (``opened`` does it for a ``with`` block). Raises
    ``InvalidEnvelope`` for every failure except an unreachable KMS (``KmsUnavailable``).
    """
    if isinstance(sealed, Envelope):
        envelope = sealed
        if envelope.format not in SUPPORTED_FORMATS:
            raise _fail(binding, "unsupported-format")
    else:
        try:
            envelope = Envelope.from_bytes(sealed)
        except EnvelopeFormatError as exc:
            raise _fail(binding, exc.reason) from None
    wrapped = envelope.wrapped
    _check_key(wrapped, binding, kms)
    try:
        dek = kms.unwrap(wrapped, binding.wrap_context(envelope.format))
    except KmsError as exc:
        raise _refusal(exc, binding) from None
    if type(dek) is not bytearray:
        raise _fail(binding, "unwrap-refused")  # a provider bug; refuse, don't guess
    try:
        if len(dek) != KEY_SIZE:
            raise _fail(binding, "unwrap-refused")
        cipher = AeadKey(dek)
    finally:
        zero(dek)
    aad = _aad(envelope.format, binding, wrapped.provider, wrapped.key_id)
    try:
        return cipher.decrypt(envelope.nonce, envelope.ciphertext, aad)
    except AuthenticationFailed:
        raise _fail(binding, "authentication-failed") from None


@contextmanager
def opened(
    sealed: Envelope | bytes | bytearray, binding: KeyBinding, kms: KmsProvider
) -> Iterator[bytearray]:
    """``open`` for a ``with`` block: the plaintext is zeroed when the block ends."""
    plaintext = open(sealed, binding, kms)
    try:
        yield plaintext
    finally:
        zero(plaintext)


def rewrap(envelope: Envelope, binding: KeyBinding, kms: KmsProvider) -> Envelope:
    """Move the envelope's DEK to the newest version of the same KMS key.

    The nonce and ciphertext are kept byte for byte: a KEK rotation never touches the
    sealed plaintext. Moving to a different KMS key changes the associated data, so that
    takes ``open`` and ``seal``. An envelope already on the newest key version is returned
    as it is, without a KMS call (and so without checking it); otherwise a DEK that does
    not unwrap raises ``InvalidEnvelope``.
    """
    wrapped = envelope.wrapped
    _check_key(wrapped, binding, kms)
    try:
        moved = rewrap_key(kms, wrapped, binding.wrap_context(envelope.format))
    except KmsError as exc:
        raise _refusal(exc, binding) from None
    if moved is wrapped:
        return envelope
    return Envelope(envelope.format, moved, envelope.nonce, envelope.ciphertext)
