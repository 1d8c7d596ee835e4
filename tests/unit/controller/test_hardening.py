"""The holes a hostile review found in the reconciler, each closed (hardening issue items).

Like test_reconciler.py these run the real reconciler, local KMS, envelopes and planner
against ``FakeApi``, an in-memory API server (the e2e suite repeats the important ones
against a real one): a fake lets a test stage exactly the hostile state it needs.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from secure_keys.controller.reconciler import Reconciler, Retry, blob_secret_name
from secure_keys.core.binding import WrapContext
from secure_keys.core.kms.base import HealthStatus, KmsProvider, WrappedKey
from secure_keys.core.kms.local import from_config
from secure_keys.core.kms.registry import KmsRegistry
from secure_keys.kube.client import APIKEYS, SECRETS
from tests.support.reconciler import (
    NS,
    add_apikey,
    blobs,
    events,
    ready_reason,
    reconcile,
    reconciler,
    request_rotation,
    states,
    status,
)
from tests.unit.controller.fakeapi import FakeApi

CANARY = b"sk_live_CANARY_hardening_0123456789"


def fingerprints(api: FakeApi, name: str) -> dict[int, str]:
    return {v["version"]: v["fingerprint"] for v in status(api, name).get("versions") or []}


def condition(api: FakeApi, name: str, type_: str) -> dict[str, Any] | None:
    for item in status(api, name).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return None


def put_secret(api: FakeApi, name: str, data: dict[str, bytes], **extra: Any) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, **extra.pop("metadata", {})},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        **extra,
    }
    api.put(SECRETS, NS, body)


def clear_status(api: FakeApi, name: str) -> None:
    """What `kubectl patch --subresource=status` with empty versions does."""
    stored = api.stored(APIKEYS, NS, name)
    stored["status"] = {**stored["status"], "versions": [], "currentVersion": None}
    api._bump(stored)


# -- item 4: clearing status must not destroy or replace the sealed copy ------------------


def test_clearing_status_of_a_consumed_secret_ref_key_keeps_its_only_copy(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    put_secret(api, "stripe", {"key": CANARY})
    add_apikey(
        api,
        "k",
        {"source": {"secretRef": {"name": "stripe", "key": "key", "deleteAfterSeal": True}}},
    )
    reconcile(rec, "k")
    assert states(api, "k") == {1: "Active"}
    assert (SECRETS.plural, NS, "stripe") not in api.objects  # consumed
    sealed_before = api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"]
    mark = fingerprints(api, "k")[1]

    clear_status(api, "k")
    reconcile(rec, "k")

    assert api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"] == sealed_before
    assert states(api, "k") == {1: "Active"}
    assert fingerprints(api, "k") == {1: mark}
    assert ready_reason(api, "k") == "Active"
    assert [e["type"] for e in events(api, "Adopted")] == ["Warning"]


def test_clearing_status_of_a_generated_key_neither_remints_nor_reuses_a_number(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k", "r1")
    reconcile(rec, "k")
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    before = fingerprints(api, "k")

    clear_status(api, "k")
    reconcile(rec, "k")
    assert fingerprints(api, "k") == before  # the same values, not new ones
    assert states(api, "k") == {1: "Archived", 2: "Active"}
    assert blobs(api, "k") == {"v1", "v2"}

    request_rotation(api, "k", "r2")
    reconcile(rec, "k")
    assert max(states(api, "k")) == 3  # numbering continues above every blob


def test_a_blob_that_does_not_open_is_kept_and_reported(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    secret = api.stored(SECRETS, NS, blob_secret_name("k"))
    secret["data"]["v7"] = base64.b64encode(b"not an envelope").decode()
    api._bump(secret)
    reconcile(rec, "k")
    assert ready_reason(api, "k") == "OrphanBlobs"
    assert "v7" in api.stored(SECRETS, NS, blob_secret_name("k"))["data"]
    assert states(api, "k") == {1: "Active"}


# -- item 5: a blob Secret deleted by hand ------------------------------------------------


def test_versions_whose_blobs_vanish_are_marked_lost_and_reported(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    request_rotation(api, "k")
    reconcile(rec, "k")
    del api.objects[(SECRETS.plural, NS, blob_secret_name("k"))]

    reconcile(rec, "k")

    versions = {v["version"]: v for v in status(api, "k")["versions"]}
    assert versions[1]["state"] == versions[2]["state"] == "Destroyed"
    assert "lostAt" in versions[1]
    assert "lostAt" in versions[2]
    assert versions[3]["state"] == "Active"  # a new value, loudly
    intact = condition(api, "k", "BlobsIntact")
    assert intact is not None
    assert intact["status"] == "False"
    assert intact["reason"] == "BlobMissing"
    lost = events(api, "BlobMissing")
    assert [e["type"] for e in lost] == ["Warning"]
    assert "1, 2" in lost[0]["message"]
    # Nothing live lacks its blob.
    live = {v for v, item in versions.items() if item["state"] != "Destroyed"}
    assert {f"v{v}" for v in live} <= blobs(api, "k")


# -- item 2: someone else's <name>.sealed ----------------------------------------------


def test_a_foreign_secret_under_the_blob_name_is_never_written_or_shredded(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    put_secret(api, "payments.sealed", {"v1": b"the admin's own data"})
    original = dict(api.stored(SECRETS, NS, "payments.sealed")["data"])
    add_apikey(api, "payments", {"source": {"generate": {}}})

    reconcile(rec, "payments")
    assert ready_reason(api, "payments") == "BlobSecretConflict"
    assert api.stored(SECRETS, NS, "payments.sealed")["data"] == original
    assert len(events(api, "BlobSecretConflict")) == 1

    # Deleting the ApiKey does not shred or delete the admin's Secret either.
    asyncio.run(api.delete(APIKEYS, NS, "payments"))
    reconcile(rec, "payments")
    assert api.stored(SECRETS, NS, "payments.sealed")["data"] == original
    assert (APIKEYS.plural, NS, "payments") not in api.objects  # the finalizer let go
    assert not events(api, "Shredded")


def test_a_blob_secret_owned_by_an_earlier_apikey_of_that_name_is_foreign(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})
    reconcile(rec, "k")
    old = api.stored(SECRETS, NS, blob_secret_name("k"))
    # The ApiKey is re-created under the same name (a new uid) before the GC runs.
    stored = api.stored(APIKEYS, NS, "k")
    stored["metadata"]["uid"] = "another-uid"
    stored.pop("status", None)
    api._bump(stored)
    reconcile(rec, "k")
    assert ready_reason(api, "k") == "BlobSecretConflict"
    assert api.stored(SECRETS, NS, blob_secret_name("k"))["data"] == old["data"]


def test_blob_secret_labels_hold_the_uid_not_the_name(api: FakeApi, kms_config: Path) -> None:
    # Item 7: label values stop at 63 characters; names go to 253.
    rec = reconciler(api, kms_config)
    name = "k" * 253
    add_apikey(api, name, {"source": {"generate": {}}})
    reconcile(rec, name)
    labels = api.stored(SECRETS, NS, blob_secret_name(name))["metadata"]["labels"]
    assert all(len(value) <= 63 for value in labels.values())
    assert labels["securekeys.io/apikey-uid"] == api.stored(APIKEYS, NS, name)["metadata"]["uid"]


# -- item 1: secretRef may not name the controller's own Secrets ---------------------------


def test_a_secret_ref_to_a_blob_secret_is_refused(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "victim", {"source": {"generate": {}}})
    reconcile(rec, "victim")
    add_apikey(
        api,
        "thief",
        {"source": {"secretRef": {"name": blob_secret_name("victim"), "key": "v1"}}},
    )
    reconcile(rec, "thief")
    assert ready_reason(api, "thief") == "SourceForbidden"
    assert (SECRETS.plural, NS, blob_secret_name("thief")) not in api.objects
    assert len(events(api, "SourceForbidden")) == 1


def test_a_secret_ref_to_a_secret_with_our_label_is_refused(api: FakeApi, kms_config: Path) -> None:
    rec = reconciler(api, kms_config)
    put_secret(
        api,
        "controller-ish",
        {"key": CANARY},
        metadata={"labels": {"app.kubernetes.io/managed-by": "secure-keys"}},
    )
    add_apikey(api, "k", {"source": {"secretRef": {"name": "controller-ish", "key": "key"}}})
    reconcile(rec, "k")
    assert ready_reason(api, "k") == "SourceForbidden"


# -- item 6: a value too large for an envelope ---------------------------------------------


@pytest.mark.parametrize(("size", "reason"), [(65536, "Active"), (65537, "SourceInvalid")])
def test_source_size_limit_ends_in_a_condition(
    api: FakeApi, kms_config: Path, size: int, reason: str
) -> None:
    rec = reconciler(api, kms_config)
    put_secret(api, "big", {"key": b"x" * size})
    add_apikey(api, "k", {"source": {"secretRef": {"name": "big", "key": "key"}}})
    if reason == "Active":
        reconcile(rec, "k")
    else:
        with pytest.raises(Retry):
            reconcile(rec, "k")
        assert len(events(api, "SourceInvalid")) == 1
        assert str(size) in events(api, "SourceInvalid")[0]["message"]
    assert ready_reason(api, "k") == reason


def test_an_unforeseen_error_ends_in_a_condition_not_a_crash(
    api: FakeApi, kms_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "k", {"source": {"generate": {}}})

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("secret-looking detail")

    monkeypatch.setattr("secure_keys.controller.steps.generate", broken)
    with pytest.raises(Retry):
        reconcile(rec, "k")
    assert ready_reason(api, "k") == "InternalError"
    message = events(api, "InternalError")[0]["message"]
    assert "ZeroDivisionError" in message
    assert "secret-looking detail" not in message


# -- item 11: KMS calls never run on the event loop ----------------------------------------


class SlowKms:
    """The local provider behind a wrap/unwrap that blocks its thread like a slow network
    KMS would; no real provider is slow on demand."""

    def __init__(self, inner: KmsProvider, delay: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.key_id = inner.key_id
        self.delay = delay
        self.threads: set[str] = set()

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return self.inner.unwrap(wrapped, context)

    def key_version(self) -> str:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return self.inner.key_version()

    def health(self) -> HealthStatus:
        return self.inner.health()


def test_slow_kms_calls_leave_the_event_loop_free(api: FakeApi, kms_config: Path) -> None:
    built: list[SlowKms] = []

    def factory(config: Any) -> KmsProvider:
        provider = SlowKms(from_config(config.key_id, config.options), delay=0.3)
        built.append(provider)
        return cast(KmsProvider, provider)

    registry = KmsRegistry()
    registry.register("local", factory)
    rec: Reconciler = reconciler(api, kms_config, registry)
    add_apikey(api, "k", {"source": {"generate": {}}})

    async def run() -> float:
        longest = 0.0
        done = False

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now

        task = asyncio.create_task(ticker())
        await rec.reconcile(NS, "k")
        done = True
        await task
        return longest

    longest_stall = asyncio.run(run())
    assert states(api, "k") == {1: "Active"}
    assert built
    assert built[0].threads
    assert all(name.startswith("kms") for name in built[0].threads)
    assert longest_stall < 0.2, f"the event loop stalled for {longest_stall:.2f} s"


# -- the second hostile review: forged status, replayed blobs ------------------------------


def test_a_status_edit_marking_the_only_copy_destroyed_does_not_delete_it(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    put_secret(api, "stripe", {"key": CANARY})
    ref = {"name": "stripe", "key": "key", "deleteAfterSeal": True}
    add_apikey(api, "k", {"source": {"secretRef": ref}})
    reconcile(rec, "k")
    sealed = api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"]
    mark = fingerprints(api, "k")[1]

    # Whoever may patch apikeys/status forges the controller's decision to destroy v1.
    stored = api.stored(APIKEYS, NS, "k")
    [record] = stored["status"]["versions"]
    record.update(state="Destroyed", destroyedAt="2026-11-28T12:00:00Z")
    api._bump(stored)
    reconcile(rec, "k")

    assert api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"] == sealed
    assert states(api, "k") == {1: "Active"}  # adopted back from its blob
    assert fingerprints(api, "k") == {1: mark}


def test_a_destroyed_record_the_controller_wrote_is_tagged_and_its_blob_deleted(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(
        api, "k", {"source": {"generate": {}}, "rotation": {"gracePeriod": "0s", "retain": 1}}
    )
    reconcile(rec, "k")
    request_rotation(api, "k")
    reconcile(rec, "k")
    versions = {v["version"]: v for v in status(api, "k")["versions"]}
    assert versions[1]["state"] == "Destroyed"
    assert versions[1]["destroyTag"].startswith("hm1:")
    assert blobs(api, "k") == {"v2"}


def test_blobs_saved_from_a_deleted_apikey_are_not_adopted_by_its_successor(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    add_apikey(api, "pay", {"source": {"generate": {}}})
    reconcile(rec, "pay")
    request_rotation(api, "pay")
    reconcile(rec, "pay")
    saved = copy.deepcopy(api.stored(SECRETS, NS, blob_secret_name("pay")))
    old_marks = fingerprints(api, "pay")

    # The ApiKey is deleted (shredded) and created again under the same name: a new uid.
    asyncio.run(api.delete(APIKEYS, NS, "pay"))
    reconcile(rec, "pay")
    assert (SECRETS.plural, NS, blob_secret_name("pay")) not in api.objects
    add_apikey(api, "pay", {"source": {"generate": {}}})
    reconcile(rec, "pay")
    assert states(api, "pay") == {1: "Active"}

    # Someone who kept the old blob Secret writes its entries (and tags) back.
    fresh = api.stored(SECRETS, NS, blob_secret_name("pay"))
    fresh["data"]["v2"] = saved["data"]["v2"]
    fresh["metadata"]["annotations"] = {
        **fresh["metadata"].get("annotations", {}),
        "securekeys.io/blob-tags": saved["metadata"]["annotations"]["securekeys.io/blob-tags"],
    }
    api._bump(fresh)
    reconcile(rec, "pay")

    assert ready_reason(api, "pay") == "OrphanBlobs"
    assert states(api, "pay") == {1: "Active"}  # the old v2 is not served
    assert old_marks[2] not in fingerprints(api, "pay").values()


def test_a_blob_swapped_in_from_a_deleted_apikey_is_never_resealed(
    api: FakeApi, kms_config: Path
) -> None:
    rec = reconciler(api, kms_config)
    put_secret(api, "src", {"key": b"old-value-" + CANARY})
    add_apikey(api, "k", {"source": {"secretRef": {"name": "src", "key": "key"}}})
    reconcile(rec, "k")
    saved = copy.deepcopy(api.stored(SECRETS, NS, blob_secret_name("k")))
    asyncio.run(api.delete(APIKEYS, NS, "k"))
    reconcile(rec, "k")
    put_secret(api, "src", {"key": b"new-value-" + CANARY})
    add_apikey(api, "k", {"source": {"secretRef": {"name": "src", "key": "key"}}})
    reconcile(rec, "k")
    new_mark = fingerprints(api, "k")[1]

    # The old incarnation's v1 (it opens: same namespace, name and version) swapped in.
    secret = api.stored(SECRETS, NS, blob_secret_name("k"))
    secret["data"]["v1"] = saved["data"]["v1"]
    secret["metadata"]["annotations"]["securekeys.io/blob-tags"] = saved["metadata"]["annotations"][
        "securekeys.io/blob-tags"
    ]
    api._bump(secret)
    request_rotation(api, "k")  # a secretRef rotation re-seals the Active version's value
    reconcile(rec, "k")

    assert ready_reason(api, "k") == "BlobInvalid"
    assert states(api, "k") == {1: "Active"}  # no v2 made from the swapped-in value
    assert fingerprints(api, "k") == {1: new_mark}
