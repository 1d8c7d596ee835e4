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
  Active one Archived, so there is never more than one Active version. A first version
  (no Active one) is recorded Active straight away, in the write that records it.
* A version is marked Destroyed in status **before** its blob is deleted, and a blob of
  a Destroyed version is deleted on the next pass.
* A grace period is counted only from an ``archivedAt`` the controller tagged
  (``core.integrity``). An Archived record whose ``archivedAt`` it cannot trust is never
  destroyed; it is re-stamped to the present first (``Restamp``), so a status edit cannot
  cut short the time clients have to move off a superseded key.

``plan`` returns one step; the reconciler has ``steps`` execute it (the new records come
from ``records``' transitions), re-reads, and plans again until ``Idle``. Every function
here is pure: time comes in as an argument, and nothing here writes a record.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from secure_keys.controller.records import State, VersionRecord, grace_starts
from secure_keys.controller.schedule import RotationPolicy
from secure_keys.core.stamps import is_role_request

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
    """Seal a new version: write its blob, then record it as Pending (``Promote`` makes it
    Active). A first version is recorded Active in that same write (``activates``)."""

    version: int
    reason: Literal["initial", "scheduled", "requested", "source-changed"]
    from_source: bool
    """Take the plaintext from spec.source (else re-seal the Active version's under a new
    DEK: a rotation cannot invent a new value for a key that came from outside)."""

    @property
    def activates(self) -> bool:
        """Record the version Active at once. Only when no version is Active: the Pending
        stage keeps a served version in place until its successor's blob is checked
        again; with none served there is nothing for it to keep, and skipping it saves a
        new key a status write (issue 23: the API server's CPU bounds sealing)."""
        return self.reason == "initial"


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
        role = is_role_request(state.rotation_request)
        earliest = request_allowed_at(
            active, not_before=previous_grace_ends(state, active) if role else None
        )
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


def request_allowed_at(
    active: VersionRecord, *, not_before: datetime.datetime | None = None
) -> datetime.datetime | None:
    """When an on-demand rotation of ``active`` may run (None: at once); ``not_before``
    also (``previous_grace_ends``, for the gateway's requests)."""
    if active.activated_at is None:
        return not_before
    earliest = active.activated_at + REQUEST_SPACING
    return earliest if not_before is None else max(earliest, not_before)


def previous_grace_ends(state: KeyState, active: VersionRecord) -> datetime.datetime | None:
    """When the version ``active`` replaced leaves its grace period (None: there is none
    in it). A request the gateway makes for a KeyRole's grantee (``core.stamps``) waits
    for it, as the gateway itself refuses sooner ones (``RotationTooSoon``): a
    compromised gateway, whose ``patch`` on ApiKeys the chart's policy narrows to such
    requests, rotates a key no faster than its grantees could, and every pod's
    ``.previous`` keeps its whole grace. An archive time the controller cannot vouch for
    counts from the active version's activation."""
    archived = [r for r in state.records if r.state == "Archived" and r.version < active.version]
    if not archived:
        return None
    newest = max(archived, key=lambda r: r.version)
    started = grace_starts(newest) or active.activated_at
    return None if started is None else started + state.policy.grace_period


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


def untrusted_archives(records: Sequence[VersionRecord]) -> tuple[int, ...]:
    """Archived versions whose ``archivedAt`` did not carry the controller's tag."""
    return tuple(
        sorted(
            r.version for r in records if r.state == "Archived" and r.archive_trust == "untrusted"
        )
    )


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
        started = grace_starts(record)
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
        started = grace_starts(record)
        if started is not None:
            candidates.append(started + state.policy.grace_period)
    future = [c for c in candidates if c > now]
    return min(future) if future else None


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
        started = grace_starts(record)
        if started is None:
            if record.archive_trust != "trusted":
                out.append(record)
        elif now < started + policy.grace_period:
            out.append(record)
    return tuple(out)
