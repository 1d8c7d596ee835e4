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
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
_U16 = struct.Struct(">H")


class EnvelopeFormatError(ValueError):
    """The bytes are not a well-formed envelope of a supported format."""

    def __init__(self, reason: OpenFailure, detail: str) -> None:
        self.reason: OpenFailure = reason
        super().__init__(f"not a valid secure-keys envelope: {detail}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sealed ApiKey version: the wrapped DEK, the nonce and the AES-GCM ciphertext."""

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
        provider = w.provider.encode("ascii")
        if (
            len(w.key_id.encode()) > MAX_KEY_ID_SIZE
            or len(w.key_version.encode()) > MAX_KEY_VERSION_SIZE
            or len(w.ciphertext) > MAX_WRAPPED_SIZE
            or len(self.nonce) != NONCE_SIZE
            or not TAG_SIZE < len(self.ciphertext) <= MAX_PLAINTEXT_SIZE + TAG_SIZE
        ):
            raise ValueError(f"{w!r} does not fit envelope format {self.format}")
        return b"".join(
            (
                bytes((self.format, len(provider))),
                provider,
                length_prefixed(w.key_id),
                length_prefixed(w.key_version),
                length_prefixed(w.ciphertext),
                self.nonce,
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Envelope:
        """Parse an envelope. Raises ``EnvelopeFormatError``; does not decrypt anything."""
        raw = bytes(data)
        if not raw:
            raise EnvelopeFormatError("malformed", "empty")
        if raw[0] not in SUPPORTED_FORMATS:
            raise EnvelopeFormatError("unsupported-format", f"format version {raw[0]}")
        try:
            size = raw[1]
            provider = raw[2 : 2 + size].decode("ascii")
            offset = 2 + size
            fields: list[bytes] = []
            for limit in (MAX_KEY_ID_SIZE, MAX_KEY_VERSION_SIZE, MAX_WRAPPED_SIZE):
                (length,) = _U16.unpack_from(raw, offset)
                offset += 2
                if length > limit or offset + length > len(raw):
                    raise EnvelopeFormatError("malformed", "field length out of range")
                fields.append(raw[offset : offset + length])
                offset += length
            key_id, key_version = fields[0].decode(), fields[1].decode()
            nonce = raw[offset : offset + NONCE_SIZE]
            ciphertext = raw[offset + NONCE_SIZE :]
            if len(nonce) != NONCE_SIZE or len(ciphertext) <= TAG_SIZE:
                raise EnvelopeFormatError("malformed", "truncated")
            if len(ciphertext) > MAX_PLAINTEXT_SIZE + TAG_SIZE:
                raise EnvelopeFormatError("malformed", "ciphertext too long")
            wrapped = WrappedKey(provider, key_id, key_version, fields[2])
        except EnvelopeFormatError:
            raise
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            raise EnvelopeFormatError("malformed", "truncated or malformed header") from None
        return cls(raw[0], wrapped, nonce, ciphertext)


def _aad(format_version: int, binding: KeyBinding, provider: str, key_id: str) -> bytes:
    return b"".join(
        (
            _AAD_DOMAIN,
            bytes((format_version,)),
            binding.encoded,
            length_prefixed(provider),
            length_prefixed(key_id),
        )
    )


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
    if len(dek) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("DEK must be 32 bytes and nonce 12 bytes")
    wrapped = kms.wrap(dek, binding.wrap_context(FORMAT_V1))
    if len(wrapped.ciphertext) > MAX_WRAPPED_SIZE:
        raise ValueError(f"KMS returned a wrapped key over {MAX_WRAPPED_SIZE} bytes")
    aad = _aad(FORMAT_V1, binding, wrapped.provider, wrapped.key_id)
    ciphertext = AeadKey(dek).encrypt(nonce, plaintext, aad)
    return Envelope(FORMAT_V1, wrapped, bytes(nonce), ciphertext)


def _fail(binding: KeyBinding, reason: OpenFailure) -> InvalidEnvelope:
    return InvalidEnvelope(binding.namespace, binding.name, binding.version, reason)


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
    if wrapped.provider != kms.name or wrapped.key_id != kms.key_id:
        raise _fail(binding, "wrong-key")
    try:
        dek = kms.unwrap(wrapped, binding.wrap_context(envelope.format))
    except KmsError as exc:
        if exc.retryable:
            raise
        raise _fail(binding, "unwrap-refused") from None
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
    if wrapped.provider != kms.name or wrapped.key_id != kms.key_id:
        raise _fail(binding, "wrong-key")
    try:
        moved = rewrap_key(kms, wrapped, binding.wrap_context(envelope.format))
    except KmsError as exc:
        if exc.retryable:
            raise
        raise _fail(binding, "unwrap-refused") from None
    if moved is wrapped:
        return envelope
    return Envelope(envelope.format, moved, envelope.nonce, envelope.ciphertext)
