"""Owns TOTP codes (RFC 6238: 30-second steps, 6 digits) with ``pyotp``: the local
store's optional second factor and the gateway's MFA for people (docs/access.md).

``pyotp`` comes with the ``totp`` extra (and the gateway's ``server`` extra) and is
imported only when a code is made or checked. A code is compared in constant time
against the codes of the current step and one step either side, and the step it matched
is returned, so the caller can refuse a code already used (the local store keeps the
last step in ``keys.db``, the gateway in its MFA Secret, written with a resourceVersion
precondition so two replicas cannot both accept one code).

What the local store's use is, honestly: a check that whoever opens the store also
holds the authenticator, enforced by this program. Someone with ``keys.db`` and the
password can unwrap the TOTP secret themselves; the password (and the KMS behind it)
stays what protects the data at rest.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from typing import Any

__all__ = ["check_secret", "matching_step", "new_secret", "provisioning_uri", "step_of"]

_DIGITS = 6
_WINDOW = 1


def _pyotp() -> Any:
    try:
        import pyotp
    except ImportError:
        raise ImportError("TOTP needs the 'totp' extra: pip install 'secure-keys[totp]'") from None
    return pyotp


def new_secret() -> str:
    """A fresh base32 secret (160 bits, as RFC 4226 recommends)."""
    secret: str = _pyotp().random_base32(32)
    return secret


def check_secret(secret: str) -> None:
    """Raise ``ValueError`` unless ``secret`` is base32 of at least 128 bits."""
    try:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    except (binascii.Error, ValueError):
        raise ValueError("a TOTP secret must be base32") from None
    if len(raw) < 16:
        raise ValueError("a TOTP secret must be at least 128 bits")


def provisioning_uri(secret: str, account: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans (it contains the secret)."""
    uri: str = _pyotp().TOTP(secret).provisioning_uri(name=account, issuer_name="secure-keys")
    return uri


def matching_step(secret: bytearray, code: str, now: dt.datetime) -> int | None:
    """The time step whose code equals ``code`` (now, or one step either side), else None."""
    if len(code) != _DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = _pyotp().TOTP(secret.decode("ascii"))
    current: int = totp.timecode(now)
    found = None
    for offset in range(-_WINDOW, _WINDOW + 1):
        step = current + offset
        expected: str = totp.generate_otp(step)
        if hmac.compare_digest(expected.encode(), code.encode()):
            found = step
    return found


def step_of(now: dt.datetime) -> int:
    """The 30-second time step ``now`` falls in (RFC 6238's T)."""
    return int(now.timestamp()) // 30
