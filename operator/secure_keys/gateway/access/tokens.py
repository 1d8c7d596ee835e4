"""Owns access tokens: the JWT ``secure-keys login`` gets after a TOTP code (PyJWT).

A token says "this user completed MFA at ``iat``" and nothing more: claims ``iss``
(``secure-keys-gateway``), ``aud`` (``securekeys.io/access``), ``sub`` (the user name the
API server authenticated at login), ``groups`` (informational: authorization always uses
the groups the API server reports for the review at hand), ``mfa: true``, ``jti``,
``iat``, ``exp`` (15 minutes by default, ``--access-token-ttl``).

Signing: HS256 under a key derived for each period (a day by default) from the
controller's fingerprint key, which every gateway replica opens from the KMS-sealed keys
Secret (``broker.material``): ``HKDF(fingerprint key, info = label + period number)``.
So every replica signs and verifies with the same key without any new stored secret,
the key rotates every period by construction (the ``kid`` header is the period number),
and a key is **retired** one period after its own: a token whose ``kid`` is neither the
current nor the previous period is refused, whatever its ``exp`` says. Compromise of
the fingerprint key (which already forges integrity tags) forges tokens too; nothing
weaker than the KMS protects either.

``verify`` refuses, with a reason: a malformed token, a retired or unknown ``kid``, any
bit changed (signature), another audience or issuer, expiry (no leeway), ``mfa`` not
true, and a ``sub`` that is not the identity presenting it (a token is not a bearer
credential on its own: the API server must also authenticate its owner).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from secure_keys.core.hierarchy import hkdf_sha256
from secure_keys.core.memory import zero

AUDIENCE = "securekeys.io/access"
ISSUER = "secure-keys-gateway"
DEFAULT_LIFETIME = timedelta(minutes=15)
DEFAULT_PERIOD = timedelta(days=1)
MAX_TOKEN = 4096
_LABEL = b"securekeys.io/v1/access-token/"


@dataclass(frozen=True)
class TokenRefused:
    reason: str
    message: str


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    jti: str
    expires_at: datetime


class AccessTokens:
    """Issue and verify access tokens under per-period keys derived from ``root``."""

    def __init__(
        self,
        root: bytes | bytearray,
        *,
        lifetime: timedelta = DEFAULT_LIFETIME,
        period: timedelta = DEFAULT_PERIOD,
    ) -> None:
        if len(root) < 32:
            raise ValueError("the token root key must be at least 32 bytes")
        if lifetime > period:
            raise ValueError("a token may not outlive its signing key's period")
        self._root = bytearray(root)
        self.lifetime = lifetime
        self._period = int(period.total_seconds())

    def _epoch(self, now: datetime) -> int:
        return int(now.timestamp()) // self._period

    def _key(self, epoch: int) -> bytes:
        derived = hkdf_sha256(self._root, salt=b"", info=_LABEL + str(epoch).encode())
        try:
            return bytes(derived)  # PyJWT takes bytes: an immutable copy, dropped after use
        finally:
            zero(derived)

    def issue(self, subject: str, groups: Sequence[str], now: datetime) -> tuple[str, TokenClaims]:
        epoch = self._epoch(now)
        expires = now + self.lifetime
        jti = secrets.token_hex(16)
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "groups": list(groups)[:64],
            "mfa": True,
            "jti": jti,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        token = jwt.encode(claims, self._key(epoch), algorithm="HS256", headers={"kid": str(epoch)})
        return token, TokenClaims(subject, jti, expires)

    def verify(self, token: str, *, username: str, now: datetime) -> TokenClaims | TokenRefused:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            return TokenRefused("TokenInvalid", "the access token is malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return TokenRefused("TokenInvalid", "the access token is malformed")
        kid = header.get("kid")
        current = self._epoch(now)
        if header.get("alg") != "HS256" or not isinstance(kid, str) or not kid.isdigit():
            return TokenRefused("TokenInvalid", "the access token is malformed")
        if int(kid) not in (current, current - 1):
            return TokenRefused(
                "TokenKeyRetired", "the access token's signing key is retired: log in again"
            )
        try:
            claims = jwt.decode(
                token,
                self._key(int(kid)),
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                # Expiry is checked below against the caller's clock (``now``), not
                # PyJWT's, so that one clock decides (and tests can move it).
                options={
                    "require": ["exp", "iat", "sub", "jti", "aud", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return TokenRefused(
                "TokenInvalid", "the access token does not verify (altered, or not ours)"
            )
        if not isinstance(claims["exp"], int) or claims["exp"] <= int(now.timestamp()):
            return TokenRefused("TokenExpired", "the access token has expired: log in again")
        if claims.get("mfa") is not True:
            return TokenRefused("TokenInvalid", "the access token does not record MFA")
        if claims["sub"] != username:
            return TokenRefused(
                "TokenNotYours",
                "the access token was issued to another identity: log in as yourself",
            )
        return TokenClaims(
            claims["sub"],
            str(claims["jti"]),
            datetime.fromtimestamp(int(claims["exp"]), now.tzinfo),
        )
