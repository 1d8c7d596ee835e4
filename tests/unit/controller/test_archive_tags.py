"""A status edit cannot cut an archived version's grace period short (archive tags).

Whoever may patch ``apikeys/status`` could set a version's ``archivedAt`` to 1970, and a
controller that believed it would destroy the version at once, while clients still use it
as ``.previous``. The controller tags every ``archivedAt`` it writes
(``core.integrity.archived_tag``) and re-stamps one without a valid tag to the present.

Like test_hardening.py these run the real reconciler, local KMS, envelopes and planner
against ``FakeApi``, with a clock the test moves.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from secure_keys.controller import rotation
from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.models import ROTATE_ANNOTATION
from secure_keys.controller.reconciler import Outcome, Reconciler, blob_secret_name
from secure_keys.controller.records import ArchiveTrust, State, VersionRecord
from secure_keys.controller.schedule import RotationPolicy
from secure_keys.core.integrity import archived_tag, destroyed_tag, tag_valid
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.core.stamps import format_stamp
from secure_keys.kube.client import APIKEYS, SECRETS, KubeApi, Resource
from tests.support.crd_schema import STATUS_SCHEMA, schema_errors
from tests.support.reconciler import (
    NS,
    add_apikey,
    blobs,
    events,
    ready_reason,
    states,
    status,
)
from tests.unit.controller.fakeapi import FakeApi

T0 = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
GRACE = datetime.timedelta(hours=1)
SECOND = datetime.timedelta(seconds=1)
SPEC: dict[str, Any] = {
    "source": {"generate": {}},
    "rotation": {"gracePeriod": "1h", "retain": 1},
}
UNTRUSTED = "ArchivedAtUntrusted"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


class World:
    """One reconciler with its own controller keys, and the clock it reads."""

    def __init__(self, api: FakeApi, kms_config: Path) -> None:
        self.api = api
        self.clock = Clock()
        self.keys = ControllerKeys(RecipientPrivateKey.generate(), bytearray(os.urandom(32)))
        kms = KmsDirectory(KmsSettings.load(kms_config), None)
        self.rec = Reconciler(cast(KubeApi, api), kms, self.keys, clock=self.clock)

    def at(self, when: datetime.datetime, name: str = "k") -> Outcome:
        self.clock.now = when
        return asyncio.run(self.rec.reconcile(NS, name))

    def rotate(self, when: datetime.datetime, name: str = "k") -> None:
        """Ask for a rotation and run it at ``when`` (the Active version being old enough
        for an on-demand rotation)."""
        stored = self.api.stored(APIKEYS, NS, name)
        annotations = stored["metadata"].setdefault("annotations", {})
        annotations[ROTATE_ANNOTATION] = f"r-{when.isoformat()}"
        self.api._bump(stored)
        self.at(when, name)

    def tag_valid_for(self, name: str, version: int) -> bool:
        item = record(self.api, name, version)
        uid = self.api.stored(APIKEYS, NS, name)["metadata"]["uid"]
        expected = archived_tag(self.keys.fingerprint_key, uid, version, item["archivedAt"])
        return tag_valid(expected, item.get("archiveTag"))

    def destroy_tag_valid_for(self, name: str, version: int) -> bool:
        item = record(self.api, name, version)
        uid = self.api.stored(APIKEYS, NS, name)["metadata"]["uid"]
        expected = destroyed_tag(self.keys.fingerprint_key, uid, version, item["destroyedAt"])
        return tag_valid(expected, item.get("destroyTag"))


def record(api: FakeApi, name: str, version: int) -> dict[str, Any]:
    return next(v for v in status(api, name)["versions"] if v["version"] == version)


def edit_record(api: FakeApi, name: str, version: int, **fields: str | None) -> None:
    """What ``kubectl patch apikey --subresource=status`` does to one version record."""
    stored = api.stored(APIKEYS, NS, name)
    item = next(v for v in stored["status"]["versions"] if v["version"] == version)
    for field, value in fields.items():
        if value is None:
            item.pop(field, None)
        else:
            item[field] = value
    api._bump(stored)


def stamp(when: datetime.datetime) -> str:
    return format_stamp(when)


def rotated_once(world: World, name: str = "k", at: datetime.datetime = T0) -> None:
    """v1 made, then v2 made at ``at``: v1 is Archived, in its grace period until at+1h."""
    add_apikey(world.api, name, SPEC)
    world.at(at - datetime.timedelta(minutes=5), name)
    world.rotate(at, name)
    assert states(world.api, name) == {1: "Archived", 2: "Active"}
    assert record(world.api, name, 1)["archivedAt"] == stamp(at)


# -- the controller's own archivedAt: tagged, and honoured exactly -------------------------


def test_an_untouched_tagged_record_is_destroyed_at_archived_at_plus_grace(
    api: FakeApi, kms_config: Path
) -> None:
    world = World(api, kms_config)
    rotated_once(world)
    assert world.tag_valid_for("k", 1)

    outcome = world.at(T0 + GRACE - SECOND)
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert "v1" in blobs(api, "k")
    assert outcome.wake_at == T0 + GRACE  # the grace period is counted from the tagged time

    world.at(T0 + GRACE)
    assert states(api, "k") == {1: "Destroyed", 2: "Active"}
    assert blobs(api, "k") == {"v2"}
    assert events(api, UNTRUSTED) == []


# -- an archivedAt without a valid tag is re-stamped, never believed -----------------------


@pytest.mark.parametrize(
    ("edit", "fields"),
    [
        ("back-dated, tag kept", {"archivedAt": "1970-01-01T00:00:00Z"}),
        ("back-dated, tag removed", {"archivedAt": "1970-01-01T00:00:00Z", "archiveTag": None}),
        ("back-dated, tag forged", {"archivedAt": "1970-01-01T00:00:00Z", "archiveTag": "hm1:0"}),
        # What a controller from before archive tags wrote: the true time, no tag. The
        # upgrade re-stamps it too (its grace restarts once, with a Warning Event).
        ("written before archive tags", {"archiveTag": None}),
    ],
)
def test_an_untrusted_archived_at_restarts_the_grace_period_and_is_reported_once(
    api: FakeApi, kms_config: Path, edit: str, fields: dict[str, str | None]
) -> None:
    world = World(api, kms_config)
    rotated_once(world)
    edit_record(api, "k", 1, **fields)

    seen = T0 + 10 * SECOND  # when the controller first reads the edited record
    outcome = world.at(seen)
    assert states(api, "k") == {1: "Archived", 2: "Active"}, edit
    assert "v1" in blobs(api, "k")
    assert record(api, "k", 1)["archivedAt"] == stamp(seen)
    assert world.tag_valid_for("k", 1)
    assert outcome.wake_at == seen + GRACE
    [event] = events(api, UNTRUSTED)
    assert event["type"] == "Warning"
    assert "version(s) 1 " in event["message"]

    # Its grace period now runs a full hour from ``seen``, not from 1970 or from T0.
    world.at(T0 + GRACE)
    world.at(seen + GRACE - SECOND)
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert "v1" in blobs(api, "k")
    assert len(events(api, UNTRUSTED)) == 1  # re-stamped once, not on every pass

    world.at(seen + GRACE)
    assert states(api, "k") == {1: "Destroyed", 2: "Active"}
    assert blobs(api, "k") == {"v2"}
    assert len(events(api, UNTRUSTED)) == 1


def test_a_tag_copied_from_another_version_is_rejected(api: FakeApi, kms_config: Path) -> None:
    world = World(api, kms_config)
    rotated_once(world)  # v1 archived at T0
    later = T0 + 30 * 60 * SECOND
    world.rotate(later)  # v2 archived at T0+30m, in its grace period until T0+1h30m
    assert states(api, "k") == {1: "Archived", 2: "Archived", 3: "Active"}

    # v1's time and tag are a genuine pair: put on v2, they would end its grace at T0+1h.
    v1 = record(api, "k", 1)
    edit_record(api, "k", 2, archivedAt=v1["archivedAt"], archiveTag=v1["archiveTag"])
    world.at(T0 + GRACE)

    assert states(api, "k") == {1: "Destroyed", 2: "Archived", 3: "Active"}
    assert "v2" in blobs(api, "k")
    assert record(api, "k", 2)["archivedAt"] == stamp(T0 + GRACE)  # re-stamped, not believed
    assert world.tag_valid_for("k", 2)
    assert len(events(api, UNTRUSTED)) == 1


def test_a_tag_copied_from_another_apikey_is_rejected(api: FakeApi, kms_config: Path) -> None:
    world = World(api, kms_config)
    rotated_once(world, "old", at=T0)  # old's v1 archived at T0
    later = T0 + 30 * 60 * SECOND
    rotated_once(world, "new", at=later)  # new's v1 archived at T0+30m
    uids = {api.stored(APIKEYS, NS, n)["metadata"]["uid"] for n in ("old", "new")}
    assert len(uids) == 2

    # The same version number, a genuine pair of time and tag, but another ApiKey's uid.
    donor = record(api, "old", 1)
    edit_record(api, "new", 1, archivedAt=donor["archivedAt"], archiveTag=donor["archiveTag"])
    world.at(T0 + GRACE, "new")

    assert states(api, "new") == {1: "Archived", 2: "Active"}
    assert "v1" in blobs(api, "new")
    assert record(api, "new", 1)["archivedAt"] == stamp(T0 + GRACE)
    assert world.tag_valid_for("new", 1)
    assert len(events(api, UNTRUSTED)) == 1


def test_without_the_controller_keys_no_archived_version_is_destroyed_or_restamped(
    api: FakeApi, kms_config: Path
) -> None:
    world = World(api, kms_config)
    rotated_once(world)
    world.rec.keys = None  # a restarted controller whose default KMS key has not opened them

    outcome = world.at(T0 + 2 * GRACE)
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert "v1" in blobs(api, "k")
    assert record(api, "k", 1)["archivedAt"] == stamp(T0)
    assert outcome.wake_at is None  # requeued when the keys open, not on a grace timer
    assert events(api, UNTRUSTED) == []

    world.rec.keys = world.keys  # the keys open: the tag checks out, and the grace is over
    world.at(T0 + 2 * GRACE)
    assert states(api, "k") == {1: "Destroyed", 2: "Active"}
    assert (SECRETS.plural, NS, blob_secret_name("k")) in api.objects
    assert blobs(api, "k") == {"v2"}
    assert events(api, UNTRUSTED) == []


# -- the pure pieces: the tag's purpose, and what the planner does with the trust it reads --


def test_an_archived_tag_is_not_a_destroyed_tag_for_the_same_fields() -> None:
    key = bytes(range(32))
    when = stamp(T0)
    assert archived_tag(key, "uid", 1, when) != destroyed_tag(key, "uid", 1, when)
    assert archived_tag(key, "uid", 1, when) != archived_tag(key, "uid", 1, stamp(T0 + SECOND))


def _record(version: int, state: State, **fields: Any) -> VersionRecord:
    created = T0 - 2 * GRACE
    return VersionRecord(
        version=version,
        state=state,
        created_at=created,
        fingerprint="hs256:00",
        kms_provider="local",
        kms_key_id="default",
        kms_key_version="1",
        activated_at=created,
        **fields,
    )


def _state(trust: ArchiveTrust) -> rotation.KeyState:
    back_dated = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    archived = _record(1, "Archived", archived_at=back_dated, archive_trust=trust)
    active = _record(2, "Active")
    return rotation.KeyState(
        records=(archived, active),
        blobs=frozenset({1, 2}),
        policy=RotationPolicy.from_spec(SPEC["rotation"]),
        source_digest="sha256:0",
        recorded_source_digest="sha256:0",
        rotation_request=None,
        honoured_request=None,
        next_rotation=None,
    )


@pytest.mark.parametrize(
    ("trust", "step"),
    [
        ("trusted", rotation.Destroy((1,))),
        ("untrusted", rotation.Restamp((1,))),
        ("unchecked", rotation.Idle(None)),
    ],
)
def test_only_a_trusted_archived_at_ends_a_grace_period(
    trust: ArchiveTrust, step: rotation.Step
) -> None:
    state = _state(trust)
    assert rotation.plan(state, T0) == step
    served = rotation.grace_versions(state.records, state.policy, T0)
    assert [r.version for r in served] == ([] if trust == "trusted" else [1])


# -- the CRD keeps the tag: a pruned archiveTag would re-stamp (and report) on every pass ----


def test_every_field_of_a_version_record_is_declared_in_the_crd() -> None:
    full = _record(1, "Archived", archived_at=T0, archive_tag="hm1:" + "0" * 32)
    written = full.to_status() | replace(full, destroy_tag="hm1:" + "1" * 32).to_status()
    item = STATUS_SCHEMA["properties"]["versions"]["items"]
    assert set(written) <= set(item["properties"])
    assert not schema_errors({"versions": [written]}, STATUS_SCHEMA)


def test_an_outdated_crd_that_prunes_the_tag_stops_the_controller_re_stamping(
    api: FakeApi, kms_config: Path
) -> None:
    world = World(api, kms_config)
    rotated_once(world)
    edit_record(api, "k", 1, archivedAt="1970-01-01T00:00:00Z")

    def prune(
        fake: FakeApi, method: str, resource: Resource, ns: Any, name: str, patch: Any
    ) -> None:  # an API server with the ApiKey CRD from before archive tags, on every write
        for item in patch["status"].get("versions") or []:
            item.pop("archiveTag", None)
        fake.before("patch", "apikeys", "status", prune)

    api.before("patch", "apikeys", "status", prune)
    outcome = world.at(T0 + 2 * GRACE)
    assert outcome.wake_at is None  # not retried until the ApiKey (or its CRD) changes
    assert ready_reason(api, "k") == "StatusNotPersisted"
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert "v1" in blobs(api, "k")
    assert events(api, UNTRUSTED) == []  # one failure reported, not a re-stamp per pass
    assert len(events(api, "StatusNotPersisted")) == 1


def test_a_destroy_tag_forged_onto_a_live_record_does_not_survive_its_destruction(
    api: FakeApi, kms_config: Path
) -> None:
    """A ``destroyTag`` written into an Archived record by a status edit must not become
    the Destroyed record's tag: the controller tags its own decision, and the record
    verifies (no adoption back, no noise)."""
    world = World(api, kms_config)
    rotated_once(world)
    edit_record(api, "k", 1, destroyTag="hm1:" + "0" * 32)

    world.at(T0 + GRACE)
    assert states(api, "k") == {1: "Destroyed", 2: "Active"}
    destroyed = record(api, "k", 1)
    assert destroyed["destroyTag"] != "hm1:" + "0" * 32
    assert world.destroy_tag_valid_for("k", 1)
    assert blobs(api, "k") == {"v2"}
    world.at(T0 + GRACE + SECOND)  # and it stays destroyed, not adopted back
    assert states(api, "k") == {1: "Destroyed", 2: "Active"}
