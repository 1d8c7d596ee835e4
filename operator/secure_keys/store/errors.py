"""Owns the local store's errors: each message says what is wrong and what to do.

Every message quotes at most a short prefix of anything the user or the file supplied,
and never a key value, a password or a TOTP code.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "KeyExists",
    "KeyNotFound",
    "MfaRequired",
    "StoreCorrupt",
    "StoreError",
    "StoreExists",
    "StoreNotFound",
    "StorePermissions",
    "TooManyAttempts",
]


def quoted(text: str, limit: int = 64) -> str:
    """``text`` as a repr, cut to ``limit`` characters: for names the user typed."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class StoreError(Exception):
    """Base of the store's errors. ``exit_status``: 2 the user can fix it, 1 otherwise."""

    exit_status = 2


class StoreNotFound(StoreError):
    """No store at the path: ``init`` makes one."""


class StoreExists(StoreError):
    """``init`` found a store already there."""


class StorePermissions(StoreError):
    """The store's directory or a file in it is open to other users (or not ours)."""


class StoreCorrupt(StoreError):
    """``keys.db`` or ``config.json`` is damaged, truncated or not a store of ours."""

    exit_status = 1


class AuthenticationFailed(StoreError):
    """The password (or the TOTP code) does not open the store."""

    exit_status = 1


class MfaRequired(AuthenticationFailed):
    """The store asks for a TOTP code and none was given."""


class TooManyAttempts(AuthenticationFailed):
    """Refused before the password was checked: too many wrong ones in a row, and the
    next attempt is not allowed yet. ``retry_after``: seconds until it is."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyNotFound(StoreError):
    """No live version of that key (or no previous one in its grace period)."""


class KeyExists(StoreError):
    """``add`` of a name that has a live version: ``rotate`` replaces a value."""
