"""The version lifecycle of one ApiKey, as a pure planner: state in, next step out.

States follow AWS Secrets Manager's staging labels::

    Pending  -> Active  -> Archived -> Destroyed
    (sealed,    (served     (served as    (blob deleted:
     recorded)   as current) .previous for  crypto-shredded)
                             gracePeriod)

The controller's durable state is split over two objects: the ApiKey's ``status``
(which versions exist and in which state) and the blob Secret (one sealed envelope per
version). Neither write is atomic with the other, so every step is ordered to leave a
state the next ``plan`` call can finish from, whatever point a crash interrupts:

* A new version's blob is written **before** its status record, together with the
  intent of that write (``blobs.INTENT_ANNOTATION``). A blob with no record was never
  served (serving needs an Active record); ``plan`` adopts it (``Adopt``) rather than
  deleting it, so a crash there finishes the rotation it interrupted, and a status that
  was cleared or lost is rebuilt from the blobs instead of losing the key.
* No blob is ever deleted unless its record says Destroyed, and version numbers never
  repeat: the next number is above every recorded version and every blob.
* A live record whose blob is gone (the Secret deleted or edited by hand) is marked
  Destroyed with ``lostAt`` (``MarkLost``) and reported; it is never served again.
* Promotion is **one** status write that makes the Pending version Active and the old
  Active one Archived, so there is never more than one Active version.
* A version is marked Destroyed in status **before** its blob is deleted, and a blob of
  a Destroyed version is deleted on the next pass.
* A grace period is counted only from an ``archivedAt`` the controller tagged
  (``core.integrity``). An Archived record whose ``archivedAt`` it cannot trust is never
  destroyed; it is re-stamped to the present first (``Restamp``), so a status edit cannot
  cut short the time clients have to move off a superseded key.

``plan`` returns one step; the service executes it, re-reads, and plans again until
``Idle``. Every function here is pure: time comes in as an argument.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from secure_keys.controller.schedule import RotationPolicy

# Re-exported: the controller names them rotation.format_stamp and rotation.parse_stamp.
from secure_keys.core.stamps import format_stamp as format_stamp
from secure_keys.core.stamps import parse_stamp as parse_stamp

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


# -- steps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteBlobs:
    """Remove the blobs of versions whose records say Destroyed."""

    versions: tuple[int, ...]


@dataclass(frozen=True)
class Adopt:
    """Record blobs that status does not know (a crash after the blob write, or a status
    cleared or lost): ``pending`` (newer than every record) as Pending, the rest as
    Archived. A blob that does not open for this ApiKey is kept and reported, never deleted.
    """

    versions: tuple[int, ...]
    pending: int | None


@dataclass(frozen=True)
class MarkLost:
    """Live records whose blobs are gone: mark them Destroyed and lost, and say so."""

    versions: tuple[int, ...]


@dataclass(frozen=True)
class NewVersion:
    """Seal a new version: write its blob, then record it as Pending."""

    version: int
    reason: Literal["initial", "scheduled", "requested", "source-changed"]
    from_source: bool
    """Take the plaintext from spec.source (else re-seal the Active version's under a new
    DEK: a rotation cannot invent a new value for a key that came from outside)."""


@dataclass(frozen=True)
class Promote:
    """Make the Pending version Active and the old Active one Archived (one write)."""

    version: int
    previous: int | None


@dataclass(frozen=True)
class Destroy:
    """Mark versions Destroyed in status; their blobs go on the next pass."""

    versions: tuple[int, ...]


@dataclass(frozen=True)
class Restamp:
    """Archived versions whose ``archivedAt`` carries no valid tag of the controller's
    (a status edit, or a record written before archive tags): set it to now, tagged, and
    say so. Their grace period restarts from now; it is never cut short."""

    versions: tuple[int, ...]


@dataclass(frozen=True)
class Rewrap:
    """Move these versions' DEKs to the KMS key's current version (KEK rotation).

    The sealed ciphertext is untouched; only the wrapped DEK in each blob changes. The
    blobs are written first, then the records' ``kmsKeyVersion``: a crash in between is
    healed by rewrapping again, which is a no-op for a DEK already on the current version.
    """

    versions: tuple[int, ...]
    key_version: str


@dataclass(frozen=True)
class Idle:
    """Nothing to do until ``wake_at`` (None: until the spec or annotations change)."""

    wake_at: datetime.datetime | None


Step = DeleteBlobs | Adopt | MarkLost | Restamp | NewVersion | Promote | Destroy | Rewrap | Idle


@dataclass(frozen=True)
class KeyState:
    """Everything ``plan`` needs to know about one ApiKey, read from the API."""

    records: tuple[VersionRecord, ...]
    blobs: frozenset[int]
    policy: RotationPolicy
    source_digest: str
    """Digest of spec.source now; compared with ``recorded_source_digest``."""
    recorded_source_digest: str | None
    rotation_request: str | None
    """Value of the rotate-now annotation, if set."""
    honoured_request: str | None
    next_rotation: datetime.datetime | None
    source_mints: bool = False
    """The source makes a new value on demand (``generate``); others are re-sealed."""
    current_kms: tuple[str, str, str] | None = None
    """(provider, key id, key version) the ApiKey's KMS key wraps with now, if known."""

    def by_state(self, state: State) -> list[VersionRecord]:
        return [r for r in self.records if r.state == state]

    @property
    def active(self) -> VersionRecord | None:
        active = self.by_state("Active")
        return active[0] if active else None


def live_versions(records: Iterable[VersionRecord]) -> set[int]:
    return {r.version for r in records if r.state != "Destroyed"}


def plan(state: KeyState, now: datetime.datetime) -> Step:
    """The next step for this ApiKey. Call again after executing it."""
    recorded = {r.version for r in state.records}
    newest_recorded = max(recorded, default=0)
    unrecorded = sorted(state.blobs - recorded)
    if unrecorded:
        above = [v for v in unrecorded if v > newest_recorded]
        return Adopt(tuple(unrecorded), max(above) if above else None)
    destroyed = {r.version for r in state.records if r.state == "Destroyed"}
    leftovers = sorted(state.blobs & destroyed)
    if leftovers:
        return DeleteBlobs(tuple(leftovers))
    lost = sorted(
        r.version
        for r in state.records
        if r.state in ("Active", "Archived") and r.version not in state.blobs
    )
    if lost:
        return MarkLost(tuple(lost))
    untrusted = untrusted_archives(state.records)
    if untrusted:
        return Restamp(untrusted)

    pending = state.by_state("Pending")
    actives = state.by_state("Active")
    if len(actives) > 1:
        # Never written by us (promotion is one write); serve the newest, archive the rest.
        newest_active = max(r.version for r in actives)
        return Promote(newest_active, None)
    active = state.active
    if pending:
        newest = max(pending, key=lambda r: r.version)
        if newest.version in state.blobs:
            return Promote(newest.version, active.version if active else None)
        # A record whose blob vanished (deleted by hand): never serve it.
        return Destroy(tuple(r.version for r in pending))

    next_version = max(recorded | state.blobs, default=0) + 1
    if active is None:
        return NewVersion(next_version, "initial", from_source=True)
    if state.recorded_source_digest != state.source_digest:
        return NewVersion(next_version, "source-changed", from_source=True)
    deferred = None
    if state.rotation_request and state.rotation_request != state.honoured_request:
        earliest = request_allowed_at(active)
        if earliest is None or now >= earliest:
            return NewVersion(next_version, "requested", from_source=state.source_mints)
        deferred = earliest  # rotate-now is throttled per key: at most one per spacing
    if state.next_rotation is not None and now >= state.next_rotation:
        return NewVersion(next_version, "scheduled", from_source=state.source_mints)

    doomed = expired(state.records, state.policy, now)
    if doomed:
        return Destroy(doomed)
    stale = stale_wraps(state)
    if stale and state.current_kms is not None:
        return Rewrap(stale, state.current_kms[2])
    wake = wake_time(state, now)
    if deferred is not None:
        wake = deferred if wake is None else min(wake, deferred)
    return Idle(wake)


REQUEST_SPACING = datetime.timedelta(seconds=10)
"""The shortest time between a version's activation and an on-demand rotation of it: a
loop writing the rotate-now annotation makes at most one version per 10 s, not one KMS
call, blob and Event per write."""


def request_allowed_at(active: VersionRecord) -> datetime.datetime | None:
    """When an on-demand rotation of ``active`` may run (None: at once)."""
    if active.activated_at is None:
        return None
    return active.activated_at + REQUEST_SPACING


def stale_wraps(state: KeyState) -> tuple[int, ...]:
    """Live versions wrapped by an older version of the ApiKey's current KMS key."""
    if state.current_kms is None:
        return ()
    provider, key_id, key_version = state.current_kms
    return tuple(
        sorted(
            r.version
            for r in state.records
            if r.state in ("Active", "Archived")
            and r.version in state.blobs
            and (r.kms_provider, r.kms_key_id) == (provider, key_id)
            and r.kms_key_version != key_version
        )
    )


def rewrapped(
    records: Sequence[VersionRecord], key_versions: dict[int, str]
) -> tuple[VersionRecord, ...]:
    """Records with the KMS key version their blobs are now wrapped under."""
    return tuple(
        replace(r, kms_key_version=key_versions[r.version]) if r.version in key_versions else r
        for r in records
    )


def untrusted_archives(records: Sequence[VersionRecord]) -> tuple[int, ...]:
    """Archived versions whose ``archivedAt`` did not carry the controller's tag."""
    return tuple(
        sorted(
            r.version for r in records if r.state == "Archived" and r.archive_trust == "untrusted"
        )
    )


def _grace_starts(record: VersionRecord) -> datetime.datetime | None:
    """When an Archived record's grace period began, if the controller can vouch for it."""
    if record.state != "Archived" or record.archive_trust != "trusted":
        return None
    return record.archived_at


def expired(
    records: Sequence[VersionRecord], policy: RotationPolicy, now: datetime.datetime
) -> tuple[int, ...]:
    """Archived versions beyond the newest ``retain`` live ones, once their grace is over.

    Only a trusted ``archivedAt`` counts: an untrusted or unchecked one never destroys.
    """
    live = sorted(
        (r for r in records if r.state in ("Active", "Archived")),
        key=lambda r: r.version,
        reverse=True,
    )
    doomed = []
    for record in live[policy.retain :]:
        started = _grace_starts(record)
        if started is None:
            continue
        if now >= started + policy.grace_period:
            doomed.append(record.version)
    return tuple(sorted(doomed))


def wake_time(state: KeyState, now: datetime.datetime) -> datetime.datetime | None:
    """When the next timed step (rotation or destruction) falls due."""
    candidates = []
    if state.next_rotation is not None:
        candidates.append(state.next_rotation)
    live = sorted(
        (r for r in state.records if r.state in ("Active", "Archived")),
        key=lambda r: r.version,
        reverse=True,
    )
    for record in live[state.policy.retain :]:
        started = _grace_starts(record)
        if started is not None:
            candidates.append(started + state.policy.grace_period)
    future = [c for c in candidates if c > now]
    return min(future) if future else None


# -- status transitions (pure) -----------------------------------------------------------


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


def grace_versions(
    records: Sequence[VersionRecord], policy: RotationPolicy, now: datetime.datetime
) -> tuple[VersionRecord, ...]:
    """Archived versions still within their grace period: served as ``.previous``.

    A version whose ``archivedAt`` is not trusted (yet) is counted as within it: it is
    about to be re-stamped to the present, never destroyed as it stands.
    """
    out = []
    for record in records:
        if record.state != "Archived":
            continue
        started = _grace_starts(record)
        if started is None:
            if record.archive_trust != "trusted":
                out.append(record)
        elif now < started + policy.grace_period:
            out.append(record)
    return tuple(out)
