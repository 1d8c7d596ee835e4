"""Owns key derivation: the local key hierarchy, its password verifier, and HKDF.

::

    master password
        -> PBKDF2-HMAC-SHA256 (32-byte random salt; 600,000 iterations by default,
                           never fewer than the original design's 100,000)
        -> master key (32 bytes)
        -> HKDF-SHA256 with one label per purpose
             -> key-encryption key   (wraps data keys in the ``local`` KMS provider)
             -> integrity key        (keyed fingerprints, HMAC-SHA256)
             -> authentication key   (the password verifier)

The iteration count and salt travel with the data they protect (``KdfParams``), so a
later rise in the default never breaks what was derived before. ``calibrate_iterations``
picks a count for a target time on the machine it runs on.

``hkdf_sha256`` is the full HKDF (extract, then expand) for the other modules that need
one, such as ``sealing``, so that PBKDF2 and HKDF keep a single owner.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from secure_keys.core.memory import zero

__all__ = [
    "DEFAULT_ITERATIONS",
    "MIN_ITERATIONS",
    "SALT_SIZE",
    "KdfParams",
    "KeyHierarchy",
    "calibrate_iterations",
    "hkdf_sha256",
    "normalize_password",
]

KDF_ALGORITHM = "pbkdf2-hmac-sha256"
DEFAULT_ITERATIONS = 600_000
"""OWASP's current figure for PBKDF2-HMAC-SHA256 (Password Storage Cheat Sheet)."""
MIN_ITERATIONS = 100_000
"""The floor from the original design. Metadata asking for fewer is refused, not obeyed."""
MAX_ITERATIONS = 10_000_000
SALT_SIZE = 32
MIN_SALT_SIZE = 16
MAX_SALT_SIZE = 64
KEY_SIZE = 32

_INFO_KEK = b"securekeys.io/v1/key-encryption"
_INFO_INTEGRITY = b"securekeys.io/v1/integrity"
_INFO_AUTHENTICATION = b"securekeys.io/v1/authentication"
_VERIFIER_LABEL = b"securekeys.io/v1/password-verifier"


def normalize_password(password: str | bytes | bytearray) -> bytearray:
    """Return the password as UTF-8 (NFC-normalised if given as text) in a zeroable buffer."""
    if isinstance(password, str):
        encoded = bytearray(unicodedata.normalize("NFC", password).encode())
    else:
        encoded = bytearray(password)
    if not encoded:
        raise ValueError("password must not be empty")
    return encoded


@dataclass(frozen=True, slots=True)
class KdfParams:
    """How a master key was derived: stored beside the data, never secret."""

    iterations: int
    salt: bytes = field(repr=False)
    algorithm: str = KDF_ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != KDF_ALGORITHM:
            raise ValueError(f"unsupported KDF {self.algorithm!r}; expected {KDF_ALGORITHM}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise ValueError("iterations must be an integer")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(
                f"iterations {self.iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}"
            )
        if not MIN_SALT_SIZE <= len(self.salt) <= MAX_SALT_SIZE:
            raise ValueError(f"salt must be {MIN_SALT_SIZE} to {MAX_SALT_SIZE} bytes")

    @classmethod
    def generate(cls, iterations: int = DEFAULT_ITERATIONS) -> KdfParams:
        """Fresh parameters with a random 32-byte salt."""
        return cls(iterations=iterations, salt=secrets.token_bytes(SALT_SIZE))

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "iterations": self.iterations,
            "salt": base64.b64encode(self.salt).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> KdfParams:
        if not isinstance(data, dict):
            raise ValueError("kdf parameters must be an object")
        try:
            salt, algorithm = data["salt"], data["algorithm"]
            if not isinstance(salt, str) or not isinstance(algorithm, str):
                raise TypeError("salt and algorithm must be strings")
            return cls(
                iterations=data["iterations"],
                salt=base64.b64decode(salt, validate=True),
                algorithm=algorithm,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid kdf parameters: {exc}") from None


MAX_HKDF_LENGTH = 255 * 32
"""RFC 5869's limit for HKDF-SHA256: 255 blocks of the 32-byte hash output."""


def hkdf_sha256(
    ikm: bytes | bytearray, *, salt: bytes, info: bytes, length: int = KEY_SIZE
) -> bytearray:
    """HKDF-SHA256 (RFC 5869, extract then expand) into a fresh ``bytearray``.

    For input keying material that is not already uniformly random, such as an X25519
    shared secret. The output is written straight into the returned buffer
    (``derive_into``), so the derived key never exists as ``bytes``; the caller zeroes it.
    """
    if not 1 <= length <= MAX_HKDF_LENGTH:
        raise ValueError(f"HKDF-SHA256 output length must be 1 to {MAX_HKDF_LENGTH} bytes")
    out = bytearray(length)
    HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive_into(ikm, out)
    return out


def _hkdf(master: bytearray, info: bytes) -> bytearray:
    # The master key is already uniformly random (PBKDF2 output), so HKDF's extract step
    # adds nothing; expand with one label per purpose (RFC 5869, section 3.3).
    out = bytearray(KEY_SIZE)
    HKDFExpand(algorithm=hashes.SHA256(), length=KEY_SIZE, info=info).derive_into(master, out)
    return out


@dataclass(slots=True, repr=False, eq=False)
class KeyHierarchy:
    """The three keys derived from one master password. Call ``wipe()`` when done."""

    params: KdfParams
    kek: bytearray
    integrity_key: bytearray
    authentication_key: bytearray

    @classmethod
    def derive(cls, password: str | bytes | bytearray, params: KdfParams) -> KeyHierarchy:
        secret = normalize_password(password)
        master = bytearray(KEY_SIZE)
        try:
            # derive_into writes straight into our buffer: no immutable copy of the key.
            PBKDF2HMAC(
                algorithm=hashes.SHA256(),
                length=KEY_SIZE,
                salt=params.salt,
                iterations=params.iterations,
            ).derive_into(secret, master)
        finally:
            zero(secret)
        try:
            return cls(
                params=params,
                kek=_hkdf(master, _INFO_KEK),
                integrity_key=_hkdf(master, _INFO_INTEGRITY),
                authentication_key=_hkdf(master, _INFO_AUTHENTICATION),
            )
        finally:
            zero(master)

    def __repr__(self) -> str:
        return f"KeyHierarchy(iterations={self.params.iterations}, keys=<redacted>)"

    def verifier(self) -> bytes:
        """A value to store that proves a later password is the same, and reveals nothing.

        It is an HMAC under the authentication key, so checking a guess against it costs
        a full PBKDF2 run, the same as any other attack on the password.
        """
        return hmac.new(self.authentication_key, _VERIFIER_LABEL, sha256).digest()

    def verify(self, stored_verifier: bytes) -> bool:
        """Constant-time check of ``stored_verifier`` against this hierarchy's own."""
        return hmac.compare_digest(self.verifier(), stored_verifier)

    def wipe(self) -> None:
        for key in (self.kek, self.integrity_key, self.authentication_key):
            zero(key)


def calibrate_iterations(
    target_seconds: float = 0.5,
    *,
    minimum: int = DEFAULT_ITERATIONS,
    sample_iterations: int = 50_000,
    rounds: int = 3,
) -> int:
    """Pick a PBKDF2 iteration count that takes about ``target_seconds`` here.

    Times ``rounds`` runs of ``sample_iterations`` and scales from the fastest (the least
    disturbed by other load), rounds to a multiple of 10,000, and never returns less
    than ``minimum`` (itself never below ``MIN_ITERATIONS``).
    """
    if target_seconds <= 0:
        raise ValueError("target_seconds must be positive")
    floor = max(minimum, MIN_ITERATIONS)
    salt = bytes(SALT_SIZE)
    best = float("inf")
    for _ in range(max(1, rounds)):
        kdf = PBKDF2HMAC(
            algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, iterations=sample_iterations
        )
        start = time.perf_counter()
        kdf.derive(b"calibration")
        best = min(best, time.perf_counter() - start)
    per_iteration = best / sample_iterations
    scaled = int(target_seconds / per_iteration) if per_iteration > 0 else MAX_ITERATIONS
    rounded = (scaled // 10_000) * 10_000
    return min(max(rounded, floor), MAX_ITERATIONS)
