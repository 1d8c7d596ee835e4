"""Owns the ``keychain`` KMS provider: data keys wrapped under a KEK kept in the OS keychain.

The KEK is 256 random bits stored by the ``keyring`` library (the ``keychain`` extra):
the macOS Keychain, the Windows Credential Locker, or a Secret Service (GNOME Keyring,
KWallet, KeePassXC) on a Linux desktop. Entries live under a service name (default
``secure-keys``): ``<key id>@<n>`` holds KEK version n in base64, and ``<key id>`` names
the newest version. ``rotate_kek`` adds a version; older ones still unwrap until a
``rewrap`` moves their data keys.

A wrapped DEK is ``0x01 || nonce (12) || AES-256-GCM(KEK, DEK) with tag``, the associated
data binding the key id, the KEK version and the caller's wrap context (the ``local``
provider's layout under its own domain label).

Headless Linux: with no Secret Service on the session bus, ``keyring`` has no backend
(``keyring.backends.fail.Keyring``) and every call raises; this provider then refuses
with ``KmsUnavailable`` saying so, and nothing falls back to a plaintext file. Use the
``local`` provider (a password) there instead. The KEK passes through the keychain API as
a Python string, which cannot be zeroed (``docs/memory.md``).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Mapping
from typing import Any

from secure_keys.core.aead import KEY_SIZE, NONCE_SIZE, TAG_SIZE, AeadKey, AuthenticationFailed
from secure_keys.core.binding import WrapContext, length_prefixed
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, WrappedKey
from secure_keys.core.memory import random_secret, zero

__all__ = ["PROVIDER", "KeychainKms", "from_config", "rotate_kek"]

PROVIDER = "keychain"
DEFAULT_SERVICE = "secure-keys"
WRAP_FORMAT = 0x01
WRAPPED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_AAD_DOMAIN = b"securekeys.io/keychain-wrap\x00"
_MAX_VERSIONS = 64


def _keyring() -> Any:
    import keyring

    return keyring


def _call(key_id: str, what: str, fn: Any, *args: str) -> Any:
    keyring = _keyring()
    try:
        return fn(*args)
    except keyring.errors.NoKeyringError:
        raise KmsUnavailable(
            PROVIDER,
            key_id,
            "no OS keychain is available (on Linux: no Secret Service such as GNOME Keyring "
            "or KeePassXC on the session D-Bus); use the 'local' provider with a password",
        ) from None
    except keyring.errors.KeyringLocked:
        raise KmsDenied(PROVIDER, key_id, f"the keychain is locked ({what})") from None
    except keyring.errors.KeyringError as exc:
        raise KmsUnavailable(PROVIDER, key_id, f"{what}: {type(exc).__name__}") from None


def _entry(key_id: str, version: int) -> str:
    return f"{key_id}@{version}"


def _newest(service: str, key_id: str) -> int | None:
    text = _call(key_id, "reading the newest version", _keyring().get_password, service, key_id)
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= _MAX_VERSIONS:
        raise KmsCorrupt(PROVIDER, key_id, "the keychain's version entry is malformed")
    return int(text)


def _load(service: str, key_id: str, version: int) -> AeadKey:
    text = _call(key_id, "reading a KEK", _keyring().get_password, service, _entry(key_id, version))
    if text is None:
        raise KmsDenied(PROVIDER, key_id, f"KEK version {version} is not in the keychain")
    try:
        raw = bytearray(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise KmsCorrupt(PROVIDER, key_id, f"KEK version {version} is malformed") from None
    try:
        if len(raw) != KEY_SIZE:
            raise KmsCorrupt(PROVIDER, key_id, f"KEK version {version} is not 256 bits")
        return AeadKey(raw)
    finally:
        zero(raw)


def rotate_kek(key_id: str, service: str = DEFAULT_SERVICE) -> int:
    """Add a KEK version (the first if there is none) and make it the newest; return it."""
    newest = _newest(service, key_id) or 0
    if newest >= _MAX_VERSIONS:
        raise KmsDenied(PROVIDER, key_id, f"at most {_MAX_VERSIONS} KEK versions")
    version = newest + 1
    kek = random_secret(KEY_SIZE)
    try:
        text = base64.b64encode(kek).decode()
    finally:
        zero(kek)
    keyring = _keyring()
    _call(key_id, "storing a KEK", keyring.set_password, service, _entry(key_id, version), text)
    _call(key_id, "storing the version", keyring.set_password, service, key_id, str(version))
    return version


class KeychainKms:
    """Wraps with the newest KEK version in the keychain; unwraps with any version there."""

    def __init__(self, key_id: str, service: str = DEFAULT_SERVICE) -> None:
        if not key_id or len(key_id) > 200:
            raise ValueError("a keychain key id must be 1 to 200 characters")
        self._key_id = key_id
        self._service = service
        self._keks: dict[int, AeadKey] = {}
        newest = _newest(service, key_id)
        if newest is None:
            raise KmsDenied(
                PROVIDER, key_id, f"no key {key_id!r} in the keychain (service {service!r})"
            )
        self._newest = newest

    def __repr__(self) -> str:
        return f"KeychainKms(key_id={self._key_id!r}, service={self._service!r})"

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._key_id

    def key_version(self) -> str:
        return str(self._newest)

    def _kek(self, version: int) -> AeadKey:
        kek = self._keks.get(version)
        if kek is None:
            kek = self._keks[version] = _load(self._service, self._key_id, version)
        return kek

    def _aad(self, version: int, context: WrapContext) -> bytes:
        return b"".join(
            (
                _AAD_DOMAIN,
                length_prefixed(self._key_id),
                struct.pack(">I", version),
                context.canonical,
            )
        )

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        if len(dek) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._kek(self._newest).encrypt(nonce, dek, self._aad(self._newest, context))
        return WrappedKey(
            PROVIDER, self._key_id, str(self._newest), bytes((WRAP_FORMAT,)) + nonce + sealed
        )

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        if wrapped.provider != PROVIDER or wrapped.key_id != self._key_id:
            raise KmsCorrupt(PROVIDER, self._key_id, "wrapped by another key")
        text = wrapped.key_version
        if not text.isascii() or not text.isdigit() or str(int(text)) != text:
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed KEK version")
        version = int(text)
        blob = wrapped.ciphertext
        if len(blob) != WRAPPED_SIZE or blob[0] != WRAP_FORMAT:
            raise KmsCorrupt(PROVIDER, self._key_id, "malformed wrapped key")
        kek = self._kek(version)
        try:
            return kek.decrypt(
                blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], self._aad(version, context)
            )
        except AuthenticationFailed:
            raise KmsCorrupt(
                PROVIDER, self._key_id, "wrapped key did not authenticate for this context"
            ) from None

    def health(self) -> HealthStatus:
        probe = random_secret(KEY_SIZE)
        context = WrapContext((("securekeys.io/health", "probe"),))
        try:
            back = self.unwrap(self.wrap(probe, context), context)
            healthy = back == probe
            zero(back)
        except (KmsCorrupt, KmsDenied, KmsUnavailable) as exc:
            return HealthStatus(False, PROVIDER, self._key_id, self.key_version(), exc.detail)
        finally:
            zero(probe)
        return HealthStatus(healthy, PROVIDER, self._key_id, self.key_version())


def from_config(key_id: str, options: Mapping[str, str]) -> KeychainKms:
    """Options: ``service`` (default ``secure-keys``); ``create: "true"`` makes version 1
    when the keychain has no such key yet (``init`` of a local store does this)."""
    service = options.get("service", DEFAULT_SERVICE)
    if options.get("create") == "true" and _newest(service, key_id) is None:
        rotate_kek(key_id, service)
    return KeychainKms(key_id, service)
