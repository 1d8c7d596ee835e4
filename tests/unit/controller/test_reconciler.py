"""The reconciler's write discipline, under interleavings staged with an in-memory API.

The e2e suite runs this code against a real API server; these tests use ``FakeApi``
(tests/unit/controller/fakeapi.py) only because a real server cannot change an object
between two calls of one reconcile on demand. Everything else is real: the local KMS
(a PBKDF2 keyring at the iteration floor), envelopes, X25519 keys, the planner.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, cast

import pytest

from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.models import FINALIZER
from secure_keys.controller.reconciler import Reconciler, Retry, blob_secret_name
from secure_keys.core.binding import WrapContext
from secure_keys.core.kms.base import HealthStatus, KmsProvider, WrappedKey
from secure_keys.core.kms.local import from_config
from secure_keys.core.kms.registry import KmsConfig, KmsRegistry
from secure_keys.kube.client import APIKEYS, EVENTS, SECRETS, Resource
from tests.support.reconciler import (
    NS,
    add_apikey,
    blobs,
    bump,
    events,
    ready_reason,
    reconcile,
    reconciler,
    recorded,
    request_rotation,
    states,
    status,
)
from tests.unit.controller.fakeapi import FakeApi

# -- the happy path, and the order of its writes ----------------------------------------


def test_a_new_key_gets_a_finalizer_then_its_blob_then_its_record(
    api: FakeApi, kms_config: Path
) -> None:
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(reconciler(api, kms_config), "k")
    assert states(api, "k") == {1: "Active"}
    assert blobs(api, "k") == {"v1"}
    assert FINALIZER in api.stored(APIKEYS, NS, "k")["metadata"]["finalizers"]
    writes = [(c[0], c[1]) for c in api.calls if c[0] != "get"]
    blob_write = writes.index(("create", "secrets"))
    first_status = next(
        i for i, c in enumerate(api.calls) if c[0] == "patch" and "status" in (c[4] or {})
    )
    assert (
        api.calls.index(next(c for c in api.calls if c[:2] == ("create", "secrets"))) < first_status
    )
    assert blob_write >= 1  # the finalizer patch came first


def test_a_new_key_is_sealed_without_reading_a_blob_secret_it_cannot_have(
    api: FakeApi, kms_config: Path
) -> None:
    # No finalizer yet and no version in status: the controller never wrote its blob
    # Secret (the finalizer always comes first), so the first pass does not ask for it.
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(reconciler(api, kms_config), "k")
    assert states(api, "k") == {1: "Active"}
    reads = [c for c in api.calls if c[:2] == ("get", "secrets")]
    assert reads == []  # nor, with no Pending stage for a first version, re-reads it


def test_a_first_version_is_recorded_active_in_the_write_that_records_it(
    api: FakeApi, kms_config: Path
) -> None:
    # Nothing is served yet, so there is no Pending stage: one status write records the
    # version, Active (issue 23: each ApiKey write costs the API server several Secrets').
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(reconciler(api, kms_config), "k")
    assert recorded(api) == [{1: "Active"}]
    assert [e["reason"] for e in events(api)] == ["Sealed"]


def test_a_rotation_still_records_its_version_pending_before_promoting_it(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k")
    api.calls.clear()
    reconcile(rec, "k")
    assert recorded(api)[:2] == [{1: "Active", 2: "Pending"}, {1: "Archived", 2: "Active"}]


def test_a_blob_secret_there_after_all_is_adopted_not_overwritten(
    api: FakeApi, kms_config: Path
) -> None:
    # The finalizer removed and the status cleared by hand: the pass that assumed no
    # blob Secret finds it when its create fails, and adopts what it holds.
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    sealed = api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"]
    stored = api.stored(APIKEYS, NS, "k")
    stored["metadata"]["finalizers"] = []
    stored["status"] = {}
    api._bump(stored)
    reconcile(rec, "k")
    assert states(api, "k") == {1: "Active"}
    assert api.stored(SECRETS, NS, blob_secret_name("k"))["data"] == {"v1": sealed}
    assert FINALIZER in api.stored(APIKEYS, NS, "k")["metadata"]["finalizers"]


def test_a_foreign_secret_under_the_blob_name_still_conflicts_for_a_new_key(
    api: FakeApi, kms_config: Path
) -> None:
    api.put(SECRETS, NS, {"metadata": {"name": blob_secret_name("k")}, "data": {"x": "eA=="}})
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(reconciler(api, kms_config), "k")
    assert ready_reason(api, "k") == "BlobSecretConflict"
    assert api.stored(SECRETS, NS, blob_secret_name("k"))["data"] == {"x": "eA=="}


def test_a_spec_change_without_a_new_version_updates_observed_generation(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    stored = api.stored(APIKEYS, NS, "k")
    stored["spec"]["rotation"] = {"retain": 5}
    stored["metadata"]["generation"] = 2
    api._bump(stored)
    reconcile(rec, "k")
    assert status(api, "k")["observedGeneration"] == 2
    assert states(api, "k") == {1: "Active"}


# -- resourceVersion preconditions ------------------------------------------------------


def test_a_concurrent_change_makes_the_status_write_fail_not_overwrite(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k")
    api.before("patch", "apikeys", "status", bump(APIKEYS, "k"))
    with pytest.raises(Retry, match="409"):
        reconcile(rec, "k")
    assert states(api, "k") == {1: "Active"}  # the Pending record was not written
    reconcile(rec, "k")  # the next pass deletes the unrecorded blob and rotates again
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert blobs(api, "k") == {"v1", "v2"}


def test_a_concurrent_change_makes_the_blob_write_fail(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k")
    api.before("patch", "secrets", "", bump(SECRETS, blob_secret_name("k")))
    with pytest.raises(Retry, match="409"):
        reconcile(rec, "k")
    assert blobs(api, "k") == {"v1"}
    assert states(api, "k") == {1: "Active"}


# -- another writer removes the blob about to be served --------------------------------


def test_promotion_rechecks_that_the_blob_still_exists(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k")

    def remove_v2(fake: FakeApi, *_: Any) -> None:  # a second replica deletes "its" stray
        secret = fake.stored(SECRETS, NS, blob_secret_name("k"))
        secret["data"].pop("v2", None)
        fake._bump(secret)

    api.before("patch", "apikeys", "status", remove_v2)  # just before the Pending record
    reconcile(rec, "k")
    final = states(api, "k")
    active = [v for v, s in final.items() if s == "Active"]
    assert len(active) == 1
    assert f"v{active[0]}" in blobs(api, "k")
    assert final.get(2) == "Destroyed"  # never served
    for call in api.calls:
        if call[0] == "patch" and call[1] == "apikeys" and "status" in (call[4] or {}):
            for record in call[4]["status"].get("versions") or []:
                assert not (record["version"] == 2 and record["state"] == "Active")


# -- deleteAfterSeal deletes exactly what was sealed ---------------------------------------


def _source(api: FakeApi, value: bytes) -> None:
    api.put(
        SECRETS,
        NS,
        {"metadata": {"name": "src"}, "data": {"k": base64.b64encode(value).decode()}},
    )


CONSUMED = {"source": {"secretRef": {"name": "src", "key": "k", "deleteAfterSeal": True}}}


def _consuming(api: FakeApi, kms_config: Path) -> Reconciler:
    """A reconciler, and ApiKey ``k`` that seals Secret ``src`` and then deletes it."""
    _source(api, b"value-a")
    add_apikey(api, "k", CONSUMED)
    return reconciler(api, kms_config)


def test_delete_after_seal_deletes_the_sealed_source(api: FakeApi, kms_config: Path) -> None:
    reconcile(_consuming(api, kms_config), "k")
    assert states(api, "k") == {1: "Active"}
    assert ("secrets", NS, "src") not in api.objects
    assert not status(api, "k").get("consumedSource")


def test_delete_after_seal_spares_a_source_replaced_meanwhile(
    api: FakeApi, kms_config: Path
) -> None:
    rec = _consuming(api, kms_config)

    def replace_source(fake: FakeApi, *_: Any) -> None:
        _source(fake, b"value-b")  # a user re-creates it with a new value

    api.before("patch", "apikeys", "status", replace_source)
    reconcile(rec, "k")
    assert states(api, "k") == {1: "Active"}
    kept = api.stored(SECRETS, NS, "src")
    assert base64.b64decode(kept["data"]["k"]) == b"value-b"
    deletes = [c for c in api.calls if c[0] == "delete" and c[3] == "src"]
    assert deletes
    assert deletes[0][4]
    assert set(deletes[0][4]) == {"uid", "resourceVersion"}
    assert not status(api, "k").get("consumedSource")


def test_a_consumed_source_outlives_a_first_blob_removed_before_its_record(
    api: FakeApi, kms_config: Path
) -> None:
    # A first version is recorded Active with no re-read before it; the source is deleted
    # only once the blob Secret, read again, still holds that version.
    rec = _consuming(api, kms_config)

    def remove_blobs(fake: FakeApi, *_: Any) -> None:
        del fake.objects[(SECRETS.plural, NS, blob_secret_name("k"))]

    api.before("patch", "apikeys", "status", remove_blobs)
    reconcile(rec, "k")
    final = states(api, "k")
    active = [v for v, state in final.items() if state == "Active"]
    assert final[1] == "Destroyed"
    assert active
    assert f"v{active[0]}" in blobs(api, "k")  # sealed again from the source
    assert ("secrets", NS, "src") not in api.objects  # then, and only then, consumed


def test_a_consumed_source_is_kept_while_the_active_blob_does_not_check_out(
    api: FakeApi, kms_config: Path
) -> None:
    rec = _consuming(api, kms_config)

    def tamper(fake: FakeApi, *_: Any) -> None:
        secret = fake.stored(SECRETS, NS, blob_secret_name("k"))
        sealed = bytearray(base64.b64decode(secret["data"]["v1"]))
        sealed[-1] ^= 1  # the tag left as it was
        secret["data"]["v1"] = base64.b64encode(bytes(sealed)).decode()
        fake._bump(secret)

    api.before("patch", "apikeys", "status", tamper)
    reconcile(rec, "k")
    assert ("secrets", NS, "src") in api.objects
    assert ready_reason(api, "k") == "BlobInvalid"


class _Crash(BaseException):
    """The process dying (``os._exit`` in the failpoints): nothing catches it."""


def test_a_first_seal_cut_short_after_its_blob_still_consumes_its_source(
    api: FakeApi, kms_config: Path
) -> None:
    rec = _consuming(api, kms_config)  # (its keys are the controller's, kept across runs)

    def crash(*_: Any) -> None:
        raise _Crash

    api.before("patch", "apikeys", "status", crash)
    with pytest.raises(_Crash):
        reconcile(rec, "k")
    assert status(api, "k").get("versions") is None
    reconcile(rec, "k")  # the next pass adopts the blob
    assert states(api, "k") == {1: "Active"}
    assert ("secrets", NS, "src") not in api.objects
    assert not status(api, "k").get("consumedSource")


def test_a_source_changed_during_the_first_seal_is_sealed_not_taken_as_sealed(
    api: FakeApi, kms_config: Path
) -> None:
    _source(api, b"value-from-the-secret")
    add_apikey(api, "k", {"source": {"generate": {}}})
    rec = reconciler(api, kms_config)

    def edit(fake: FakeApi, *_: Any) -> None:
        stored = fake.stored(APIKEYS, NS, "k")
        stored["spec"] = {"source": {"secretRef": {"name": "src", "key": "k"}}}
        stored["metadata"]["generation"] = 2
        fake._bump(stored)

    api.before("patch", "apikeys", "status", edit)  # the record's write then fails: 409
    with pytest.raises(Retry):
        reconcile(rec, "k")
    reconcile(rec, "k")
    # The generated value is adopted as what it was, then the secretRef is sealed.
    assert states(api, "k") == {1: "Archived", 2: "Active"}


# -- shredding ----------------------------------------------------------------------------


def test_shredding_erases_every_blob_before_deleting_the_secret(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    asyncio.run(api.delete(APIKEYS, NS, "k"))  # finalizer: deletionTimestamp only
    api.calls.clear()
    reconcile(rec, "k")
    secret = blob_secret_name("k")
    erase = next(i for i, c in enumerate(api.calls) if c[:2] == ("patch", "secrets"))
    delete = next(i for i, c in enumerate(api.calls) if c[:2] == ("delete", "secrets"))
    assert erase < delete
    assert api.calls[erase][4]["data"] == {"v1": None}
    assert api.calls[delete][3] == secret
    assert ("apikeys", NS, "k") not in api.objects  # the finalizer let go


# -- what a write or the KMS says must be believed ---------------------------------------


class LyingVersion:
    """A provider that announces key version 9 but still wraps with its real newest.

    A stand-in for a KMS that reports a rotation it has not made; no real provider
    misbehaves this way on demand.
    """

    def __init__(self, inner: KmsProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.key_id = inner.key_id

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        return self.inner.unwrap(wrapped, context)

    def key_version(self) -> str:
        return "9"

    def health(self) -> HealthStatus:
        return self.inner.health()


def test_a_rewrap_that_does_not_reach_the_new_version_is_refused(
    api: FakeApi, kms_config: Path
) -> None:
    registry = KmsRegistry()
    registry.register(
        "local", lambda c: cast(KmsProvider, LyingVersion(from_config(c.key_id, c.options)))
    )
    rec = reconciler(api, kms_config, registry)
    add_apikey(api, "k", {"source": {"generate": {}}})
    with pytest.raises(Retry):
        reconcile(rec, "k")
    assert ready_reason(api, "k") == "KmsRefused"
    assert {v["kmsKeyVersion"] for v in status(api, "k")["versions"]} == {"1"}


def test_a_pruned_status_field_stops_the_controller_minting_versions(
    api: FakeApi, kms_config: Path
) -> None:
    add_apikey(api, "k", {"source": {"generate": {}}})

    def prune(
        fake: FakeApi, method: str, resource: Resource, ns: Any, name: str, patch: Any
    ) -> None:
        patch["status"].pop("sourceDigest", None)  # an outdated CRD drops the field

    api.before("patch", "apikeys", "status", prune)
    reconcile(reconciler(api, kms_config), "k")
    assert ready_reason(api, "k") == "StatusNotPersisted"
    assert blobs(api, "k") == {"v1"}


def test_a_repeated_failure_emits_one_event(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"secretRef": {"name": "missing", "key": "k"}}})
    for _ in range(3):
        with pytest.raises(Retry):
            reconcile(rec, "k")
    events = [c for c in api.calls if c[:2] == ("create", EVENTS.plural)]
    assert [e[4]["reason"] for e in events] == ["SourceUnavailable"]


def test_own_writes_are_recognised(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    key_rv = api.stored(APIKEYS, NS, "k")["metadata"]["resourceVersion"]
    blob_rv = api.stored(SECRETS, NS, blob_secret_name("k"))["metadata"]["resourceVersion"]
    assert rec.wrote("apikey", NS, "k", key_rv)
    assert rec.wrote("blobs", NS, "k", blob_rv)
    request_rotation(api, "k")  # someone else's write
    assert not rec.wrote(
        "apikey", NS, "k", api.stored(APIKEYS, NS, "k")["metadata"]["resourceVersion"]
    )


def test_every_version_one_reconcile_wrote_is_recognised_as_its_own(
    api: FakeApi, kms_config: Path
) -> None:
    """A new key is written twice in a row (finalizer, then its first version's record,
    Active); the watch delivers each version, often after the next write: none may queue
    the key again."""
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    created = api.stored(APIKEYS, NS, "k")["metadata"]["resourceVersion"]
    reconcile(rec, "k")
    preconditions = [
        (patch.get("metadata") or {}).get("resourceVersion")
        for method, plural, _ns, _name, patch in api.calls
        if (method, plural) == ("patch", APIKEYS.plural) and isinstance(patch, dict)
    ]
    final = api.stored(APIKEYS, NS, "k")["metadata"]["resourceVersion"]
    written = [rv for rv in preconditions if rv not in (None, created)] + [final]
    assert len(written) >= 2
    assert all(rec.wrote("apikey", NS, "k", rv) for rv in written)
    assert not rec.wrote("apikey", NS, "k", created)


def test_kms_config_registry_is_used(kms_config: Path) -> None:
    """Guard for the fixture above: a custom registry really replaces the default one."""
    registry = KmsRegistry()
    built: list[KmsConfig] = []

    def factory(config: KmsConfig) -> KmsProvider:
        built.append(config)
        return from_config(config.key_id, config.options)

    registry.register("local", factory)
    KmsDirectory(KmsSettings.load(kms_config), registry).default()
    assert len(built) == 1
