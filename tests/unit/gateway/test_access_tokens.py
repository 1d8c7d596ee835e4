"""``gateway.access.tokens``: a token is accepted only by its own subject, unaltered,
before its expiry and while its signing key is not retired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from secure_keys.gateway.access.tokens import AccessTokens, TokenClaims, TokenRefused

NOW = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
ROOT = bytes(range(32))


def _issue(tokens: AccessTokens, at: datetime = NOW) -> str:
    token, _ = tokens.issue("alice", ("devs",), at)
    return token


def test_a_fresh_token_verifies_for_its_subject_with_the_claims_the_issue_names() -> None:
    tokens = AccessTokens(ROOT)
    token = _issue(tokens)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "securekeys.io/access"
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["devs"]
    assert claims["mfa"] is True
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["jti"]
    checked = tokens.verify(token, username="alice", now=NOW + timedelta(minutes=14))
    assert isinstance(checked, TokenClaims)
    assert checked.subject == "alice"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another identity", "TokenNotYours"),
        ("expired", "TokenExpired"),
        ("retired key", "TokenKeyRetired"),
        ("bit changed", "TokenInvalid"),
        ("other root", "TokenInvalid"),
        ("garbage", "TokenInvalid"),
        ("alg none", "TokenInvalid"),
    ],
)
def test_a_token_is_refused(case: str, reason: str) -> None:
    tokens = AccessTokens(ROOT)
    token = _issue(tokens)
    username, now = "alice", NOW
    if case == "another identity":
        username = "mallory"
    elif case == "expired":
        now = NOW + timedelta(minutes=15)
    elif case == "retired key":
        token = _issue(tokens, NOW - timedelta(days=2))
    elif case == "bit changed":
        head, body, signature = token.split(".")
        flipped = "A" if signature[5] != "A" else "B"
        token = ".".join((head, body, signature[:5] + flipped + signature[6:]))
    elif case == "other root":
        token = _issue(AccessTokens(bytes(32)))
    elif case == "garbage":
        token = "not.a.token"
    elif case == "alg none":
        claims = jwt.decode(token, options={"verify_signature": False})
        token = jwt.encode(claims, "", algorithm="none", headers={"kid": "20094"})
    result = tokens.verify(token, username=username, now=now)
    assert isinstance(result, TokenRefused)
    assert result.reason == reason


def test_yesterdays_key_still_verifies_until_its_successor_is_retired() -> None:
    tokens = AccessTokens(ROOT, period=timedelta(hours=1))
    token = _issue(tokens, NOW - timedelta(minutes=50))
    assert isinstance(
        tokens.verify(token, username="alice", now=NOW + timedelta(minutes=1)), TokenRefused
    )
    late = _issue(tokens, NOW - timedelta(minutes=5))
    assert isinstance(
        tokens.verify(late, username="alice", now=NOW + timedelta(minutes=5)), TokenClaims
    )


def test_a_token_may_not_outlive_its_key() -> None:
    with pytest.raises(ValueError, match="outlive"):
        AccessTokens(ROOT, lifetime=timedelta(days=2))
