"""Owns the version lifecycle of a key in the local store, as pure functions.

The states and rules are the cluster's (``docs/controller.md``)::

    Pending  -> Active  -> Archived -> Destroyed

- at most one Active version; ``rotate`` makes the new version Active and the old one
  Archived in one step (``rotate --stage`` leaves it Pending until ``promote``);
- ``get --previous`` serves the newest Archived version while its grace period lasts;
- Archived versions beyond the newest ``retain`` live ones are Destroyed once their grace
  period is over: the envelope, and with it the wrapped data key, is deleted;
- version numbers never repeat, not even after ``rm``.

Unlike the controller's planner (``controller.rotation``), there are no recovery steps
(adopting blobs, re-stamping untrusted times): the store changes a key's rows in one
SQLite transaction, so no crash can leave half a rotation behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["STATES", "State", "VersionRow", "next_version", "previous", "promote", "sweep"]

State = Literal["Pending", "Active", "Archived", "Destroyed"]
STATES: tuple[State, ...] = ("Pending", "Active", "Archived", "Destroyed")


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version's record (no secret: the envelope is stored beside it)."""

    name: str
    version: int
    state: State
    created_at: dt.datetime
    kms_provider: str
    kms_key_id: str
    kms_key_version: str
    activated_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None
    destroyed_at: dt.datetime | None = None


def next_version(rows: Sequence[VersionRow]) -> int:
    """Above every version ever recorded for the key, Destroyed ones included."""
    return max((r.version for r in rows), default=0) + 1


def active(rows: Sequence[VersionRow]) -> VersionRow | None:
    return next((r for r in rows if r.state == "Active"), None)


def previous(
    rows: Sequence[VersionRow], now: dt.datetime, grace: dt.timedelta
) -> VersionRow | None:
    """The newest Archived version still in its grace period, if any."""
    archived = [
        r
        for r in rows
        if r.state == "Archived" and r.archived_at is not None and now < r.archived_at + grace
    ]
    return max(archived, key=lambda r: r.version, default=None)


def promote(rows: Sequence[VersionRow], version: int, now: dt.datetime) -> list[VersionRow]:
    """The rows changed by making ``version`` Active: it, and the old Active one archived."""
    changed: list[VersionRow] = []
    for row in rows:
        if row.version == version:
            if row.state not in ("Pending", "Active"):
                raise ValueError(f"version {version} is {row.state}, not Pending")
            if row.state == "Pending":
                changed.append(replace(row, state="Active", activated_at=now))
        elif row.state == "Active":
            changed.append(replace(row, state="Archived", archived_at=now))
    if not any(r.version == version for r in rows):
        raise ValueError(f"no version {version}")
    return changed


def sweep(
    rows: Sequence[VersionRow], now: dt.datetime, grace: dt.timedelta, retain: int
) -> list[VersionRow]:
    """The Archived rows to destroy now: beyond the newest ``retain`` live versions (the
    Active one counts) and past their grace period."""
    live = sorted(
        (r for r in rows if r.state in ("Active", "Archived")),
        key=lambda r: r.version,
        reverse=True,
    )
    return [
        replace(r, state="Destroyed", destroyed_at=now)
        for r in live[retain:]
        if r.state == "Archived" and r.archived_at is not None and now >= r.archived_at + grace
    ]
