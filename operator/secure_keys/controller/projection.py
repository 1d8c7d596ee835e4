"""Pure projections between an ApiKey's stored objects and the planner's view of it.

``key_state`` turns the ApiKey and its blob Secret into the ``KeyState`` the planner
reads; ``summary`` turns version records back into the ``status`` the controller writes
(versions, Ready/Sealed/BlobsIntact conditions, next rotation); ``failure`` builds the
status of a failed reconcile. Nothing here does I/O or reads the clock: time comes in.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

from secure_keys.controller.conditions import set_condition
from secure_keys.controller.models import ApiKey, source_digest
from secure_keys.controller.records import VersionRecord, prune_destroyed
from secure_keys.controller.rotation import KeyState
from secure_keys.controller.schedule import RotationPolicy
from secure_keys.core.binding import MAX_VERSION
from secure_keys.core.integrity import archived_tag, destroyed_tag, tag_valid
from secure_keys.core.stamps import format_stamp
from secure_keys.kube.blobformat import blob_versions

KmsNow = tuple[str, str, str]
"""(provider, key id, key version) the ApiKey's KMS key wraps with now."""


def records_of(key: ApiKey) -> tuple[VersionRecord, ...]:
    """The version records in status (raises KeyError/TypeError/ValueError if unusable)."""
    versions = key.status.get("versions") or []
    if not isinstance(versions, list):
        raise TypeError("status.versions is not a list")
    records = tuple(VersionRecord.from_status(item) for item in versions)
    numbers = [r.version for r in records]
    if len(set(numbers)) != len(numbers):
        raise ValueError("status.versions lists a version twice")
    if any(not 1 <= n <= MAX_VERSION for n in numbers):
        raise ValueError(f"status.versions holds a version outside 1 to {MAX_VERSION}")
    return records


def tag_destroyed(
    records: tuple[VersionRecord, ...], uid: str, tag_key: bytes | bytearray
) -> tuple[VersionRecord, ...]:
    """Records with every untagged Destroyed record tagged as the controller's decision."""
    out = []
    for record in records:
        if record.state == "Destroyed" and record.destroy_tag is None:
            stamp = format_stamp(record.destroyed_at or record.created_at)
            record = replace(record, destroy_tag=destroyed_tag(tag_key, uid, record.version, stamp))
        out.append(record)
    return tuple(out)


def destroy_verified(record: VersionRecord, uid: str, tag_key: bytes | bytearray | None) -> bool:
    """Whether a Destroyed record carries the controller's tag (its blob may go)."""
    if tag_key is None or record.destroy_tag is None:
        return False
    stamp = format_stamp(record.destroyed_at or record.created_at)
    return tag_valid(destroyed_tag(tag_key, uid, record.version, stamp), record.destroy_tag)


def tag_archived(
    records: tuple[VersionRecord, ...], uid: str, tag_key: bytes | bytearray
) -> tuple[VersionRecord, ...]:
    """Records with every Archived record the controller archived in this pass (trusted,
    not yet tagged) tagged. An untrusted or unchecked ``archivedAt`` is never tagged here:
    only ``records.restamp`` makes it trusted again, at a new time."""
    out = []
    for record in records:
        if awaits_archive_tag(record):
            assert record.archived_at is not None  # noqa: S101 - awaits_archive_tag checked
            stamp = format_stamp(record.archived_at)
            record = replace(record, archive_tag=archived_tag(tag_key, uid, record.version, stamp))
        out.append(record)
    return tuple(out)


def awaits_archive_tag(record: VersionRecord) -> bool:
    """Whether the controller archived ``record`` itself and has not tagged it yet."""
    return (
        record.state == "Archived"
        and record.archive_trust == "trusted"
        and record.archive_tag is None
        and record.archived_at is not None
    )


def archive_verified(record: VersionRecord, uid: str, tag_key: bytes | bytearray) -> bool:
    """Whether ``archivedAt`` carries the controller's tag for this uid and version."""
    if record.archived_at is None or record.archive_tag is None:
        return False
    stamp = format_stamp(record.archived_at)
    return tag_valid(archived_tag(tag_key, uid, record.version, stamp), record.archive_tag)


def _archive_checked(
    record: VersionRecord, uid: str, tag_key: bytes | bytearray | None
) -> VersionRecord:
    if record.state != "Archived":
        return record
    if tag_key is None:
        return replace(record, archive_trust="unchecked")
    trusted = archive_verified(record, uid, tag_key)
    return replace(record, archive_trust="trusted" if trusted else "untrusted")


def key_state(
    key: ApiKey,
    secret: dict[str, Any] | None,
    policy: RotationPolicy,
    current_kms: KmsNow | None,
    tag_key: bytes | bytearray | None = None,
) -> KeyState:
    """The planner's view. A Destroyed record whose blob is still there but which does not
    carry the controller's tag (a status edit, not a decision of ours) is left out, so the
    planner adopts that blob instead of deleting it.

    Each Archived record says whether its ``archivedAt`` carries the controller's tag
    (``VersionRecord.archive_trust``): the planner re-stamps one that does not, and never
    counts a grace period from it. Without ``tag_key`` (the controller's keys are not
    open) nothing can be checked, so no Archived version is destroyed or re-stamped."""
    blobs = blob_versions(secret)
    uid = key.metadata.uid
    records = tuple(
        _archive_checked(r, uid, tag_key)
        for r in records_of(key)
        if not (
            r.state == "Destroyed" and r.version in blobs and not destroy_verified(r, uid, tag_key)
        )
    )
    active = [r for r in records if r.state == "Active"]
    next_rotation = None
    if active and active[0].activated_at is not None:
        next_rotation = policy.next_rotation(active[0].activated_at)
    recorded_digest = key.status.get("sourceDigest")
    honoured = key.status.get("lastRotationRequest")
    return KeyState(
        records=records,
        blobs=blobs,
        policy=policy,
        source_digest=source_digest(key.spec),
        recorded_source_digest=recorded_digest if isinstance(recorded_digest, str) else None,
        rotation_request=key.rotation_request,
        honoured_request=honoured if isinstance(honoured, str) else None,
        next_rotation=next_rotation,
        source_mints=key.spec.source.kind == "generate",
        current_kms=current_kms,
    )


def _conditions(key: ApiKey) -> list[dict[str, Any]]:
    conditions = key.status.get("conditions")
    if not isinstance(conditions, list):
        return []
    return [c for c in conditions if isinstance(c, dict) and isinstance(c.get("type"), str)]


def summary(
    key: ApiKey,
    records: tuple[VersionRecord, ...],
    blobs: frozenset[int],
    policy: RotationPolicy,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The status fields that follow from ``records`` (merged into status by a patch)."""
    generation = key.metadata.generation
    active = [r for r in records if r.state == "Active"]
    conditions = _conditions(key)
    if active:
        message = f"version {active[0].version} is active ({active[0].fingerprint})"
        conditions = set_condition(
            conditions, "Ready", "True", "Active", message, generation=generation, now=now
        )
    else:
        conditions = set_condition(
            conditions,
            "Ready",
            "False",
            "Sealing",
            "no version is active yet",
            generation=generation,
            now=now,
        )
    newest = max(records, key=lambda r: r.version, default=None)
    if newest is not None and newest.state in ("Pending", "Active"):
        conditions = set_condition(
            conditions,
            "Sealed",
            "True",
            "Sealed",
            f"version {newest.version} sealed with {newest.kms_provider}/{newest.kms_key_id}",
            generation=generation,
            now=now,
        )
    kept = prune_destroyed(records, blobs)
    lost = [r for r in kept if r.lost_at is not None]
    if lost:
        listed = ", ".join(str(r.version) for r in lost)
        conditions = set_condition(
            conditions,
            "BlobsIntact",
            "False",
            "BlobMissing",
            f"version(s) {listed} lost their sealed blob (the blob Secret was deleted or "
            "edited outside the controller) and can no longer be served",
            generation=generation,
            now=now,
        )
    else:
        conditions = [c for c in conditions if c.get("type") != "BlobsIntact"]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "versions": [r.to_status() for r in kept],
        "conditions": conditions,
        "currentVersion": active[0].version if active else None,
        "nextRotation": None,
    }
    if active and active[0].activated_at is not None:
        upcoming = policy.next_rotation(active[0].activated_at)
        if upcoming is not None:
            status["nextRotation"] = format_stamp(upcoming)
    return status


def settled(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether status already holds every field of ``wanted`` (no write needed)."""
    return all(current.get(k) == v for k, v in wanted.items())


def failure(
    body: dict[str, Any], reason: str, message: str, now: datetime.datetime
) -> dict[str, Any] | None:
    """The status patch reporting a failure, or None when status already reports it."""
    metadata = body.get("metadata") or {}
    status = body.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    listed = conditions if isinstance(conditions, list) else []
    usable = [c for c in listed if isinstance(c, dict) and isinstance(c.get("type"), str)]
    ready = next((c for c in usable if c.get("type") == "Ready"), None)
    if (
        ready is not None
        and ready.get("status") == "False"
        and ready.get("reason") == reason
        and ready.get("message") == message
    ):
        return None
    generation = metadata.get("generation")
    generation = generation if isinstance(generation, int) and generation >= 0 else 1
    conditions = set_condition(
        usable, "Ready", "False", reason, message, generation=generation, now=now
    )
    return {"conditions": conditions, "observedGeneration": generation}
