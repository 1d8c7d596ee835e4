"""The version lifecycle planner (secure_keys.controller.rotation): every branch of ``plan``,
the pure status transitions, and the status round trip.

The crash-safety simulation of whole reconcile runs lives in ``test_rotation_crash``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_keys.controller import records as transitions
from secure_keys.controller import rotation
from secure_keys.controller.records import (
    STATES,
    State,
    VersionRecord,
    destroy,
    live_versions,
    promote,
    record_pending,
)
from secure_keys.controller.rotation import (
    Adopt,
    DeleteBlobs,
    Destroy,
    Idle,
    KeyState,
    MarkLost,
    NewVersion,
    Promote,
    Rewrap,
    Step,
    expired,
    grace_versions,
    plan,
    wake_time,
)
from secure_keys.controller.schedule import RotationPolicy
from secure_keys.core.stamps import format_stamp, parse_stamp, rotation_request

UTC = datetime.UTC
T0 = datetime.datetime(2030, 1, 1, tzinfo=UTC)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)

HOURLY = RotationPolicy.from_spec({"interval": "1h", "gracePeriod": "10m", "retain": 2})
ON_DEMAND = RotationPolicy.from_spec({"gracePeriod": "10m", "retain": 2})
KEEP_ONE = RotationPolicy.from_spec({"gracePeriod": "10m", "retain": 1})


def rec(
    version: int,
    state: State,
    *,
    created: datetime.datetime = T0,
    activated: datetime.datetime | None = None,
    archived: datetime.datetime | None = None,
    destroyed: datetime.datetime | None = None,
) -> VersionRecord:
    """A record with the timestamps its state implies, unless given."""
    if state in ("Active", "Archived", "Destroyed") and activated is None:
        activated = created
    if state == "Archived" and archived is None:
        archived = created
    if state == "Destroyed" and destroyed is None:
        destroyed = created
    return VersionRecord(
        version=version,
        state=state,
        created_at=created,
        fingerprint=f"fp-{version}",
        kms_provider="local",
        kms_key_id="default",
        kms_key_version="1",
        activated_at=activated,
        archived_at=archived,
        destroyed_at=destroyed,
    )


def key_state(
    *records: VersionRecord,
    blobs: set[int] | None = None,
    policy: RotationPolicy = ON_DEMAND,
    digest: str = "sha256:one",
    recorded: str | None = "sha256:one",
    request: str | None = None,
    honoured: str | None = None,
    next_rotation: datetime.datetime | None = None,
    mints: bool = False,
    kms: tuple[str, str, str] | None = None,
) -> KeyState:
    """A consistent KeyState: by default every live record has its blob and nothing is due."""
    return KeyState(
        records=records,
        blobs=frozenset(live_versions(records) if blobs is None else blobs),
        policy=policy,
        source_digest=digest,
        recorded_source_digest=recorded,
        rotation_request=request,
        honoured_request=honoured,
        next_rotation=next_rotation,
        source_mints=mints,
        current_kms=kms,
    )


@dataclass(frozen=True)
class Case:
    id: str
    state: KeyState
    expected: Step
    now: datetime.datetime = T0 + 5 * MINUTE


ACTIVE_1 = rec(1, "Active")

PLAN_CASES = [
    # -- stray blobs: deleted before anything else
    # -- blobs status does not record are adopted, never deleted (hardening item 4)
    Case("unrecorded-blob-adopted", key_state(ACTIVE_1, blobs={1, 2}), Adopt((2,), 2)),
    Case(
        "blob-of-destroyed-version",
        key_state(rec(1, "Destroyed"), rec(2, "Active"), blobs={1, 2}),
        DeleteBlobs((1,)),
    ),
    Case(
        "adoption-before-deleting-destroyed-blobs",
        key_state(rec(1, "Destroyed"), rec(3, "Destroyed"), rec(4, "Active"), blobs={5, 1, 4, 3}),
        Adopt((5,), 5),
    ),
    Case(
        "destroyed-blobs-deleted-together",
        key_state(rec(1, "Destroyed"), rec(3, "Destroyed"), rec(4, "Active"), blobs={1, 4, 3}),
        DeleteBlobs((1, 3)),
    ),
    Case(
        "unrecorded-blobs-below-and-above-adopted",
        key_state(rec(1, "Destroyed"), rec(2, "Active"), blobs={7, 1, 2, 4}),
        Adopt((4, 7), 7),
    ),
    Case("cleared-status-adopts-blobs", key_state(blobs={3, 4}), Adopt((3, 4), 4)),
    # -- KEK rotation: live versions under an older key version are rewrapped
    Case(
        "rewrap-live-versions-on-an-older-kek",
        key_state(
            rec(1, "Destroyed"),
            rec(2, "Archived"),
            rec(3, "Active"),
            blobs={2, 3},
            kms=("local", "default", "2"),
        ),
        Rewrap((2, 3), "2"),
    ),
    Case(
        "no-rewrap-when-current",
        key_state(rec(1, "Active"), kms=("local", "default", "1")),
        Idle(None),
    ),
    Case(
        "no-rewrap-of-another-key",
        key_state(rec(1, "Active"), kms=("local", "other", "7")),
        Idle(None),
    ),
    Case(
        "no-rewrap-when-the-kms-is-unknown",
        key_state(rec(1, "Active"), kms=None),
        Idle(None),
    ),
    Case(
        "two-actives-resolved-to-the-newest",
        key_state(rec(1, "Active"), rec(2, "Active"), blobs={1, 2}),
        Promote(2, None),
    ),
    Case(
        "adoption-before-promotion",
        key_state(ACTIVE_1, rec(2, "Pending"), blobs={1, 2, 3}),
        Adopt((3,), 3),
    ),
    Case("adoption-before-first-version", key_state(blobs={1}), Adopt((1,), 1)),
    # -- a Pending version: promoted if its blob exists, else destroyed
    Case("pending-promoted", key_state(ACTIVE_1, rec(2, "Pending")), Promote(2, 1)),
    Case("first-pending-promoted", key_state(rec(1, "Pending")), Promote(1, None)),
    Case(
        "newest-pending-wins",
        key_state(ACTIVE_1, rec(2, "Pending"), rec(3, "Pending")),
        Promote(3, 1),
    ),
    Case(
        "pending-without-blob-destroyed",
        key_state(ACTIVE_1, rec(2, "Pending"), blobs={1}),
        Destroy((2,)),
    ),
    Case(
        "all-pending-destroyed-when-newest-blob-missing",
        key_state(ACTIVE_1, rec(2, "Pending"), rec(3, "Pending"), blobs={1, 2}),
        Destroy((2, 3)),
    ),
    Case(
        "pending-before-source-change",
        key_state(ACTIVE_1, rec(2, "Pending"), digest="sha256:two"),
        Promote(2, 1),
    ),
    Case(
        "pending-before-request",
        key_state(ACTIVE_1, rec(2, "Pending"), request="r1"),
        Promote(2, 1),
    ),
    # -- no Active version, or its blob gone: a new version from the source
    Case("empty", key_state(recorded=None), NewVersion(1, "initial", from_source=True)),
    Case(
        "after-destroyed-versions-numbers-continue",
        key_state(rec(1, "Destroyed"), rec(2, "Destroyed"), rec(3, "Archived")),
        NewVersion(4, "initial", from_source=True),
    ),
    Case(
        "active-blob-missing-marked-lost",
        key_state(rec(1, "Archived"), rec(2, "Active"), blobs={1}, mints=False),
        MarkLost((2,)),
    ),
    Case(
        "lost-before-source-change",
        key_state(ACTIVE_1, blobs=set(), digest="sha256:two"),
        MarkLost((1,)),
    ),
    Case(
        "archived-blob-missing-marked-lost",
        key_state(rec(1, "Archived"), rec(2, "Active"), blobs={2}),
        MarkLost((1,)),
    ),
    Case(
        "after-a-loss-the-next-version-is-new",
        key_state(rec(1, "Archived"), rec(2, "Destroyed"), blobs={1}),
        NewVersion(3, "initial", from_source=True),
    ),
    # -- the source changed: always from the source, whatever the source kind
    Case(
        "source-changed",
        key_state(ACTIVE_1, digest="sha256:two"),
        NewVersion(2, "source-changed", from_source=True),
    ),
    Case(
        "source-changed-minting",
        key_state(ACTIVE_1, digest="sha256:two", mints=True),
        NewVersion(2, "source-changed", from_source=True),
    ),
    Case(
        "source-digest-never-recorded",
        key_state(ACTIVE_1, recorded=None),
        NewVersion(2, "source-changed", from_source=True),
    ),
    Case(
        "source-change-before-request-and-schedule",
        key_state(ACTIVE_1, digest="sha256:two", request="r1", next_rotation=T0, policy=HOURLY),
        NewVersion(2, "source-changed", from_source=True),
    ),
    # -- a rotation request: honoured once per value
    Case(
        "request-new",
        key_state(ACTIVE_1, request="r1"),
        NewVersion(2, "requested", from_source=False),
    ),
    Case(
        "request-new-minting",
        key_state(ACTIVE_1, request="r1", mints=True),
        NewVersion(2, "requested", from_source=True),
    ),
    Case(
        "request-changed-value",
        key_state(ACTIVE_1, request="r2", honoured="r1"),
        NewVersion(2, "requested", from_source=False),
    ),
    Case("request-already-honoured", key_state(ACTIVE_1, request="r1", honoured="r1"), Idle(None)),
    Case("request-empty-value", key_state(ACTIVE_1, request=""), Idle(None)),
    Case(
        "request-before-schedule",
        key_state(ACTIVE_1, request="r1", next_rotation=T0, policy=HOURLY, mints=True),
        NewVersion(2, "requested", from_source=True),
    ),
    # -- scheduled rotation
    Case(
        "scheduled-due-exactly",
        key_state(ACTIVE_1, next_rotation=T0 + 5 * MINUTE, policy=HOURLY),
        NewVersion(2, "scheduled", from_source=False),
    ),
    Case(
        "scheduled-overdue-minting",
        key_state(ACTIVE_1, next_rotation=T0, policy=HOURLY, mints=True),
        NewVersion(2, "scheduled", from_source=True),
    ),
    Case(
        "scheduled-not-due",
        key_state(ACTIVE_1, next_rotation=T0 + HOUR, policy=HOURLY),
        Idle(T0 + HOUR),
    ),
    Case(
        "scheduled-one-second-early",
        key_state(ACTIVE_1, next_rotation=T0 + 5 * MINUTE + datetime.timedelta(seconds=1)),
        Idle(T0 + 5 * MINUTE + datetime.timedelta(seconds=1)),
    ),
    # -- destruction of archived versions beyond `retain`, once their grace is over
    Case(
        "expired-destroyed",
        key_state(
            rec(1, "Archived", archived=T0 - HOUR),
            rec(2, "Archived", archived=T0 - MINUTE),
            rec(3, "Active"),
        ),
        Destroy((1,)),
    ),
    Case(
        "expired-at-the-grace-boundary",
        key_state(rec(1, "Archived", archived=T0 - 5 * MINUTE), rec(2, "Active"), policy=KEEP_ONE),
        Destroy((1,)),
        now=T0 + 5 * MINUTE,
    ),
    Case(
        "one-second-before-the-grace-boundary",
        key_state(rec(1, "Archived", archived=T0 - 5 * MINUTE), rec(2, "Active"), policy=KEEP_ONE),
        Idle(T0 + 5 * MINUTE),
        now=T0 + 5 * MINUTE - datetime.timedelta(seconds=1),
    ),
    Case(
        "expired-several-sorted",
        key_state(
            rec(1, "Archived", archived=T0 - HOUR),
            rec(2, "Archived", archived=T0 - HOUR),
            rec(3, "Active"),
            policy=KEEP_ONE,
        ),
        Destroy((1, 2)),
    ),
    Case(
        "in-grace-not-destroyed",
        key_state(
            rec(1, "Archived", archived=T0),
            rec(2, "Active"),
            policy=KEEP_ONE,
        ),
        Idle(T0 + 10 * MINUTE),
    ),
    Case(
        "within-retain-kept-forever",
        key_state(rec(1, "Archived", archived=T0 - 24 * HOUR), rec(2, "Active")),
        Idle(None),
    ),
    Case(
        "destroyed-versions-do-not-count-toward-retain",
        key_state(
            rec(1, "Archived", archived=T0 - 24 * HOUR),
            rec(2, "Destroyed"),
            rec(3, "Active"),
        ),
        Idle(None),
    ),
    Case(
        "request-before-destruction",
        key_state(
            rec(1, "Archived", archived=T0 - HOUR), rec(2, "Active"), policy=KEEP_ONE, request="r"
        ),
        NewVersion(3, "requested", from_source=False),
    ),
    # -- idle: wake at the earliest timed step
    Case(
        "idle-wakes-at-rotation-before-grace-end",
        key_state(
            rec(1, "Archived", archived=T0),
            rec(2, "Active"),
            policy=KEEP_ONE,
            next_rotation=T0 + 8 * MINUTE,
        ),
        Idle(T0 + 8 * MINUTE),
    ),
    Case(
        "idle-wakes-at-grace-end-before-rotation",
        key_state(
            rec(1, "Archived", archived=T0),
            rec(2, "Active"),
            policy=KEEP_ONE,
            next_rotation=T0 + HOUR,
        ),
        Idle(T0 + 10 * MINUTE),
    ),
    Case(
        "idle-earliest-grace-end-of-several",
        key_state(
            rec(1, "Archived", archived=T0 + MINUTE),
            rec(2, "Archived", archived=T0),
            rec(3, "Active"),
            policy=KEEP_ONE,
        ),
        Idle(T0 + 10 * MINUTE),
    ),
    Case("idle-nothing-timed", key_state(ACTIVE_1), Idle(None)),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: c.id)
def test_plan(case: Case) -> None:
    assert plan(case.state, case.now) == case.expected


def test_rotate_now_requests_are_spaced_per_key() -> None:
    # A loop writing the rotate-now annotation gets one version per spacing, not one per
    # write (hostile review F9).
    active = rec(1, "Active", activated=T0)
    state = key_state(active, request="r2")
    soon = T0 + datetime.timedelta(seconds=3)
    assert plan(state, soon) == Idle(T0 + rotation.REQUEST_SPACING)
    due = plan(state, T0 + rotation.REQUEST_SPACING)
    assert due == NewVersion(2, "requested", from_source=False)


def test_a_rotation_the_gateway_requests_for_a_keyrole_waits_out_the_grace_period() -> None:
    """The gateway's requests (``-role``, the only form its policy lets it write) wait
    until the version the active one replaced is out of its grace period, as the gateway
    refuses sooner ones itself: a compromised gateway cannot rotate a key every 10 s and
    empty every pod's ``.previous``. A user's own request is spaced 10 s."""
    first = rec(1, "Active", activated=T0)
    fresh = key_state(first, request=rotation_request(T0, role=True))
    requested = NewVersion(2, "requested", from_source=False)
    assert plan(fresh, T0 + rotation.REQUEST_SPACING) == requested  # nothing in grace
    archived = rec(1, "Archived", activated=T0, archived=T0 + MINUTE)
    active = rec(2, "Active", activated=T0 + MINUTE)
    role = key_state(archived, active, request=rotation_request(T0, role=True))
    grace_ends = T0 + MINUTE + role.policy.grace_period
    assert role.policy.grace_period > rotation.REQUEST_SPACING
    assert plan(role, T0 + MINUTE + rotation.REQUEST_SPACING) == Idle(grace_ends)
    third = NewVersion(3, "requested", from_source=False)
    assert plan(role, grace_ends) == third
    user = key_state(archived, active, request=rotation_request(T0))
    assert plan(user, T0 + MINUTE + rotation.REQUEST_SPACING) == third


def test_plan_cases_cover_every_step_kind_and_reason() -> None:
    kinds = {type(case.expected) for case in PLAN_CASES}
    assert kinds == {DeleteBlobs, Adopt, MarkLost, Promote, Destroy, NewVersion, Rewrap, Idle}
    reasons = {c.expected.reason for c in PLAN_CASES if isinstance(c.expected, NewVersion)}
    assert reasons == {"initial", "scheduled", "requested", "source-changed"}
    assert len({case.id for case in PLAN_CASES}) == len(PLAN_CASES)


# -- expired / wake_time / grace_versions ---------------------------------------------------


@pytest.mark.parametrize(
    ("records", "now", "expected"),
    [
        pytest.param((), T0, (), id="nothing"),
        pytest.param((rec(1, "Active"),), T0 + 24 * HOUR, (), id="active-never"),
        pytest.param(
            (rec(1, "Archived", archived=T0), rec(2, "Active")),
            T0 + 10 * MINUTE - datetime.timedelta(microseconds=1),
            (),
            id="before-grace-end",
        ),
        pytest.param(
            (rec(1, "Archived", archived=T0), rec(2, "Active")),
            T0 + 10 * MINUTE,
            (1,),
            id="at-grace-end",
        ),
        pytest.param(
            (replace(rec(1, "Archived"), archived_at=None), rec(2, "Active")),
            T0 + 24 * HOUR,
            (),
            id="no-archive-stamp",
        ),
        pytest.param(
            (rec(3, "Archived", archived=T0), rec(1, "Archived", archived=T0), rec(4, "Active")),
            T0 + HOUR,
            (1, 3),
            id="sorted",
        ),
        pytest.param(
            (rec(1, "Archived", archived=T0), rec(2, "Pending"), rec(3, "Destroyed")),
            T0 + HOUR,
            (),
            id="pending-and-destroyed-do-not-count",
        ),
        pytest.param(
            # An Active record older than an Archived one (hand-edited status) is never
            # destroyed by expiry, whatever its rank.
            (rec(1, "Active"), rec(2, "Archived", archived=T0)),
            T0 + HOUR,
            (),
            id="active-beyond-retain-kept",
        ),
    ],
)
def test_expired(
    records: tuple[VersionRecord, ...], now: datetime.datetime, expected: tuple[int, ...]
) -> None:
    assert expired(records, KEEP_ONE, now) == expected


def test_expired_respects_retain() -> None:
    records = (*(rec(v, "Archived", archived=T0) for v in range(1, 6)), rec(6, "Active"))
    late = T0 + 24 * HOUR
    for retain in (1, 2, 3, 6, 7):
        policy = RotationPolicy.from_spec({"gracePeriod": "10m", "retain": retain})
        assert expired(records, policy, late) == tuple(range(1, max(0, 6 - retain) + 1))


def test_wake_time_ignores_past_candidates() -> None:
    state = key_state(
        rec(1, "Archived", archived=T0), rec(2, "Active"), policy=KEEP_ONE, next_rotation=T0
    )
    assert wake_time(state, T0) == T0 + 10 * MINUTE
    assert wake_time(state, T0 + 10 * MINUTE) is None


@pytest.mark.parametrize(
    ("record", "now", "served"),
    [
        pytest.param(rec(1, "Archived", archived=T0), T0, True, id="just-archived"),
        pytest.param(
            rec(1, "Archived", archived=T0),
            T0 + 10 * MINUTE - datetime.timedelta(seconds=1),
            True,
            id="last-second",
        ),
        pytest.param(rec(1, "Archived", archived=T0), T0 + 10 * MINUTE, False, id="grace-over"),
        pytest.param(replace(rec(1, "Archived"), archived_at=None), T0, False, id="no-stamp"),
        pytest.param(rec(1, "Active"), T0, False, id="active"),
        pytest.param(rec(1, "Pending"), T0, False, id="pending"),
        pytest.param(rec(1, "Destroyed", archived=T0), T0, False, id="destroyed"),
    ],
)
def test_grace_versions(record: VersionRecord, now: datetime.datetime, served: bool) -> None:
    others = (rec(9, "Active"),)
    assert grace_versions((record, *others), ON_DEMAND, now) == ((record,) if served else ())


# -- status transitions ------------------------------------------------------------------------


def test_promote() -> None:
    now = T0 + HOUR
    records = (
        rec(1, "Destroyed"),
        rec(2, "Archived", archived=T0),
        rec(3, "Active"),
        rec(4, "Pending"),
        rec(5, "Pending"),
    )
    out = promote(records, 5, now)
    assert [r.version for r in out] == [1, 2, 3, 4, 5]
    assert [r.state for r in out] == ["Destroyed", "Archived", "Archived", "Destroyed", "Active"]
    assert out[0] == records[0]
    assert out[1] == records[1]  # an already archived version keeps its archive time
    assert out[2] == replace(records[2], state="Archived", archived_at=now)
    assert out[3] == replace(records[3], state="Destroyed", destroyed_at=now)
    assert out[4] == replace(records[4], state="Active", activated_at=now)
    assert out[4].archived_at is None


def test_promote_first_version() -> None:
    out = promote((rec(1, "Pending"),), 1, T0)
    assert out == (replace(rec(1, "Pending"), state="Active", activated_at=T0),)


def test_destroy() -> None:
    records = (rec(1, "Archived"), rec(2, "Archived"), rec(3, "Active"))
    out = destroy(records, [2, 99], T0 + HOUR)
    assert out == (
        records[0],
        replace(records[1], state="Destroyed", destroyed_at=T0 + HOUR),
        records[2],
    )
    assert destroy(records, [], T0) == records


def test_record_pending() -> None:
    records = (rec(1, "Active"),)
    new = rec(2, "Pending")
    assert record_pending(records, new) == (records[0], new)
    assert records == (rec(1, "Active"),)


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (rec(2, "Active"), "starts Pending"),
        (rec(1, "Pending"), "version 1 is already recorded"),
        (rec(3, "Pending"), "version 3 is already recorded"),  # even a Destroyed one
    ],
)
def test_record_pending_refuses(new: VersionRecord, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record_pending((rec(1, "Active"), rec(3, "Destroyed")), new)


# -- status round trip ---------------------------------------------------------------------------

stamps = st.datetimes(
    min_value=datetime.datetime(2000, 1, 1),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))
texts = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def records(draw: st.DrawFn) -> VersionRecord:
    return VersionRecord(
        version=draw(st.integers(1, 2**31)),
        state=draw(st.sampled_from(STATES)),
        created_at=draw(stamps),
        fingerprint=draw(texts),
        kms_provider=draw(texts),
        kms_key_id=draw(texts),
        kms_key_version=draw(texts),
        activated_at=draw(st.none() | stamps),
        archived_at=draw(st.none() | stamps),
        destroyed_at=draw(st.none() | stamps),
    )


@given(records())
def test_status_round_trip(record: VersionRecord) -> None:
    status = record.to_status()
    assert VersionRecord.from_status(status) == record
    optional = {"activatedAt", "archivedAt", "destroyedAt"}
    assert optional & set(status) == {
        key
        for key, value in (
            ("activatedAt", record.activated_at),
            ("archivedAt", record.archived_at),
            ("destroyedAt", record.destroyed_at),
        )
        if value is not None
    }


def test_to_status_shape() -> None:
    record = rec(3, "Archived", created=T0, activated=T0 + MINUTE, archived=T0 + HOUR)
    assert record.to_status() == {
        "version": 3,
        "state": "Archived",
        "createdAt": "2030-01-01T00:00:00Z",
        "fingerprint": "fp-3",
        "kmsProvider": "local",
        "kmsKeyId": "default",
        "kmsKeyVersion": "1",
        "activatedAt": "2030-01-01T00:01:00Z",
        "archivedAt": "2030-01-01T01:00:00Z",
    }


def test_stamps_are_utc_and_whole_seconds() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2030, 1, 1, 2, 0, 0, 999_999, tzinfo=plus_two)
    assert format_stamp(moment) == "2030-01-01T00:00:00Z"
    assert parse_stamp("2030-01-01T00:00:00Z") == T0
    assert parse_stamp("2030-01-01T00:00:00Z").tzinfo is UTC


def test_from_status_defaults_and_errors() -> None:
    minimal: dict[str, object] = {
        "version": "2",
        "state": "Pending",
        "createdAt": "2030-01-01T00:00:00Z",
    }
    record = VersionRecord.from_status(minimal)
    assert (record.version, record.state, record.created_at) == (2, "Pending", T0)
    assert (record.fingerprint, record.kms_provider, record.kms_key_id) == ("", "", "")
    assert (record.activated_at, record.archived_at, record.destroyed_at) == (None, None, None)
    with pytest.raises(ValueError, match="unknown version state 'Deleted'"):
        VersionRecord.from_status({**minimal, "state": "Deleted"})
    with pytest.raises(ValueError, match="Invalid isoformat string"):
        VersionRecord.from_status({**minimal, "createdAt": "yesterday"})
    with pytest.raises(KeyError):
        VersionRecord.from_status({"version": 1, "state": "Pending"})


def test_prune_destroyed_keeps_live_records_and_the_newest_destroyed() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def record(version: int, state: State) -> VersionRecord:
        return VersionRecord(version, state, now, "hs256:x", "local", "k", "1")

    records = (
        *tuple(record(v, "Destroyed") for v in range(1, 14)),
        record(14, "Archived"),
        record(15, "Active"),
    )
    pruned = transitions.prune_destroyed(records, keep=10)
    assert [r.version for r in pruned] == list(range(4, 16))
    assert transitions.prune_destroyed(records[-3:], keep=10) == records[-3:]


def test_rewrapped_sets_the_key_version_of_only_those_versions() -> None:
    records = (rec(1, "Archived"), rec(2, "Active"))
    moved = transitions.rewrapped(records, {2: "5"})
    assert [r.kms_key_version for r in moved] == ["1", "5"]
    assert moved[1].fingerprint == records[1].fingerprint
