"""Owns AES-256-GCM. No other module of secure-keys touches the AEAD primitive.

Everything above this module sees a key object with three operations: encrypt under a
caller-supplied 96-bit nonce, decrypt into a fresh ``bytearray``, and nothing else. A
failed decryption raises ``AuthenticationFailed``, which carries no data; callers turn it
into their own single error type (``InvalidEnvelope`` for envelopes, ``KmsCorrupt`` for
the local provider's wrapped keys).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_keys.core.memory import zero

__all__ = ["KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "AeadKey", "AuthenticationFailed"]

KEY_SIZE = 32
"""AES-256: the only key size secure-keys uses."""
NONCE_SIZE = 12
"""96-bit nonces, the size GCM is specified for (NIST SP 800-38D, section 8.2)."""
TAG_SIZE = 16
"""Full 128-bit tags; truncated tags are never produced or accepted."""


class AuthenticationFailed(Exception):
    """The ciphertext, nonce, associated data or key did not authenticate."""

    def __init__(self) -> None:
        super().__init__("AES-GCM authentication failed")


class AeadKey:
    """An AES-256-GCM key, ready to use.

    The object keeps a private copy of the key, so the caller may (and should) zero its
    own buffer straight afterwards. The copy is what the cipher is built from: with some
    OpenSSL versions ``AESGCM`` references its key buffer instead of copying it, and a
    private copy stays correct either way. It is zeroed when the object is collected, and
    never exposed.
    """

    __slots__ = ("_cipher", "_key")

    def __init__(self, key: bytes | bytearray) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-GCM needs a {KEY_SIZE}-byte key, got {len(key)} bytes")
        self._key = bytearray(key)
        self._cipher = AESGCM(self._key)

    def __del__(self) -> None:
        key = getattr(self, "_key", None)
        if key is not None:
            zero(key)

    def __repr__(self) -> str:
        return "AeadKey(<redacted>)"

    def encrypt(self, nonce: bytes | bytearray, plaintext: bytes | bytearray, aad: bytes) -> bytes:
        """Return ciphertext followed by the 16-byte tag."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        return self._cipher.encrypt(nonce, plaintext, aad)

    def decrypt(
        self, nonce: bytes | bytearray, ciphertext: bytes | bytearray, aad: bytes
    ) -> bytearray:
        """Return the plaintext in a fresh ``bytearray`` the caller must zero.

        Decrypts straight into that buffer, so the plaintext never sits in an immutable
        ``bytes`` object. Raises ``AuthenticationFailed`` on any mismatch, including a
        ciphertext shorter than a tag or a nonce of the wrong size.
        """
        if len(nonce) != NONCE_SIZE or len(ciphertext) < TAG_SIZE:
            raise AuthenticationFailed
        out = bytearray(len(ciphertext) - TAG_SIZE)
        try:
            self._cipher.decrypt_into(nonce, ciphertext, aad, out)
        except InvalidTag:
            raise AuthenticationFailed from None
        return out
