"""Owns the one text form of the timestamps the controller writes.

Status fields, conditions and Events carry times as RFC 3339 in UTC to the second
(``2026-12-02T03:00:00Z``); integrity tags (``core.integrity``) cover a time in exactly
this form. The controller writes it and the gateway's broker recomputes it from a
parsed time to check a tag, so both take it from here. So is the value of a rotation
request (the rotate-requested-at annotation), which the CLI and the gateway both write.
"""

from __future__ import annotations

import datetime
import secrets

__all__ = [
    "ROLE_REQUEST_SUFFIX",
    "format_stamp",
    "is_role_request",
    "parse_stamp",
    "rotation_request",
]

ROLE_REQUEST_SUFFIX = "-role"
"""Ends the value of a rotation the gateway requests for a KeyRole's ``rotate`` grantee.
The gateway's policy admits only such values from the gateway, and the controller spaces
them by the grace period (``controller/rotation.py``): a compromised gateway cannot
rotate a key faster than its grantees could."""


def format_stamp(value: datetime.datetime) -> str:
    """The one timestamp form of status fields, conditions and Events (RFC 3339, UTC)."""
    # Not strftime("%Y"): it does not pad years below 1000, and the API server wants four
    # digits.
    v = value.astimezone(datetime.UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def parse_stamp(text: str) -> datetime.datetime:
    """An RFC 3339 time as the API server accepts it (fractions and offsets allowed)."""
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return value.astimezone(datetime.UTC)


def rotation_request(now: datetime.datetime, *, role: bool = False) -> str:
    """A rotate-requested-at value no earlier request can have had: the time and a
    random suffix (two requests in one second are two rotations); ``role``: one the
    gateway makes for a KeyRole's grantee (``ROLE_REQUEST_SUFFIX``)."""
    value = f"{format_stamp(now)}-{secrets.token_hex(3)}"
    return value + ROLE_REQUEST_SUFFIX if role else value


def is_role_request(value: str) -> bool:
    """Whether a rotate-requested-at value is one the gateway made for a KeyRole."""
    return value.endswith(ROLE_REQUEST_SUFFIX)
