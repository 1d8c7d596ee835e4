"""The version records of one ApiKey: what ``status.versions`` holds, and how it changes.

``VersionRecord`` is one version as the ApiKey's status records it (no secret material);
``to_status``/``from_status`` are its one reading and writing of the status field. The
functions below are the record transitions the step executor (``steps``) applies once a
step is planned: record a Pending version, promote, archive, re-stamp, destroy, mark lost,
adopt, rewrap, prune. Each is pure (records and time in, new records out) and keeps the
invariants ``rotation``'s docstring lists: at most one Active version, Destroyed before a
blob is deleted, version numbers never reused.

The planner (``rotation``) reads records; only this module makes new ones from old.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from secure_keys.core.stamps import format_stamp, parse_stamp

State = Literal["Pending", "Active", "Archived", "Destroyed"]
STATES: tuple[State, ...] = ("Pending", "Active", "Archived", "Destroyed")
ArchiveTrust = Literal["trusted", "untrusted", "unchecked"]
"""Whether an Archived record's ``archivedAt`` may start its grace period (see
``VersionRecord.archive_trust``)."""


@dataclass(frozen=True)
class VersionRecord:
    """One version as the ApiKey status records it. Holds no secret material."""

    version: int
    state: State
    created_at: datetime.datetime
    fingerprint: str
    kms_provider: str
    kms_key_id: str
    kms_key_version: str
    activated_at: datetime.datetime | None = None
    archived_at: datetime.datetime | None = None
    destroyed_at: datetime.datetime | None = None
    lost_at: datetime.datetime | None = None
    """Set when the record's blob was found missing (removed outside the controller)."""
    destroy_tag: str | None = None
    """The controller's integrity tag on a Destroyed record (``core.integrity``): only a
    tagged record lets its blob be deleted."""
    archive_tag: str | None = None
    """The controller's integrity tag on ``archived_at`` (``core.integrity``): only a
    tagged time starts a grace period."""
    archive_trust: ArchiveTrust = "trusted"
    """Not stored: what ``projection.key_state`` found of ``archive_tag`` on an Archived
    record. ``trusted``: the tag is valid (or the controller archived the version in this
    pass and tags it when it writes). ``untrusted``: no valid tag, so the planner
    re-stamps it (``Restamp``) and never destroys it as it stands. ``unchecked``: the
    controller's keys are not open, so the tag cannot be checked; it is neither destroyed
    nor re-stamped until they are."""

    def to_status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "version": self.version,
            "state": self.state,
            "createdAt": format_stamp(self.created_at),
            "fingerprint": self.fingerprint,
            "kmsProvider": self.kms_provider,
            "kmsKeyId": self.kms_key_id,
            "kmsKeyVersion": self.kms_key_version,
        }
        for key, value in (
            ("activatedAt", self.activated_at),
            ("archivedAt", self.archived_at),
            ("destroyedAt", self.destroyed_at),
            ("lostAt", self.lost_at),
        ):
            if value is not None:
                out[key] = format_stamp(value)
        if self.destroy_tag is not None:
            out["destroyTag"] = self.destroy_tag
        if self.archive_tag is not None:
            out["archiveTag"] = self.archive_tag
        return out

    @classmethod
    def from_status(cls, item: dict[str, object]) -> VersionRecord:
        state = str(item["state"])
        if state not in STATES:
            raise ValueError(f"unknown version state {state!r}")
        return cls(
            version=int(str(item["version"])),
            state=state,
            created_at=parse_stamp(str(item["createdAt"])),
            fingerprint=str(item.get("fingerprint", "")),
            kms_provider=str(item.get("kmsProvider", "")),
            kms_key_id=str(item.get("kmsKeyId", "")),
            kms_key_version=str(item.get("kmsKeyVersion", "")),
            activated_at=_opt_stamp(item.get("activatedAt")),
            archived_at=_opt_stamp(item.get("archivedAt")),
            destroyed_at=_opt_stamp(item.get("destroyedAt")),
            lost_at=_opt_stamp(item.get("lostAt")),
            destroy_tag=str(item["destroyTag"]) if item.get("destroyTag") else None,
            archive_tag=str(item["archiveTag"]) if item.get("archiveTag") else None,
        )


def _opt_stamp(value: object) -> datetime.datetime | None:
    return parse_stamp(str(value)) if value else None


def live_versions(records: Iterable[VersionRecord]) -> set[int]:
    return {r.version for r in records if r.state != "Destroyed"}


def grace_starts(record: VersionRecord) -> datetime.datetime | None:
    """When an Archived record's grace period began, if the controller can vouch for it."""
    if record.state != "Archived" or record.archive_trust != "trusted":
        return None
    return record.archived_at


# -- transitions (pure) ------------------------------------------------------------------


def record_pending(
    records: Sequence[VersionRecord], new: VersionRecord
) -> tuple[VersionRecord, ...]:
    if new.state != "Pending":
        raise ValueError("a new version starts Pending")
    if any(r.version == new.version for r in records):
        raise ValueError(f"version {new.version} is already recorded")
    return (*records, new)


def promote(
    records: Sequence[VersionRecord], version: int, now: datetime.datetime
) -> tuple[VersionRecord, ...]:
    out = []
    for record in records:
        if record.version == version:
            out.append(replace(record, state="Active", activated_at=now))
        elif record.state == "Active":
            out.append(_archived(record, now))
        elif record.state == "Pending":
            # An older Pending version lost the race to this one; it was never served.
            out.append(replace(record, state="Destroyed", destroyed_at=now))
        else:
            out.append(record)
    return tuple(out)


def _archived(record: VersionRecord, now: datetime.datetime) -> VersionRecord:
    """``record`` archived by the controller at ``now``: trusted, tagged when written."""
    return replace(
        record, state="Archived", archived_at=now, archive_tag=None, archive_trust="trusted"
    )


def restamp(
    records: Sequence[VersionRecord], versions: Iterable[int], now: datetime.datetime
) -> tuple[VersionRecord, ...]:
    """Records with these Archived versions' grace period restarted at ``now``."""
    chosen = set(versions)
    return tuple(
        _archived(r, now) if r.version in chosen and r.state == "Archived" else r for r in records
    )


def destroy(
    records: Sequence[VersionRecord], versions: Iterable[int], now: datetime.datetime
) -> tuple[VersionRecord, ...]:
    # The tag is dropped: the controller tags the new decision before writing it
    # (projection.tag_destroyed). A destroyTag forged onto a live record must not survive.
    doomed = set(versions)
    return tuple(
        replace(r, state="Destroyed", destroyed_at=now, destroy_tag=None)
        if r.version in doomed
        else r
        for r in records
    )


def mark_lost(
    records: Sequence[VersionRecord], versions: Iterable[int], now: datetime.datetime
) -> tuple[VersionRecord, ...]:
    lost = set(versions)
    return tuple(
        replace(r, state="Destroyed", destroyed_at=now, lost_at=now, destroy_tag=None)
        if r.version in lost
        else r
        for r in records
    )


def adopt(
    records: Sequence[VersionRecord], adopted: Iterable[VersionRecord]
) -> tuple[VersionRecord, ...]:
    """Records with the adopted versions added, ordered by version."""
    known = {r.version for r in records}
    added = [r for r in adopted if r.version not in known]
    return tuple(sorted((*records, *added), key=lambda r: r.version))


MAX_DESTROYED_RECORDS = 10
"""Destroyed versions stay in status for audit; beyond this many, the oldest are dropped."""


def prune_destroyed(
    records: Sequence[VersionRecord],
    blobs: frozenset[int] = frozenset(),
    keep: int = MAX_DESTROYED_RECORDS,
) -> tuple[VersionRecord, ...]:
    """Drop the oldest Destroyed records beyond ``keep``; live records always stay.

    A Destroyed record whose blob is still in the Secret is never dropped (it is what
    tells ``plan`` to delete that blob rather than adopt it), and the newest record is
    never dropped, so version numbers keep rising from it.
    """
    newest = max((r.version for r in records), default=0)
    destroyed = sorted(
        r.version
        for r in records
        if r.state == "Destroyed" and r.version not in blobs and r.version != newest
    )
    dropped = set(destroyed[: max(0, len(destroyed) - keep)])
    return tuple(r for r in records if r.version not in dropped)


def rewrapped(
    records: Sequence[VersionRecord], key_versions: dict[int, str]
) -> tuple[VersionRecord, ...]:
    """Records with the KMS key version their blobs are now wrapped under."""
    return tuple(
        replace(r, kms_key_version=key_versions[r.version]) if r.version in key_versions else r
        for r in records
    )
