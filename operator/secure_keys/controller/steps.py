"""Execute one planned step of an ApiKey's lifecycle, in its crash-safe write order.

The planner (``rotation.plan``) decides what to do; ``StepExecutor`` does it: it reads
the plaintext from the source, seals, adopts, promotes, destroys or rewraps, and writes
the blob Secret and the status in the order ``rotation``'s docstring gives. The new
version records it writes come from ``records``' pure transitions.

Every KMS call and every envelope operation (which wraps or unwraps a data key through
the KMS) runs in a small bounded thread pool, never on the event loop: a network KMS
that takes seconds must not stall the Lease renewals and watches sharing the loop.

Unwraps go through one DEK cache per KMS provider and key (``core.kms.cache``): a
version read again within the cache's lifetime costs no KMS call, and a KMS outage does
not fail it. Evicted and expired entries are zeroed; hits and misses are counted.

Plaintext lives in ``bytearray`` buffers zeroed as soon as the envelope is sealed or the
fingerprint computed; no step puts it in a status field, an Event, a log or an exception.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from secure_keys.controller import metrics, rotation
from secure_keys.controller import records as transitions
from secure_keys.controller.blobs import BlobStore, Intent
from secure_keys.controller.config import KmsDirectory
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.failpoints import failpoint
from secure_keys.controller.models import ApiKey, KmsRef
from secure_keys.controller.projection import (
    awaits_archive_tag,
    summary,
    tag_archived,
    tag_destroyed,
)
from secure_keys.controller.records import VersionRecord
from secure_keys.controller.rotation import KeyState
from secure_keys.controller.sources import (
    SourceForbidden,
    SourceUnavailable,
    check_size,
    decode_secret_value,
    generate,
)
from secure_keys.controller.status import ApiKeyWriter, Retry, StatusNotPersisted, write_error
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsCorrupt, KmsUnavailable
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.integrity import blob_tag
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.cache import CachedUnwraps, DekCache
from secure_keys.core.memory import zero
from secure_keys.core.sealing import open_sealed
from secure_keys.core.stamps import format_stamp
from secure_keys.kube.blobcheck import BlobRefused, checked_blob, open_blob
from secure_keys.kube.client import SECRETS, ApiError
from secure_keys.kube.keysformat import owned_by_controller

_log = structlog.get_logger("secure_keys.controller")
T = TypeVar("T")
KMS_THREADS = 4
"""KMS calls in flight at once, per controller; further ones queue for a thread."""
DEK_CACHE_ENTRIES = 1024
DEK_CACHE_SECONDS = 300.0
"""Each provider's DEK cache: how many data keys, and for how long (then zeroed)."""
KEY_VERSION_SECONDS = 5.0
"""How long a provider's current key version is taken as known: a KEK rotated at the KMS
is noticed (and rewrapped to) within this, as within a cloud provider's own cache."""

Body = dict[str, Any]
Secret = dict[str, Any] | None


class ControllerKeysUnavailable(KmsUnavailable):
    """The controller's own keys (fingerprint, recipient) are not open yet."""

    def __init__(self, why: str) -> None:
        super().__init__("controller", "keys", why)


class OrphanBlobs(Exception):
    """The blob Secret holds versions that status does not record and that cannot be
    adopted (they do not open for this ApiKey); they are kept for a person to look at."""


class StepExecutor:
    def __init__(
        self,
        writer: ApiKeyWriter,
        blobs: BlobStore,
        kms: KmsDirectory,
        keys: Callable[[], ControllerKeys | None],
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.writer = writer
        self.api = writer.api
        self.blobs = blobs
        self.kms = kms
        self._keys = keys
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=KMS_THREADS, thread_name_prefix="kms")
        self._cached: dict[tuple[str, str], CachedUnwraps] = {}
        self._versions: dict[int, tuple[float, KmsProvider, str]] = {}
        self.monotonic: Callable[[], float] = time.monotonic
        """The clock of the key-version memo (``current_kms``)."""

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for cached in self._cached.values():
            cached.cache.clear()  # zeroes every cached data key

    def _with_cache(self, kms: KmsProvider) -> KmsProvider:
        """``kms`` behind its own DEK cache (one per provider and key, made once)."""
        key = (kms.name, kms.key_id)
        cached = self._cached.get(key)
        if cached is None or cached.inner is not kms:
            if cached is not None:
                cached.cache.clear()  # the provider was rebuilt: drop what the old one held
            hits = metrics.DEK_CACHE_LOOKUPS.labels(kms.name, "hit")
            misses = metrics.DEK_CACHE_LOOKUPS.labels(kms.name, "miss")
            cached = CachedUnwraps(
                kms,
                DekCache(DEK_CACHE_ENTRIES, DEK_CACHE_SECONDS),
                lambda hit: (hits if hit else misses).inc(),
            )
            self._cached[key] = cached
        return cached

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking KMS or envelope call in the bounded pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def keys(self) -> ControllerKeys:
        keys = self._keys()
        if keys is None:
            raise ControllerKeysUnavailable(
                "the controller's keys are not open yet: its default KMS key is unavailable"
            )
        return keys

    async def provider(self, ref: KmsRef) -> KmsProvider:
        built = self.kms.built(ref)
        if built is None:
            # Building a provider can be slow (PBKDF2 for the local keyring): off the loop.
            built = await self.off_loop(self.kms.provider, ref)
        return self._with_cache(built)  # the common case: no thread hop per reconcile

    async def current_kms(self, ref: KmsRef) -> tuple[str, str, str]:
        """(provider, key id, key version); the version as the provider said it at most
        ``KEY_VERSION_SECONDS`` ago (each reconcile asks: a hop to the pool for each, and
        a cloud provider caches its answer as briefly anyway)."""
        kms = await self.provider(ref)
        known = self._versions.get(id(kms))
        now = self.monotonic()
        if known is not None and known[1] is kms and now < known[0]:
            return kms.name, kms.key_id, known[2]
        version = await self.off_loop(kms.key_version)
        self._versions[id(kms)] = (now + KEY_VERSION_SECONDS, kms, version)
        return kms.name, kms.key_id, version

    def _fingerprint(self, key: ApiKey, plaintext: bytearray) -> str:
        return fingerprint(
            self.keys().fingerprint_key,
            plaintext,
            namespace=key.metadata.namespace,
            name=key.metadata.name,
            uid=key.metadata.uid,
        )

    def _tag(self, key: ApiKey, version: int, sealed: bytes) -> str:
        return blob_tag(self.keys().fingerprint_key, key.metadata.uid, version, sealed)

    def check_blob(self, key: ApiKey, secret: Secret, version: int) -> bytes:
        """The sealed bytes of entry ``v<version>``, if it carries our tag for this ApiKey
        (uid) and version: written by this controller for this very key, not replayed or
        swapped in (``kube.blobcheck``). Otherwise ``InvalidEnvelope``."""
        try:
            return checked_blob(secret, key.metadata.uid, version, self.keys().fingerprint_key)
        except BlobRefused:
            raise InvalidEnvelope(
                key.metadata.namespace, key.metadata.name, version, "authentication-failed"
            ) from None

    # -- plaintext ------------------------------------------------------------------------
    async def plaintext_from_source(self, key: ApiKey) -> tuple[bytearray, dict[str, str] | None]:
        """The plaintext, and for a ``deleteAfterSeal`` Secret, which object was read."""
        source = key.spec.source
        if source.generate is not None:
            return generate(source.generate), None
        if source.secret_ref is not None:
            return await self._from_secret(key)
        if source.sealed is None:  # unreachable: Source validates exactly one
            raise SourceUnavailable("spec.source names no source")
        plaintext = open_sealed(
            self.keys().recipient,
            source.sealed.ciphertext,
            namespace=key.metadata.namespace,
            name=key.metadata.name,
        )
        return check_size(plaintext, "the sealed value"), None

    async def _from_secret(self, key: ApiKey) -> tuple[bytearray, dict[str, str] | None]:
        ref = key.spec.source.secret_ref
        assert ref is not None  # noqa: S101 - the caller checked
        try:
            secret = await self.api.get(SECRETS, key.metadata.namespace, ref.name)
        except ApiError as exc:
            if exc.not_found:
                raise SourceUnavailable(f"Secret {ref.name} not found") from None
            raise Retry(str(exc)) from None
        if owned_by_controller(secret):
            raise SourceForbidden(
                f"Secret {ref.name} belongs to the secure-keys controller (its type or "
                "managed-by label say so); a secretRef may not name it"
            )
        data = secret.get("data") or {}
        if not isinstance(data, dict) or ref.key not in data:
            raise SourceUnavailable(f"Secret {ref.name} has no key {ref.key}")
        plaintext = decode_secret_value(data[ref.key], secret=ref.name, key=ref.key)
        plaintext = check_size(plaintext, f"Secret {ref.name} key {ref.key}")
        consumed = None
        if ref.delete_after_seal:
            consumed = {
                "name": ref.name,
                "uid": secret["metadata"]["uid"],
                "resourceVersion": secret["metadata"]["resourceVersion"],
            }
        return plaintext, consumed

    async def plaintext_of(self, key: ApiKey, record: VersionRecord, secret: Secret) -> bytearray:
        """The plaintext of a recorded version: its blob checked, then opened with the KMS
        key its record names (a fresh buffer the caller zeroes)."""
        sealed = self.check_blob(key, secret, record.version)
        kms = await self.provider(
            KmsRef.model_validate({"provider": record.kms_provider, "keyId": record.kms_key_id})
        )
        binding = KeyBinding(key.metadata.namespace, key.metadata.name, record.version)
        return await self.off_loop(open_blob, sealed, binding, lambda _wrapped: kms)

    # -- steps ----------------------------------------------------------------------------
    async def new_version(
        self, key: ApiKey, body: Body, secret: Secret, state: KeyState, step: rotation.NewVersion
    ) -> tuple[Secret, Body]:
        kms = await self.provider(key.spec.kms)
        self.keys()  # fail before reading a source we could not fingerprint
        active = state.active
        consumed = None
        if step.from_source or active is None:
            plaintext, consumed = await self.plaintext_from_source(key)
        else:
            plaintext = await self.plaintext_of(key, active, secret)
        try:
            binding = KeyBinding(key.metadata.namespace, key.metadata.name, step.version)
            sealed = await self.off_loop(envelope.seal, plaintext, binding, kms)
            mark = self._fingerprint(key, plaintext)
        finally:
            zero(plaintext)
        extra: dict[str, Any] = {}
        if step.from_source:
            extra["sourceDigest"] = state.source_digest
        if state.rotation_request:
            extra["lastRotationRequest"] = state.rotation_request
        if consumed is not None:
            extra["consumedSource"] = consumed
        failpoint("before-blob-write")
        try:
            sealed_bytes = sealed.to_bytes()
            secret = await self.blobs.write_version(
                key,
                secret,
                step.version,
                sealed_bytes,
                self._tag(key, step.version, sealed_bytes),
                Intent(step.version, extra),
            )
        except ApiError as exc:
            raise write_error(exc) from None  # 409: written meanwhile; re-read and re-plan
        failpoint("blob-written")
        metrics.VERSIONS_SEALED.labels(step.reason).inc()
        record = VersionRecord(
            version=step.version,
            state="Pending",
            created_at=self.clock(),
            fingerprint=mark,
            kms_provider=sealed.wrapped.provider,
            kms_key_id=sealed.wrapped.key_id,
            kms_key_version=sealed.wrapped.key_version,
        )
        records = transitions.record_pending(state.records, record)
        if not step.activates:
            body = await self._write_records(key, body, records, state, extra)
            failpoint("pending-recorded")
            return secret, body
        now = self.clock()
        records = transitions.promote(records, step.version, now)
        body = await self._write_records(key, body, records, state, extra)
        await self._promoted(key, body, state, records, step.version, None, now)
        return secret, body

    async def adopt(
        self, key: ApiKey, body: Body, secret: Secret, state: KeyState, step: rotation.Adopt
    ) -> Body:
        """Record unrecorded blobs instead of deleting them (see ``rotation.Adopt``)."""
        now = self.clock()
        adopted: list[VersionRecord] = []
        unreadable: list[int] = []
        for version in step.versions:
            try:
                blob = self.check_blob(key, secret, version)  # ours, for this uid: no replay
                sealed = envelope.Envelope.from_bytes(blob)
                plaintext = await self.plaintext_of(
                    key,
                    VersionRecord(
                        version=version,
                        state="Archived",
                        created_at=now,
                        fingerprint="",
                        kms_provider=sealed.wrapped.provider,
                        kms_key_id=sealed.wrapped.key_id,
                        kms_key_version=sealed.wrapped.key_version,
                    ),
                    secret,
                )
            except (InvalidEnvelope, envelope.EnvelopeFormatError, ValueError, KeyError):
                unreadable.append(version)
                continue
            try:
                mark = self._fingerprint(key, plaintext)
            finally:
                zero(plaintext)
            pending = version == step.pending
            adopted.append(
                VersionRecord(
                    version=version,
                    state="Pending" if pending else "Archived",
                    created_at=now,
                    fingerprint=mark,
                    kms_provider=sealed.wrapped.provider,
                    kms_key_id=sealed.wrapped.key_id,
                    kms_key_version=sealed.wrapped.key_version,
                    archived_at=None if pending else now,
                )
            )
        if unreadable:
            raise OrphanBlobs(
                f"the blob Secret holds version(s) {unreadable} that status does not record "
                "and that were not written by the controller for this ApiKey (no valid "
                "integrity tag for its uid) or do not open; they are kept. Restore the "
                "status, or remove those entries by hand"
            )
        extra: dict[str, Any] = {}
        intent = Intent.of(secret)
        if intent is not None and step.pending is not None and intent.version == step.pending:
            # A crash (or another replica's 409) after the blob write: record what that
            # write meant, so a first seal's source is consumed as planned and a spec
            # changed meanwhile makes a new version rather than being taken as sealed.
            extra = dict(intent.extra)
        if not state.records:
            # Status was cleared or lost: keep serving what the blobs hold; do not re-read
            # the source (it may be gone) or rotate for a request that may be old.
            extra.setdefault("sourceDigest", state.source_digest)
            if state.rotation_request:
                extra.setdefault("lastRotationRequest", state.rotation_request)
        records = transitions.adopt(state.records, adopted)
        body = await self._write_records(key, body, records, state, extra)
        listed = ", ".join(f"{r.version} ({r.state})" for r in adopted)
        interrupted = bool(state.records) and extra and step.pending is not None
        await self.writer.event(
            body,
            "Normal" if interrupted else "Warning",
            "Adopted",
            f"status did not record version(s) {listed}; recorded them from the blob Secret",
        )
        return body

    async def mark_lost(
        self, key: ApiKey, body: Body, state: KeyState, step: rotation.MarkLost
    ) -> Body:
        records = transitions.mark_lost(state.records, step.versions, self.clock())
        body = await self._write_records(key, body, records, state, {})
        listed = ", ".join(str(v) for v in step.versions)
        await self._warn(
            key,
            body,
            "BlobMissing",
            f"version(s) {listed} lost their sealed blob (the blob Secret was deleted or "
            "edited outside the controller); they are marked Destroyed and no longer served",
            "apikey.blobs.missing",
            step.versions,
        )
        return body

    async def _warn(
        self,
        key: ApiKey,
        body: Body,
        reason: str,
        message: str,
        log_event: str,
        versions: tuple[int, ...],
    ) -> None:
        """A Warning Event on the ApiKey about some of its versions, and its log line."""
        await self.writer.event(body, "Warning", reason, message)
        _log.warning(
            log_event,
            namespace=key.metadata.namespace,
            apikey=key.metadata.name,
            versions=list(versions),
        )

    async def promote(
        self, key: ApiKey, body: Body, state: KeyState, step: rotation.Promote
    ) -> Body:
        now = self.clock()
        records = transitions.promote(state.records, step.version, now)
        body = await self._write_records(key, body, records, state, {})
        await self._promoted(key, body, state, records, step.version, step.previous, now)
        return body

    async def _promoted(
        self,
        key: ApiKey,
        body: Body,
        state: KeyState,
        records: Sequence[VersionRecord],
        version: int,
        previous: int | None,
        now: datetime.datetime,
    ) -> None:
        """Once a version's Active record is written: its metric, Event and log line."""
        failpoint("promoted")
        metrics.VERSIONS_PROMOTED.labels(str(previous is not None).lower()).inc()
        promoted = next(r for r in records if r.version == version)
        if previous is None:
            await self.writer.event(
                body,
                "Normal",
                "Sealed",
                f"version {version} sealed and active ({promoted.fingerprint})",
            )
        else:
            until = format_stamp(now + state.policy.grace_period)
            await self.writer.event(
                body,
                "Normal",
                "Rotated",
                f"version {version} active ({promoted.fingerprint}); version "
                f"{previous} archived, served as previous until {until}",
            )
        _log.info(
            "apikey.promoted",
            namespace=key.metadata.namespace,
            apikey=key.metadata.name,
            version=version,
            previous=previous,
            fingerprint=promoted.fingerprint,
        )

    async def restamp(
        self, key: ApiKey, body: Body, state: KeyState, step: rotation.Restamp
    ) -> Body:
        """Restart the grace period of versions whose ``archivedAt`` has no valid tag.

        Trusting such a time could let a status edit (``archivedAt`` set to 1970) destroy a
        version that clients may still use; taking it as "now" gives them a full grace
        period from the moment the controller noticed.
        """
        tag_key = self.keys().fingerprint_key  # never write the new stamps untagged
        now = self.clock()
        records = transitions.restamp(state.records, step.versions, now)
        records = tag_archived(records, key.metadata.uid, tag_key)
        written = await self._write_records(key, body, records, state, {})
        if written is not body:  # (the same object back: the ApiKey is gone)
            stored = {
                v.get("version"): v.get("archiveTag")
                for v in (written.get("status") or {}).get("versions") or []
                if isinstance(v, dict)
            }
            if any(
                stored.get(r.version) != r.archive_tag
                for r in records
                if r.version in step.versions
            ):
                # An outdated CRD prunes archiveTag: every pass would re-stamp (and report)
                # again, and the version would never be destroyed. Say so and stop.
                raise StatusNotPersisted(
                    "status field versions[].archiveTag was not stored; update the ApiKey CRD"
                )
        body = written
        listed = ", ".join(str(v) for v in step.versions)
        await self._warn(
            key,
            body,
            "ArchivedAtUntrusted",
            f"archivedAt of version(s) {listed} carried no valid integrity tag of the "
            "controller (edited in status, or written before archive tags existed); it is "
            f"re-stamped to {format_stamp(now)}, and the grace period runs from "
            "then",
            "apikey.archived_at.untrusted",
            step.versions,
        )
        return body

    async def rewrap(
        self, key: ApiKey, body: Body, secret: Secret, state: KeyState, step: rotation.Rewrap
    ) -> tuple[Secret, Body]:
        """KEK rotation: rewrap each DEK; the nonce and ciphertext stay byte for byte."""
        kms = await self.provider(key.spec.kms)
        changed: dict[int, tuple[bytes, str]] = {}
        reached: dict[int, str] = {}
        for version in step.versions:
            binding = KeyBinding(key.metadata.namespace, key.metadata.name, version)
            blob = self.check_blob(key, secret, version)
            try:
                sealed = envelope.Envelope.from_bytes(blob)
            except (envelope.EnvelopeFormatError, ValueError, KeyError):
                raise InvalidEnvelope(
                    key.metadata.namespace, key.metadata.name, version, "malformed"
                ) from None
            moved = await self.off_loop(envelope.rewrap, sealed, binding, kms)
            if moved.wrapped.key_version != step.key_version:
                raise KmsCorrupt(
                    kms.name,
                    kms.key_id,
                    f"rewrap of version {version} reached key version "
                    f"{moved.wrapped.key_version}, not {step.key_version}",
                )
            if moved is not sealed:
                moved_bytes = moved.to_bytes()
                changed[version] = (moved_bytes, self._tag(key, version, moved_bytes))
            reached[version] = moved.wrapped.key_version
        if changed and secret is not None:
            try:
                secret = await self.blobs.replace_versions(key, secret, changed)
            except ApiError as exc:
                raise write_error(exc) from None
        failpoint("rewrapped-blobs")
        records = transitions.rewrapped(state.records, reached)
        body = await self._write_records(key, body, records, state, {})
        metrics.VERSIONS_REWRAPPED.inc(len(step.versions))
        listed = ", ".join(str(v) for v in step.versions)
        await self.writer.event(
            body,
            "Normal",
            "Rewrapped",
            f"version(s) {listed} rewrapped to {kms.name}/{kms.key_id} key version "
            f"{step.key_version}; ciphertext unchanged",
        )
        return secret, body

    async def destroy(
        self, key: ApiKey, body: Body, state: KeyState, step: rotation.Destroy
    ) -> Body:
        records = transitions.destroy(state.records, step.versions, self.clock())
        body = await self._write_records(key, body, records, state, {})
        failpoint("destroy-recorded")
        metrics.VERSIONS_DESTROYED.inc(len(step.versions))
        listed = ", ".join(str(v) for v in step.versions)
        await self.writer.event(body, "Normal", "Destroyed", f"version(s) {listed} destroyed")
        return body

    async def delete_blobs(self, key: ApiKey, secret: Secret, step: rotation.DeleteBlobs) -> Secret:
        if secret is None:
            return None
        try:
            secret = await self.blobs.delete_versions(key, secret, step.versions)
        except ApiError as exc:
            raise write_error(exc) from None
        failpoint("blobs-deleted")
        return secret

    async def consume_source(self, key: ApiKey, body: Body) -> Body:
        """Delete a ``deleteAfterSeal`` source, but only the exact Secret that was sealed.

        The uid and resourceVersion read when sealing are kept in status
        (``consumedSource``) and sent as delete preconditions: a Secret re-created or
        changed since is a different value and is left alone. The field is cleared after.
        """
        consumed = key.status.get("consumedSource")
        if not consumed:
            return body
        ref = key.spec.source.secret_ref
        if (
            isinstance(consumed, dict)
            and ref is not None
            and ref.delete_after_seal
            and ref.name == consumed.get("name")
        ):
            try:
                await self.api.delete(
                    SECRETS,
                    key.metadata.namespace,
                    ref.name,
                    preconditions={
                        "uid": str(consumed.get("uid")),
                        "resourceVersion": str(consumed.get("resourceVersion")),
                    },
                )
            except ApiError as exc:
                if not (exc.not_found or exc.conflict):
                    raise Retry(str(exc)) from None
        return await self.writer.patch_status(body, {"consumedSource": None})

    # -- status ---------------------------------------------------------------------------
    async def _write_records(
        self,
        key: ApiKey,
        body: Body,
        records: tuple[VersionRecord, ...],
        state: KeyState,
        extra: dict[str, Any],
    ) -> Body:
        keys = self._keys()
        if keys is not None:
            records = tag_destroyed(records, key.metadata.uid, keys.fingerprint_key)
            records = tag_archived(records, key.metadata.uid, keys.fingerprint_key)
        elif any(awaits_archive_tag(r) for r in records):
            # An untagged archivedAt would be re-stamped (later than the truth) on the next
            # pass: wait for the keys rather than write one.
            raise ControllerKeysUnavailable(
                "archiving a version needs the controller's keys (to tag archivedAt), and "
                "its default KMS key has not opened them yet"
            )
        status = summary(key, records, state.blobs, state.policy, self.clock())
        status.update(extra)
        body = await self.writer.patch_status(body, status)
        written = body.get("status") or {}
        if any(written.get(k) != v for k, v in extra.items()):
            # The API server pruned a field we rely on: an outdated CRD. Stop rather than
            # mint a new version on every pass.
            raise StatusNotPersisted(
                f"status fields {sorted(extra)} were not stored; update the ApiKey CRD"
            )
        return body
