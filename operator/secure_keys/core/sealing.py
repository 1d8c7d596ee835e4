"""Owns sealed sources: client-side sealing of an ApiKey's plaintext to the cluster's key.

The cluster publishes an X25519 recipient key (``Recipient.to_json``). ``secure-keys
seal`` encrypts a plaintext to it (``seal_to_recipient``), and the result goes into the
manifest's ``spec.source.sealed``, which can then be committed to git: it holds no
plaintext, and only the controller, which holds the recipient's private key, can open
it (``open_sealed``).

The scheme is ECIES-style (``docs/sealed-source-format.md``): a fresh ephemeral X25519
key per seal, HKDF-SHA256 over the shared secret (salted with both public keys), and
AES-256-GCM whose associated data binds the format version, the recipient key id and the
ApiKey's namespace and name, so a sealed value copied onto another ApiKey or namespace
does not open. This is the only module that touches X25519; AES-GCM comes from ``aead``
and HKDF from ``hierarchy``.

Every failure to open raises ``SealedSourceInvalid``. Plaintext and the derived AES key
live in ``bytearray`` buffers, zeroed after use. Two copies are out of our reach: the
X25519 shared secret and a private key's raw bytes are handed back by ``cryptography``
as immutable ``bytes``; this module drops its references to them at once but cannot
overwrite them (``docs/memory.md`` explains the general limit).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secure_keys.core.aead import NONCE_SIZE, TAG_SIZE, AeadKey, AuthenticationFailed
from secure_keys.core.binding import KeyBinding, length_prefixed
from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.errors import SealedSourceFailure, SealedSourceInvalid
from secure_keys.core.hierarchy import hkdf_sha256
from secure_keys.core.memory import zero

__all__ = [
    "FORMAT_V1",
    "HEADER_SIZE",
    "KEY_ID_DIGEST_SIZE",
    "KEY_ID_PREFIX",
    "MAX_SEALED_SIZE",
    "MAX_SEALED_TEXT_SIZE",
    "SUPPORTED_FORMATS",
    "Recipient",
    "RecipientPrivateKey",
    "SealedSourceInvalid",
    "open_sealed",
    "seal_to_recipient",
    "sealed_name",
]

FORMAT_V1 = 0x01
SUPPORTED_FORMATS = frozenset({FORMAT_V1})
KEY_SIZE = 32
"""X25519 public and private keys are both 32 raw bytes."""
KEY_ID_PREFIX = "x25519:"
KEY_ID_DIGEST_SIZE = 8
"""The key id is the first 8 bytes of a SHA-256 digest, written as 16 hex digits."""
HEADER_SIZE = 1 + KEY_ID_DIGEST_SIZE + KEY_SIZE + NONCE_SIZE
MAX_SEALED_SIZE = HEADER_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE
MAX_SEALED_TEXT_SIZE = 4 * -(-MAX_SEALED_SIZE // 3)
"""Base64 length of the largest sealed value: longer text is refused before decoding."""
MAX_RECIPIENT_JSON_SIZE = 1024

_KEY_ID_LABEL = b"securekeys.io/v1/recipient-key-id\x00"
Purpose = Literal["sealed-source", "access-request"]
_DOMAINS: dict[str, tuple[bytes, bytes]] = {
    "sealed-source": (b"securekeys.io/v1/sealed-source", b"securekeys.io/sealed-source\x00"),
    "access-request": (b"securekeys.io/v1/access-request", b"securekeys.io/access-request\x00"),
}
"""Per purpose, the HKDF info and the AAD domain. A value sealed for one purpose never
opens for another, though both go to the controller's recipient key: a TOTP code or
token sealed for the gateway (``access-request``) cannot be replayed as an ApiKey's
``spec.source.sealed``, nor the reverse."""
_ZERO_SECRET = bytes(KEY_SIZE)
# Any fixed scalar works for the low-order check in ``Recipient``: X25519 clamps every
# scalar to a multiple of the cofactor 8, which sends each low-order point to zero.
_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, KEY_SIZE + 1)))


def _key_id_digest(public_key: bytes) -> bytes:
    return sha256(_KEY_ID_LABEL + public_key).digest()[:KEY_ID_DIGEST_SIZE]


def _shared_secret_is_zero(private: X25519PrivateKey, peer: X25519PublicKey) -> bool:
    try:
        shared = private.exchange(peer)
    except ValueError:  # OpenSSL itself refuses an all-zero shared secret
        return True
    return hmac.compare_digest(shared, _ZERO_SECRET)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A published X25519 recipient key: what ``secure-keys seal`` encrypts to.

    Public, and safe to print. Construction refuses anything but 32 bytes, and refuses the
    low-order points of Curve25519, to which every shared secret would be zero.
    """

    public_key: bytes
    key_id_digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Immutable bytes only: a bytearray could change under the key id computed here.
        if type(self.public_key) is not bytes:
            raise TypeError("an X25519 public key must be bytes")
        if len(self.public_key) != KEY_SIZE:
            raise ValueError(
                f"an X25519 public key is {KEY_SIZE} bytes, got {len(self.public_key)}"
            )
        peer = X25519PublicKey.from_public_bytes(self.public_key)
        if _shared_secret_is_zero(_PROBE_KEY, peer):
            raise ValueError("the X25519 public key is a low-order point")
        object.__setattr__(self, "key_id_digest", _key_id_digest(self.public_key))

    def __repr__(self) -> str:
        return f"Recipient(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """``x25519:`` and 16 hex digits of SHA-256 over a domain label and the key."""
        return KEY_ID_PREFIX + self.key_id_digest.hex()

    def to_json(self) -> str:
        """The document the cluster publishes: ``{"keyId": ..., "publicKey": base64}``."""
        return json.dumps(
            {"keyId": self.key_id, "publicKey": base64.b64encode(self.public_key).decode()}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipient:
        """Parse a published recipient document, strictly.

        Exactly the two members ``keyId`` and ``publicKey``, both strings; the public key
        in canonical padded standard base64; the key id must be the one the public key
        hashes to, which catches a document edited or mangled in transit. Raises
        ``ValueError`` saying what is wrong.
        """
        if len(text) > MAX_RECIPIENT_JSON_SIZE:
            raise ValueError(f"recipient document is over {MAX_RECIPIENT_JSON_SIZE} bytes")
        try:
            data = json.loads(text, object_pairs_hook=_unique_members)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"recipient document is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("recipient document must be a JSON object")
        if set(data) != {"keyId", "publicKey"}:
            raise ValueError(
                "recipient document must have exactly the members keyId and publicKey, "
                f"got {sorted(data)}"
            )
        key_id, encoded = data["keyId"], data["publicKey"]
        if not isinstance(key_id, str) or not isinstance(encoded, str):
            raise ValueError("recipient keyId and publicKey must be strings")
        try:
            public_key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("recipient publicKey is not valid base64") from None
        if base64.b64encode(public_key).decode() != encoded:
            raise ValueError("recipient publicKey is not canonical padded base64")
        try:
            recipient = cls(public_key)
        except ValueError as exc:
            raise ValueError(f"recipient publicKey is invalid: {exc}") from None
        if key_id != recipient.key_id:
            raise ValueError(
                f"recipient keyId {key_id!r} does not match its publicKey "
                f"(which has key id {recipient.key_id})"
            )
        return recipient


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("recipient document repeats a member")
    return members


class RecipientPrivateKey:
    """The cluster's X25519 private key, which opens sealed sources.

    Build one with ``generate`` or ``from_raw``. The key lives inside ``cryptography``
    (OpenSSL memory, cleansed when the object is freed); nothing here prints it.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = Recipient(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> RecipientPrivateKey:
        """A fresh key from the OS CSPRNG (through OpenSSL)."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes | bytearray) -> RecipientPrivateKey:
        """Load a key from its 32 raw bytes. The caller still owns (and zeroes) ``raw``."""
        if not isinstance(raw, bytes | bytearray):
            raise TypeError("an X25519 private key must be bytes or bytearray")
        if len(raw) != KEY_SIZE:
            raise ValueError(f"an X25519 private key is {KEY_SIZE} bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def raw_bytes(self) -> bytearray:
        """The 32 raw private-key bytes, in a fresh buffer the caller must zero.

        ``cryptography`` returns them as ``bytes`` first; that copy is dropped at once but
        cannot be overwritten.
        """
        return bytearray(self._key.private_bytes_raw())

    def public(self) -> Recipient:
        """The recipient key to publish."""
        return self._public

    def __repr__(self) -> str:
        return f"RecipientPrivateKey(key_id={self._public.key_id!r}, key=<redacted>)"


def _check_identity(namespace: str, name: str) -> None:
    # The same rules as a KeyBinding (DNS-1123 namespace and name); the version is moot,
    # because a sealed source belongs to the ApiKey, not to one of its versions.
    KeyBinding(namespace, name, 1)


def _aad(
    format_version: int, key_id_digest: bytes, namespace: str, name: str, purpose: Purpose
) -> bytes:
    return (
        _DOMAINS[purpose][1]
        + bytes((format_version,))
        + key_id_digest
        + length_prefixed(namespace)
        + length_prefixed(name)
    )


def _derive_cipher(
    private: X25519PrivateKey,
    ephemeral_public: bytes,
    recipient_public: bytes,
    *,
    peer: bytes,
    purpose: Purpose = "sealed-source",
) -> AeadKey | None:
    """X25519 with ``peer``, then HKDF-SHA256; ``None`` if the shared secret is all zero."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # OpenSSL refuses an all-zero shared secret itself
        return None
    if hmac.compare_digest(shared, _ZERO_SECRET):  # and in case a build does not
        return None
    key = hkdf_sha256(shared, salt=ephemeral_public + recipient_public, info=_DOMAINS[purpose][0])
    del shared  # immutable bytes from cryptography: dropped, not overwritten
    try:
        return AeadKey(key)
    finally:
        zero(key)


def sealed_name(apikey: str, version: int) -> str:
    """The name one version of a key is sealed under when it is delivered, to a sidecar
    (``core.delivery``) or to a reader (``core.accessreview``): ``<apikey>.v<version>``."""
    if version < 1:
        raise ValueError("a version is >= 1")
    return f"{apikey}.v{version}"


def seal_to_recipient(
    recipient: Recipient,
    plaintext: bytes | bytearray,
    *,
    namespace: str,
    name: str,
    purpose: Purpose = "sealed-source",
) -> str:
    """Seal ``plaintext`` for the ApiKey ``namespace/name``; return padded standard base64.

    A fresh ephemeral key and nonce are drawn for every call. Raises ``ValueError`` for an
    empty or oversized plaintext (1 to 64 KiB) or an invalid namespace or name. The caller
    still owns ``plaintext`` and should zero it when done.
    """
    return _seal_with(
        recipient,
        plaintext,
        namespace=namespace,
        name=name,
        ephemeral=RecipientPrivateKey.generate(),
        nonce=os.urandom(NONCE_SIZE),
        purpose=purpose,
    )


def _seal_with(
    recipient: Recipient,
    plaintext: bytes | bytearray,
    *,
    namespace: str,
    name: str,
    ephemeral: RecipientPrivateKey,
    nonce: bytes,
    purpose: Purpose = "sealed-source",
) -> str:
    # Private seam: tests fix the ephemeral key and nonce to check known-answer vectors.
    # Production code goes through ``seal_to_recipient``, which draws both fresh.
    _check_identity(namespace, name)
    if not 1 <= len(plaintext) <= MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext must be 1 to {MAX_PLAINTEXT_SIZE} bytes")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    ephemeral_public = ephemeral.public().public_key
    cipher = _derive_cipher(
        ephemeral._key,
        ephemeral_public,
        recipient.public_key,
        peer=recipient.public_key,
        purpose=purpose,
    )
    if cipher is None:  # unreachable for a Recipient, which refuses low-order points
        raise ValueError("the recipient key gives an all-zero shared secret")
    aad = _aad(FORMAT_V1, recipient.key_id_digest, namespace, name, purpose)
    ciphertext = cipher.encrypt(nonce, plaintext, aad)
    blob = b"".join(
        (bytes((FORMAT_V1,)), recipient.key_id_digest, ephemeral_public, nonce, ciphertext)
    )
    return base64.b64encode(blob).decode("ascii")


def open_sealed(
    private: RecipientPrivateKey,
    blob: str,
    *,
    namespace: str,
    name: str,
    purpose: Purpose = "sealed-source",
) -> bytearray:
    """Open a sealed source of the ApiKey ``namespace/name``; return its plaintext.

    The result is a fresh ``bytearray`` the caller must zero. Every failure raises
    ``SealedSourceInvalid`` with a coarse ``reason``: ``malformed`` (not canonical padded
    base64, truncated, oversized, an invalid ephemeral key), ``unsupported-format``,
    ``wrong-recipient`` (sealed to another key id) or ``authentication-failed`` (any
    other change, including a value sealed for another ApiKey or namespace). An invalid
    namespace or name is the caller's error and raises ``ValueError``.
    """
    _check_identity(namespace, name)

    def fail(reason: SealedSourceFailure) -> SealedSourceInvalid:
        return SealedSourceInvalid(namespace, name, reason)

    if not isinstance(blob, str) or len(blob) > MAX_SEALED_TEXT_SIZE:
        raise fail("malformed")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
        raise fail("malformed") from None
    # Only the canonical spelling is accepted, so no two texts open to the same value.
    if base64.b64encode(raw).decode("ascii") != blob:
        raise fail("malformed")
    if not raw:
        raise fail("malformed")
    if raw[0] not in SUPPORTED_FORMATS:
        raise fail("unsupported-format")
    if not HEADER_SIZE + TAG_SIZE < len(raw) <= MAX_SEALED_SIZE:
        raise fail("malformed")
    key_id_at, ephemeral_at, nonce_at = 1, 1 + KEY_ID_DIGEST_SIZE, 1 + KEY_ID_DIGEST_SIZE + KEY_SIZE
    key_id_digest = raw[key_id_at:ephemeral_at]
    ephemeral_public = raw[ephemeral_at:nonce_at]
    recipient = private.public()
    if not hmac.compare_digest(key_id_digest, recipient.key_id_digest):
        raise fail("wrong-recipient")
    cipher = _derive_cipher(
        private._key, ephemeral_public, recipient.public_key, peer=ephemeral_public, purpose=purpose
    )
    if cipher is None:
        raise fail("malformed")
    aad = _aad(raw[0], key_id_digest, namespace, name, purpose)
    try:
        return cipher.decrypt(raw[nonce_at:HEADER_SIZE], raw[HEADER_SIZE:], aad)
    except AuthenticationFailed:
        raise fail("authentication-failed") from None
