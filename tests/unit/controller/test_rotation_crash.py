"""Crash safety of the rotation planner, by simulation.

A model of the controller's two durable stores (the ApiKey status and the blob Secret) is
driven through random histories: time passing, rotation requests, source changes, and
reconcile runs that a crash may cut short between any two individual writes. Each step
``plan`` returns is executed the way ``service`` does (see ``rotation``'s docstring):

* NewVersion: write the blob with its intent (the status fields it will record), then
  write the status with the version Pending (and that source digest / honoured request),
  or Active when no version is (a first version);
* Adopt: one status write recording the unrecorded blob as Pending, with the intent
  written beside it (a crash after the blob write finishes that rotation);
* Promote and Destroy: one status write each;
* DeleteBlobs: one blob-Secret write.

Checked after every single write: at most one Active version, every live record has
exactly the blob that was written for it, versions only move forward through
Pending -> Active -> Archived -> Destroyed (an Active one never skips Archived), a
version is destroyed only after its grace period, and recorded version numbers are
never reused (a version is first recorded Pending, or Active when none was). Checked
when a run reaches Idle: exactly one Active, blobs are exactly the live versions, the
spec is honoured, nothing is due, and the wake-up time is exact.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from secure_keys.controller import records as transitions
from secure_keys.controller import rotation
from secure_keys.controller.reconciler import MAX_STEPS
from secure_keys.controller.records import State, VersionRecord
from secure_keys.controller.rotation import (
    Adopt,
    DeleteBlobs,
    Destroy,
    Idle,
    KeyState,
    NewVersion,
    Promote,
    Step,
)
from secure_keys.controller.schedule import RotationPolicy

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
TICK = datetime.timedelta(microseconds=1)

POLICIES = {
    "hourly-retain-2": {"interval": "1h", "gracePeriod": "10m", "retain": 2},
    "10s-retain-1": {"interval": "10s", "gracePeriod": "5s", "retain": 1},
    "on-demand-no-grace": {"gracePeriod": "0s", "retain": 1},
    "cron-retain-3": {"schedule": "*/15 * * * *", "gracePeriod": "5m", "retain": 3},
    "defaults": None,
}

FORWARD: dict[State, set[State]] = {
    "Pending": {"Pending", "Active", "Destroyed"},
    "Active": {"Active", "Archived"},
    "Archived": {"Archived", "Destroyed"},
    "Destroyed": {"Destroyed"},
}


@dataclass(frozen=True)
class Blob:
    token: str  # what the status record's fingerprint points at
    value: str  # the plaintext it seals
    intent: dict[str, Any] = field(default_factory=dict)  # written in the same write


@dataclass
class Stores:
    """The durable state: what survives a crash."""

    status: dict[str, Any] = field(default_factory=lambda: {"versions": []})
    blobs: dict[int, Blob] = field(default_factory=dict)
    _parsed: tuple[VersionRecord, ...] = ()

    def records(self) -> tuple[VersionRecord, ...]:
        return self._parsed

    def set_records(self, records: tuple[VersionRecord, ...]) -> None:
        # Through the status's JSON form, as the API server stores it and the service
        # reads it back.
        self.status = {**self.status, "versions": [r.to_status() for r in records]}
        self._parsed = tuple(VersionRecord.from_status(item) for item in self.status["versions"])


class Crash(Exception):
    """The controller died between two writes."""


class CrashModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stores = Stores()
        self.now = T0
        self.policy = RotationPolicy()
        self.mints = False
        self.source = "a"
        self.request: str | None = None
        self.tokens = itertools.count(1)
        self.values: dict[str, str] = {}  # blob token -> value, for every blob ever written
        self.seen: dict[int, VersionRecord] = {}  # every version ever recorded, latest form
        self.ever_active: set[int] = set()
        self.longest_run = 0

    # -- the world --------------------------------------------------------------------

    @initialize(policy=st.sampled_from(sorted(POLICIES)), mints=st.booleans())
    def configure(self, policy: str, mints: bool) -> None:
        self.policy = RotationPolicy.from_spec(POLICIES[policy])
        self.mints = mints

    @rule(
        seconds=st.sampled_from([1, 5, 10, 59, 300, 600, 3599, 3600, 86_400]) | st.integers(0, 7200)
    )
    def advance(self, seconds: int) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    @rule()
    def request_rotation(self) -> None:
        self.request = f"req-{next(self.tokens)}"

    @rule()
    def clear_request(self) -> None:
        self.request = None

    @rule(source=st.sampled_from("abc"))
    def change_source(self, source: str) -> None:
        self.source = source

    @rule(crash_after=st.integers(0, 8), tick=st.integers(0, 1))
    def crashing_reconcile(self, crash_after: int, tick: int) -> None:
        self._reconcile(crash_after, tick)

    @rule(tick=st.integers(0, 1))
    def reconcile(self, tick: int) -> None:
        self._reconcile(None, tick)

    # -- the controller -------------------------------------------------------------------

    def _digest(self) -> str:
        return f"sha256:{self.source}"

    def _read(self) -> KeyState:
        records = self.stores.records()
        active = [r for r in records if r.state == "Active"]
        next_rotation = None
        if active and active[0].activated_at is not None:
            next_rotation = self.policy.next_rotation(active[0].activated_at)
        return KeyState(
            records=records,
            blobs=frozenset(self.stores.blobs),
            policy=self.policy,
            source_digest=self._digest(),
            recorded_source_digest=self.stores.status.get("sourceDigest"),
            rotation_request=self.request,
            honoured_request=self.stores.status.get("lastRotationRequest"),
            next_rotation=next_rotation,
            source_mints=self.mints,
        )

    def _writes(self, state: KeyState, step: Step) -> list[tuple[str, Any]]:
        """The individual durable writes that execute ``step``, in the service's order."""
        now = self.now
        if isinstance(step, DeleteBlobs):
            return [("blobs", dict.fromkeys(step.versions))]
        if isinstance(step, Promote):
            promoted = transitions.promote(state.records, step.version, now)
            return [("status", {"versions": promoted})]
        if isinstance(step, Destroy):
            return [
                ("status", {"versions": transitions.destroy(state.records, step.versions, now)})
            ]
        if isinstance(step, Adopt):
            adopted = []
            for version in step.versions:
                pending = version == step.pending
                adopted.append(
                    VersionRecord(
                        version=version,
                        state="Pending" if pending else "Archived",
                        created_at=now,
                        fingerprint=self.stores.blobs[version].token,
                        kms_provider="local",
                        kms_key_id="default",
                        kms_key_version="1",
                        archived_at=None if pending else now,
                    )
                )
            adopted_status: dict[str, Any] = {"versions": transitions.adopt(state.records, adopted)}
            if step.pending is not None:
                adopted_status.update(self.stores.blobs[step.pending].intent)
            return [("status", adopted_status)]
        assert isinstance(step, NewVersion)
        active = state.active
        if step.from_source or active is None:
            value = f"minted-{next(self.tokens)}" if self.mints else f"value-of-{self.source}"
        else:
            value = self.stores.blobs[active.version].value  # re-sealed, same plaintext
        intent: dict[str, Any] = {}
        if step.from_source:
            intent["sourceDigest"] = state.source_digest
        if state.rotation_request:
            intent["lastRotationRequest"] = state.rotation_request
        blob = Blob(f"blob-{next(self.tokens)}", value, intent)
        self.values[blob.token] = value
        record = VersionRecord(
            version=step.version,
            state="Pending",
            created_at=now,
            fingerprint=blob.token,
            kms_provider="local",
            kms_key_id="default",
            kms_key_version="1",
        )
        records = transitions.record_pending(state.records, record)
        if step.activates:  # a first version: no Pending stage, Active in the same write
            records = transitions.promote(records, step.version, now)
        status: dict[str, Any] = {"versions": records}
        status.update(intent)
        return [("blobs", {step.version: blob}), ("status", status)]

    def _apply(self, write: tuple[str, Any]) -> None:
        target, change = write
        if target == "blobs":
            for version, blob in change.items():
                if blob is None:
                    self.stores.blobs.pop(version, None)
                else:
                    self.stores.blobs[version] = blob
            return
        status = {k: v for k, v in change.items() if k != "versions"}
        self.stores.status = {**self.stores.status, **status}
        self.stores.set_records(change["versions"])

    def _reconcile(self, crash_after: int | None, tick: int) -> None:
        writes = 0
        request_pending = bool(self.request) and self.request != self.stores.status.get(
            "lastRotationRequest"
        )
        active_before = self._active_version()
        try:
            for steps in range(1, MAX_STEPS + 1):
                state = self._read()
                step = rotation.plan(state, self.now)
                if isinstance(step, Idle):
                    if tick == 0:  # a clock that ticks mid-run can make more work fall due
                        self.longest_run = max(self.longest_run, steps)
                    self._check_idle(state, step)
                    if request_pending and crash_after is None:
                        active = state.active
                        deferred = (
                            active is not None
                            and active.version == active_before
                            and (allowed := rotation.request_allowed_at(active)) is not None
                            and self.now < allowed
                            and step.wake_at is not None
                            and step.wake_at <= allowed
                        )
                        assert self._active_version() != active_before or deferred
                    return
                for write in self._writes(state, step):
                    if crash_after is not None and writes == crash_after:
                        raise Crash
                    self._apply(write)
                    writes += 1
                    self._check_durable()
                self.now += datetime.timedelta(seconds=tick)
        except Crash:
            return
        raise AssertionError(f"no Idle after {MAX_STEPS} steps")

    def _active_version(self) -> int | None:
        active = [r.version for r in self.stores.records() if r.state == "Active"]
        return active[0] if active else None

    # -- invariants ----------------------------------------------------------------------

    def _check_durable(self) -> None:
        records = self.stores.records()
        versions = [r.version for r in records]
        assert len(versions) == len(set(versions)), f"a version is recorded twice: {versions}"
        assert sum(r.state == "Active" for r in records) <= 1, records
        for record in records:
            if record.state != "Destroyed":
                blob = self.stores.blobs.get(record.version)
                assert blob is not None, f"live version {record.version} has no blob"
                assert blob.token == record.fingerprint, f"v{record.version}: another blob"
            if record.state == "Active":
                self.ever_active.add(record.version)
        current = {r.version: r for r in records}
        assert set(self.seen) <= set(current), "a recorded version disappeared"
        for version, record in current.items():
            before = self.seen.get(version)
            if before is None:
                first = record.state == "Active" and not any(
                    r.state == "Active" for r in self.seen.values()
                )  # a first version (nothing served): Active at once
                assert record.state == "Pending" or first, (
                    f"v{version} first recorded {record.state}"
                )
                assert all(version > v for v in self.seen), f"v{version} reused"
                continue
            assert record.state in FORWARD[before.state], (
                f"v{version}: {before.state} -> {record.state}"
            )
            assert (record.created_at, record.fingerprint) == (
                before.created_at,
                before.fingerprint,
            )
            if before.state == "Archived" and record.state == "Destroyed":
                assert before.archived_at is not None
                assert self.now >= before.archived_at + self.policy.grace_period
        self.seen = current

    def _check_idle(self, state: KeyState, step: Idle) -> None:
        records = state.records
        active = [r for r in records if r.state == "Active"]
        assert len(active) == 1, records
        assert not [r for r in records if r.state == "Pending"]
        assert set(self.stores.blobs) == transitions.live_versions(records)
        assert self.stores.status.get("sourceDigest") == self._digest()
        deferred = self.request and self.stores.status.get("lastRotationRequest") != self.request
        if deferred:
            # On-demand rotations are spaced: the request waits for request_allowed_at.
            allowed = rotation.request_allowed_at(active[0])
            assert allowed is not None
            assert self.now < allowed
            assert step.wake_at is not None
            assert step.wake_at <= allowed
        if state.next_rotation is not None:
            assert self.now < state.next_rotation
        assert rotation.expired(records, self.policy, self.now) == ()
        values = [self.values[r.fingerprint] for r in records]
        if self.mints:
            assert len(values) == len(set(values)), "a minting source repeated a value"
        else:
            assert self.stores.blobs[active[0].version].value == f"value-of-{self.source}"
        # Nothing served was ever destroyed without first being archived.
        for record in records:
            if record.version in self.ever_active and record.state == "Destroyed":
                assert record.archived_at is not None
        # The wake-up time is exact: nothing is due before it, something is due at it.
        assert rotation.plan(state, self.now) == step
        if step.wake_at is None:
            assert state.next_rotation is None
            later = self.now + datetime.timedelta(days=3650)
            assert rotation.plan(state, later) == Idle(None)
        else:
            assert step.wake_at > self.now
            assert rotation.plan(state, step.wake_at - TICK) == step
            due = rotation.plan(state, step.wake_at)
            assert isinstance(due, NewVersion | Destroy), due
            if isinstance(due, NewVersion):
                # A deferred request is honoured when its spacing ends, unless the
                # schedule comes first: then the scheduled rotation is what is due.
                requested = deferred and step.wake_at == rotation.request_allowed_at(active[0])
                assert due.reason == ("requested" if requested else "scheduled")
                assert due.from_source == self.mints

    @invariant()
    def durable_state_is_consistent(self) -> None:
        self._check_durable()

    @precondition(lambda self: self.longest_run > 0)
    @invariant()
    def runs_are_short(self) -> None:
        # DeleteBlobs, Promote, NewVersion, Promote, Destroy, DeleteBlobs, then Idle.
        assert self.longest_run <= 7


CrashModel.TestCase.settings = settings(stateful_step_count=40, deadline=None)
TestCrashSafety = CrashModel.TestCase
