"""Owns AES-256-GCM. No other module of secure-keys touches the AEAD primitive.

Everything above this module sees a key object with three operations: encrypt under a
caller-supplied 96-bit nonce, decrypt into a fresh ``bytearray``, and nothing else. A
failed decryption raises ``AuthenticationFailed``, which carries no data; callers turn it
into their own single error type (``InvalidEnvelope`` for envelopes, ``KmsCorrupt`` for
the local provider's wrapped keys).
"""

from __future__ import annotations

import weakref

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


def _cipher_copies_its_key() -> bool:
    """Does ``AESGCM`` copy its key at construction, or keep reading the caller's buffer?

    cryptography builds against OpenSSL 3.2+ (the PyPI wheels) copy the key into a cipher
    context; builds against older OpenSSL keep a reference to the key object and read it
    on every call, so zeroing the caller's buffer would silently change the key. Checked
    once at import by changing the buffer after construction.
    """
    key = bytearray(KEY_SIZE)
    key[0] = 1
    cipher = AESGCM(key)
    key[0] = 0
    nonce = bytes(NONCE_SIZE)
    return cipher.encrypt(nonce, b"", None) != AESGCM(bytes(KEY_SIZE)).encrypt(nonce, b"", None)


CIPHER_COPIES_KEY = _cipher_copies_its_key()


class AeadKey:
    """An AES-256-GCM key, ready to use.

    The caller may (and should) zero its own key buffer straight after construction. When
    the cipher copies the key (``CIPHER_COPIES_KEY``), nothing else is kept; otherwise this
    object keeps a private copy for the cipher to read, zeroed when the object is
    collected. The key is never exposed.
    """

    __slots__ = ("__weakref__", "_cipher")

    def __init__(self, key: bytes | bytearray) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-GCM needs a {KEY_SIZE}-byte key, got {len(key)} bytes")
        if CIPHER_COPIES_KEY:
            self._cipher = AESGCM(key)
        else:  # pragma: no cover - only on cryptography built against OpenSSL < 3.2
            own = bytearray(key)
            self._cipher = AESGCM(own)
            weakref.finalize(self, zero, own)

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
