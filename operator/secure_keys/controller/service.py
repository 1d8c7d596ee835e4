"""Reconcile one ApiKey: read it and its blob Secret, plan one step, execute it, repeat.

The planner (``rotation.plan``) decides; this module does the I/O in the order that
makes each step crash-safe (see ``rotation``'s docstring) and reports what happened in
status conditions and Kubernetes Events. Every write carries the resourceVersion it was
computed from, so a concurrent change makes it fail with 409 and the key is reconciled
again from fresh reads rather than overwriting someone else's change.

Failures are classified:

* ``Retry`` (KMS unreachable, source Secret missing, write conflict): the key is queued
  again with backoff, and Ready=False says why;
* permanent (invalid spec, sealed value for another key, KMS not configured): Ready=False
  with the reason, no retry until the object changes.

No plaintext, DEK or sealed value is ever put in a status field, an Event, a log line or
an exception message; status and Events carry version numbers and keyed fingerprints.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from secure_keys.controller import metrics, rotation
from secure_keys.controller.conditions import get_condition, set_condition
from secure_keys.controller.config import KmsDirectory, KmsNotConfigured
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.events import COMPONENT, EventType, post_event
from secure_keys.controller.failpoints import failpoint
from secure_keys.controller.models import (
    FINALIZER,
    GROUP,
    VERSION,
    ApiKey,
    InvalidSpec,
    KmsRef,
    source_digest,
)
from secure_keys.controller.rotation import KeyState, VersionRecord
from secure_keys.controller.sources import SourceUnavailable, decode_secret_value, generate
from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsCorrupt, KmsError, SealedSourceInvalid
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import zero
from secure_keys.core.schedule import InvalidSchedule, RotationPolicy
from secure_keys.core.sealing import open_sealed
from secure_keys.kube.client import APIKEYS, SECRETS, ApiError, KubeApi

_log = structlog.get_logger("secure_keys.controller")

BLOB_SECRET_TYPE = "securekeys.io/sealed-versions"  # noqa: S105 - a Secret type
LABEL_APIKEY = "securekeys.io/apikey"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "secure-keys"
MAX_STEPS = 16


class Retry(Exception):
    """Try this key again later, with backoff."""


class WriteRejected(RuntimeError):
    """The API server refused a write as invalid (400/422): retrying cannot help."""


def _write_error(exc: ApiError) -> Exception:
    if exc.status in (400, 422):
        return WriteRejected(f"the API server rejected a write: {exc.message}")
    return Retry(str(exc))


class StatusNotPersisted(RuntimeError):
    """A status write came back without fields the controller depends on."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def blob_secret_name(apikey: str) -> str:
    """The Secret holding an ApiKey's sealed versions (fits the 253-character limit)."""
    name = f"{apikey}.sealed"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(apikey.encode()).hexdigest()[:16]
    return f"{apikey[:200]}.{digest}.sealed"


_BLOB_KEY = re.compile(r"v[1-9][0-9]{0,9}")


def blob_key(version: int) -> str:
    return f"v{version}"


def blob_versions(secret: dict[str, Any] | None) -> frozenset[int]:
    if secret is None:
        return frozenset()
    return frozenset(int(key[1:]) for key in secret.get("data") or {} if _BLOB_KEY.fullmatch(key))


@dataclass
class Outcome:
    wake_at: datetime.datetime | None


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        kms: KmsDirectory,
        keys: ControllerKeys,
        *,
        clock: Callable[[], datetime.datetime] = utcnow,
        instance: str = COMPONENT,
    ) -> None:
        self.api = api
        self.kms = kms
        self.keys = keys
        self.clock = clock
        self.instance = instance
        self._written: dict[tuple[str, str, str], str] = {}

    # -- entry point ----------------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> Outcome:
        try:
            body = await self.api.get(APIKEYS, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                self.forget(namespace, name)
                return Outcome(None)
            raise Retry(str(exc)) from None
        log = _log.bind(namespace=namespace, apikey=name)
        if body["metadata"].get("deletionTimestamp"):
            # Shred whatever the spec says: a spec this version cannot parse must not
            # leave a deleted key Terminating with its blobs in place.
            await self._shred(body)
            return Outcome(None)
        try:
            key = ApiKey.parse(body)
        except InvalidSpec as exc:
            await self._fail(body, "InvalidSpec", str(exc))
            return Outcome(None)
        if FINALIZER not in key.metadata.finalizers:
            body = await self._add_finalizer(key, body)
            key = ApiKey.parse(body)
        try:
            policy = RotationPolicy.from_spec(key.spec.rotation)
        except InvalidSchedule as exc:
            await self._fail(body, "InvalidRotation", str(exc))
            return Outcome(None)
        secret = await self._read_blobs(key)
        current_kms = await self._current_kms(key)
        for _ in range(MAX_STEPS):
            try:
                state = self._state(key, secret, policy, current_kms)
            except (KeyError, TypeError, ValueError) as exc:
                # A hand-edited or foreign status: stop rather than guess what is served.
                await self._fail(body, "StatusInvalid", f"status.versions is unusable: {exc}")
                return Outcome(None)
            now = self.clock()
            step = rotation.plan(state, now)
            log.debug("apikey.step", step=type(step).__name__)
            try:
                if isinstance(step, rotation.Idle):
                    await self._settle(key, body, state, policy)
                    return Outcome(step.wake_at)
                if isinstance(step, rotation.Blocked):
                    await self._fail(body, step.reason, step.message)
                    return Outcome(None)
                if isinstance(step, rotation.DeleteBlobs):
                    secret = await self._delete_blobs(key, secret, step.versions)
                    continue
                if isinstance(step, rotation.NewVersion):
                    secret, body = await self._new_version(key, body, secret, state, step)
                elif isinstance(step, rotation.Rewrap):
                    secret, body = await self._rewrap(key, body, secret, state, policy, step)
                elif isinstance(step, rotation.Promote):
                    # Re-read the blobs: another writer (a second replica during a rolling
                    # update) may have removed the one we are about to serve.
                    secret = await self._read_blobs(key)
                    if step.version not in blob_versions(secret):
                        continue
                    body = await self._promote(key, body, state, policy, step)
                else:
                    body = await self._destroy(key, body, state, policy, step)
            except KmsNotConfigured as exc:
                await self._fail(body, "KmsNotConfigured", str(exc))
                return Outcome(None)
            except KmsError as exc:
                reason = "KmsUnavailable" if exc.retryable else "KmsRefused"
                await self._fail(body, reason, str(exc))
                raise Retry(str(exc)) from None
            except SourceUnavailable as exc:
                await self._fail(body, "SourceUnavailable", str(exc))
                raise Retry(str(exc)) from None
            except SealedSourceInvalid as exc:
                await self._fail(body, "SealedSourceInvalid", str(exc))
                return Outcome(None)
            except InvalidEnvelope as exc:
                await self._fail(body, "BlobInvalid", str(exc))
                return Outcome(None)
            except StatusNotPersisted as exc:
                await self._fail(body, "StatusNotPersisted", str(exc))
                return Outcome(None)
            except WriteRejected as exc:
                await self._fail(body, "WriteRejected", str(exc))
                return Outcome(None)
            key = ApiKey.parse(body)
        raise Retry(f"no fixed point after {MAX_STEPS} steps")

    # -- reads ----------------------------------------------------------------------------
    async def _read_blobs(self, key: ApiKey) -> dict[str, Any] | None:
        try:
            return await self.api.get(
                SECRETS, key.metadata.namespace, blob_secret_name(key.metadata.name)
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            raise Retry(str(exc)) from None

    async def _current_kms(self, key: ApiKey) -> tuple[str, str, str] | None:
        """(provider, key id, key version) of the ApiKey's KMS key; None if not usable now
        (sealing reports why; rewrapping simply waits)."""
        try:
            kms = await self._provider(key.spec.kms)
            return kms.name, kms.key_id, kms.key_version()
        except (KmsError, KmsNotConfigured):
            return None

    def _state(
        self,
        key: ApiKey,
        secret: dict[str, Any] | None,
        policy: RotationPolicy,
        current_kms: tuple[str, str, str] | None = None,
    ) -> KeyState:
        records = tuple(
            rotation.VersionRecord.from_status(item) for item in key.status.get("versions") or []
        )
        active = [r for r in records if r.state == "Active"]
        next_rotation = None
        if active and active[0].activated_at is not None:
            next_rotation = policy.next_rotation(active[0].activated_at)
        return KeyState(
            records=records,
            blobs=blob_versions(secret),
            policy=policy,
            source_digest=source_digest(key.spec),
            recorded_source_digest=key.status.get("sourceDigest"),
            rotation_request=key.rotation_request,
            honoured_request=key.status.get("lastRotationRequest"),
            next_rotation=next_rotation,
            source_mints=key.spec.source.kind == "generate",
            current_kms=current_kms,
        )

    # -- steps ----------------------------------------------------------------------------
    async def _plaintext_from_source(self, key: ApiKey) -> tuple[bytearray, dict[str, str] | None]:
        """The plaintext, and for a ``deleteAfterSeal`` Secret, which object was read."""
        source = key.spec.source
        if source.generate is not None:
            return generate(source.generate), None
        if source.secret_ref is not None:
            ref = source.secret_ref
            try:
                secret = await self.api.get(SECRETS, key.metadata.namespace, ref.name)
            except ApiError as exc:
                if exc.not_found:
                    raise SourceUnavailable(f"Secret {ref.name} not found") from None
                raise Retry(str(exc)) from None
            data = secret.get("data") or {}
            if ref.key not in data:
                raise SourceUnavailable(f"Secret {ref.name} has no key {ref.key}")
            consumed = None
            if ref.delete_after_seal:
                consumed = {
                    "name": ref.name,
                    "uid": secret["metadata"]["uid"],
                    "resourceVersion": secret["metadata"]["resourceVersion"],
                }
            return decode_secret_value(data[ref.key], secret=ref.name, key=ref.key), consumed
        if source.sealed is None:  # unreachable: Source validates exactly one
            raise SourceUnavailable("spec.source names no source")
        plaintext = open_sealed(
            self.keys.recipient,
            source.sealed.ciphertext,
            namespace=key.metadata.namespace,
            name=key.metadata.name,
        )
        return plaintext, None

    async def _provider(self, ref: KmsRef) -> KmsProvider:
        built = self.kms.built(ref)
        if built is not None:
            return built  # the common case: no thread hop on every reconcile
        # Building a provider can be slow (PBKDF2 for the local keyring): off the loop.
        return await asyncio.to_thread(self.kms.provider, ref)

    async def _plaintext_of(
        self, key: ApiKey, record: VersionRecord, secret: dict[str, Any] | None
    ) -> bytearray:
        data = (secret or {}).get("data") or {}
        blob = base64.b64decode(data[blob_key(record.version)])
        kms = await self._provider(
            KmsRef.model_validate({"provider": record.kms_provider, "keyId": record.kms_key_id})
        )
        binding = KeyBinding(key.metadata.namespace, key.metadata.name, record.version)
        return envelope.open(blob, binding, kms)

    async def _new_version(
        self,
        key: ApiKey,
        body: dict[str, Any],
        secret: dict[str, Any] | None,
        state: KeyState,
        step: rotation.NewVersion,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        kms = await self._provider(key.spec.kms)
        active = state.active
        consumed = None
        if step.from_source or active is None:
            plaintext, consumed = await self._plaintext_from_source(key)
        else:
            plaintext = await self._plaintext_of(key, active, secret)
        try:
            binding = KeyBinding(key.metadata.namespace, key.metadata.name, step.version)
            sealed = envelope.seal(plaintext, binding, kms)
            mark = fingerprint(self.keys.fingerprint_key, plaintext)
        finally:
            zero(plaintext)
        blob = base64.b64encode(sealed.to_bytes()).decode()
        failpoint("before-blob-write")
        secret = await self._write_blob(key, secret, step.version, blob)
        failpoint("blob-written")
        metrics.VERSIONS_SEALED.labels(step.reason).inc()
        now = self.clock()
        record = VersionRecord(
            version=step.version,
            state="Pending",
            created_at=now,
            fingerprint=mark,
            kms_provider=sealed.wrapped.provider,
            kms_key_id=sealed.wrapped.key_id,
            kms_key_version=sealed.wrapped.key_version,
        )
        records = rotation.record_pending(state.records, record)
        extra: dict[str, Any] = {}
        if step.from_source:
            extra["sourceDigest"] = state.source_digest
        if state.rotation_request:
            extra["lastRotationRequest"] = state.rotation_request
        if consumed is not None:
            extra["consumedSource"] = consumed
        body = await self._write_status(key, body, records, state.policy, extra)
        written = body.get("status") or {}
        if any(written.get(k) != v for k, v in extra.items()):
            # The API server pruned a field we rely on: an outdated CRD. Stop rather than
            # mint a new version on every pass.
            raise StatusNotPersisted(
                f"status fields {sorted(extra)} were not stored; update the ApiKey CRD"
            )
        failpoint("pending-recorded")
        return secret, body

    async def _promote(
        self,
        key: ApiKey,
        body: dict[str, Any],
        state: KeyState,
        policy: RotationPolicy,
        step: rotation.Promote,
    ) -> dict[str, Any]:
        now = self.clock()
        records = rotation.promote(state.records, step.version, now)
        body = await self._write_status(key, body, records, policy, {})
        failpoint("promoted")
        metrics.VERSIONS_PROMOTED.labels(str(step.previous is not None).lower()).inc()
        promoted = next(r for r in records if r.version == step.version)
        if step.previous is None:
            await self._event(
                body,
                "Normal",
                "Sealed",
                f"version {step.version} sealed and active ({promoted.fingerprint})",
            )
        else:
            until = rotation.format_stamp(now + policy.grace_period)
            await self._event(
                body,
                "Normal",
                "Rotated",
                f"version {step.version} active ({promoted.fingerprint}); version "
                f"{step.previous} archived, served as previous until {until}",
            )
        _log.info(
            "apikey.promoted",
            namespace=key.metadata.namespace,
            apikey=key.metadata.name,
            version=step.version,
            previous=step.previous,
            fingerprint=promoted.fingerprint,
        )
        return body

    async def _rewrap(
        self,
        key: ApiKey,
        body: dict[str, Any],
        secret: dict[str, Any] | None,
        state: KeyState,
        policy: RotationPolicy,
        step: rotation.Rewrap,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """KEK rotation: rewrap each DEK; the nonce and ciphertext stay byte for byte."""
        kms = await self._provider(key.spec.kms)
        data = (secret or {}).get("data") or {}
        changed: dict[str, str] = {}
        reached: dict[int, str] = {}
        for version in step.versions:
            binding = KeyBinding(key.metadata.namespace, key.metadata.name, version)
            try:
                sealed = envelope.Envelope.from_bytes(base64.b64decode(data[blob_key(version)]))
            except envelope.EnvelopeFormatError as exc:
                raise InvalidEnvelope(
                    key.metadata.namespace, key.metadata.name, version, exc.reason
                ) from None
            moved = await asyncio.to_thread(envelope.rewrap, sealed, binding, kms)
            if moved.wrapped.key_version != step.key_version:
                raise KmsCorrupt(
                    kms.name,
                    kms.key_id,
                    f"rewrap of version {version} reached key version "
                    f"{moved.wrapped.key_version}, not {step.key_version}",
                )
            if moved is not sealed:
                changed[blob_key(version)] = base64.b64encode(moved.to_bytes()).decode()
            reached[version] = moved.wrapped.key_version
        if changed and secret is not None:
            secret = await self._patch_blobs(key, secret, dict(changed))
        failpoint("rewrapped-blobs")
        records = rotation.rewrapped(state.records, reached)
        body = await self._write_status(key, body, records, policy, {})
        metrics.VERSIONS_REWRAPPED.inc(len(step.versions))
        listed = ", ".join(str(v) for v in step.versions)
        await self._event(
            body,
            "Normal",
            "Rewrapped",
            f"version(s) {listed} rewrapped to {kms.name}/{kms.key_id} key version "
            f"{step.key_version}; ciphertext unchanged",
        )
        return secret, body

    async def _destroy(
        self,
        key: ApiKey,
        body: dict[str, Any],
        state: KeyState,
        policy: RotationPolicy,
        step: rotation.Destroy,
    ) -> dict[str, Any]:
        records = rotation.destroy(state.records, step.versions, self.clock())
        body = await self._write_status(key, body, records, policy, {})
        failpoint("destroy-recorded")
        metrics.VERSIONS_DESTROYED.inc(len(step.versions))
        listed = ", ".join(str(v) for v in step.versions)
        await self._event(body, "Normal", "Destroyed", f"version(s) {listed} destroyed")
        return body

    async def _consume_source(self, key: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
        """Delete a ``deleteAfterSeal`` source, but only the exact Secret that was sealed.

        The uid and resourceVersion read when sealing are kept in status
        (``consumedSource``) and sent as delete preconditions: a Secret re-created or
        changed since is a different value and is left alone. The field is cleared after.
        """
        consumed = key.status.get("consumedSource")
        if not consumed:
            return body
        ref = key.spec.source.secret_ref
        if ref is not None and ref.delete_after_seal and ref.name == consumed.get("name"):
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
        return await self._patch_status(body, {"consumedSource": None})

    # -- our own writes ---------------------------------------------------------------------
    def _remember(self, apikey: dict[str, Any]) -> dict[str, Any]:
        metadata = apikey["metadata"]
        self._written[("apikey", metadata["namespace"], metadata["name"])] = metadata[
            "resourceVersion"
        ]
        return apikey

    def _own(self, secret: dict[str, Any], key: ApiKey) -> dict[str, Any]:
        self._written[("blobs", key.metadata.namespace, key.metadata.name)] = secret["metadata"][
            "resourceVersion"
        ]
        return secret

    def wrote(self, kind: str, namespace: str, name: str, resource_version: str) -> bool:
        """Whether this exact object version is one this reconciler wrote itself.

        A watch event for it carries nothing the reconciler does not already know, so the
        operator need not queue the key again.
        """
        return self._written.get((kind, namespace, name)) == resource_version

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop(("apikey", namespace, name), None)
        self._written.pop(("blobs", namespace, name), None)

    # -- writes ---------------------------------------------------------------------------
    def _owner(self, key: ApiKey) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiKey",
            "name": key.metadata.name,
            "uid": key.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    async def _write_blob(
        self, key: ApiKey, secret: dict[str, Any] | None, version: int, blob: str
    ) -> dict[str, Any]:
        namespace, name = key.metadata.namespace, blob_secret_name(key.metadata.name)
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": BLOB_SECRET_TYPE,
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {LABEL_APIKEY: key.metadata.name, LABEL_MANAGED_BY: MANAGED_BY},
                    "ownerReferences": [self._owner(key)],
                },
                "data": {blob_key(version): blob},
            }
            try:
                return self._own(await self.api.create(SECRETS, namespace, body), key)
            except ApiError as exc:
                raise _write_error(exc) from None  # 409: created meanwhile; re-read and re-plan
        return await self._patch_blobs(key, secret, {blob_key(version): blob})

    async def _patch_blobs(
        self, key: ApiKey, secret: dict[str, Any], data: dict[str, str | None]
    ) -> dict[str, Any]:
        """Set (or, with None, remove) entries of the blob Secret, if it has not changed."""
        patch = {
            "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
            "data": data,
        }
        try:
            written = await self.api.patch(
                SECRETS, key.metadata.namespace, secret["metadata"]["name"], patch
            )
        except ApiError as exc:
            raise _write_error(exc) from None
        return self._own(written, key)

    async def _delete_blobs(
        self, key: ApiKey, secret: dict[str, Any] | None, versions: tuple[int, ...]
    ) -> dict[str, Any] | None:
        if secret is None:
            return None
        secret = await self._patch_blobs(key, secret, {blob_key(v): None for v in versions})
        failpoint("blobs-deleted")
        return secret

    def _summary(
        self,
        key: ApiKey,
        records: tuple[VersionRecord, ...],
        policy: RotationPolicy,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        now = self.clock()
        generation = key.metadata.generation
        active = [r for r in records if r.state == "Active"]
        conditions = list(key.status.get("conditions") or [])
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
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "versions": [r.to_status() for r in rotation.prune_destroyed(records)],
            "conditions": conditions,
            "currentVersion": active[0].version if active else None,
            "nextRotation": None,
        }
        if active and active[0].activated_at is not None:
            upcoming = policy.next_rotation(active[0].activated_at)
            if upcoming is not None:
                status["nextRotation"] = rotation.format_stamp(upcoming)
        status.update(extra)
        return status

    async def _write_status(
        self,
        key: ApiKey,
        body: dict[str, Any],
        records: tuple[VersionRecord, ...],
        policy: RotationPolicy,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        status = self._summary(key, records, policy, extra)
        return await self._patch_status(body, status)

    async def _patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        patch = {"metadata": {"resourceVersion": metadata["resourceVersion"]}, "status": status}
        try:
            written = await self.api.patch(
                APIKEYS, metadata["namespace"], metadata["name"], patch, subresource="status"
            )
        except ApiError as exc:
            if exc.not_found:
                return body
            raise _write_error(exc) from None
        self._remember(written)
        return written

    async def _settle(
        self, key: ApiKey, body: dict[str, Any], state: KeyState, policy: RotationPolicy
    ) -> None:
        """At a fixed point: bring the summary fields (conditions, generation) up to date."""
        if state.active is not None and key.status.get("consumedSource"):
            body = await self._consume_source(key, body)
            key = ApiKey.parse(body)
        status = self._summary(key, state.records, policy, {})
        current = key.status
        if all(current.get(k) == v for k, v in status.items()):
            return
        await self._patch_status(body, status)

    async def _fail(self, body: dict[str, Any], reason: str, message: str) -> None:
        """Ready=False with ``reason``; an Event when the reason is new (no Event storms).

        ``body`` may be older than the object (a step failed after writing it), so a
        conflict is answered by reading the object again, once.
        """
        metrics.FAILURES.labels(reason).inc()
        _log.warning(
            "apikey.failed",
            namespace=body["metadata"]["namespace"],
            apikey=body["metadata"]["name"],
            reason=reason,
            message=message,
        )
        try:
            await self._report(body, reason, message)
        except Retry:
            metadata = body["metadata"]
            try:
                fresh = await self.api.get(APIKEYS, metadata["namespace"], metadata["name"])
            except ApiError as exc:
                raise Retry(str(exc)) from None
            await self._report(fresh, reason, message)

    async def _report(self, body: dict[str, Any], reason: str, message: str) -> None:
        metadata = body["metadata"]
        status = body.get("status") or {}
        conditions = list(status.get("conditions") or [])
        ready = get_condition(conditions, "Ready")
        conditions = set_condition(
            conditions,
            "Ready",
            "False",
            reason,
            message,
            generation=int(metadata.get("generation", 1)),
            now=self.clock(),
        )
        if ready is not None and ready.get("reason") == reason and ready.get("message") == message:
            return
        await self._patch_status(
            body,
            {"conditions": conditions, "observedGeneration": int(metadata.get("generation", 1))},
        )
        await self._event(body, "Warning", reason, message)

    async def _add_finalizer(self, key: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
        patch = {
            "metadata": {
                "resourceVersion": key.metadata.resource_version,
                "finalizers": [*key.metadata.finalizers, FINALIZER],
            }
        }
        try:
            return self._remember(
                await self.api.patch(APIKEYS, key.metadata.namespace, key.metadata.name, patch)
            )
        except ApiError as exc:
            raise _write_error(exc) from None

    async def _shred(self, body: dict[str, Any]) -> None:
        """Finalizer: erase every blob (crypto-shredding), delete the Secret, let go."""
        metadata = body["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        namespace, name = metadata["namespace"], metadata["name"]
        secret_name = blob_secret_name(name)
        try:
            secret: dict[str, Any] | None = await self.api.get(SECRETS, namespace, secret_name)
        except ApiError as exc:
            if not exc.not_found:
                raise Retry(str(exc)) from None
            secret = None
        if secret is not None:
            versions = sorted(blob_versions(secret))
            try:
                if secret.get("data"):
                    patch = {
                        "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
                        "data": dict.fromkeys(secret["data"]),
                    }
                    await self.api.patch(SECRETS, namespace, secret_name, patch)
                await self.api.delete(SECRETS, namespace, secret_name)
            except ApiError as exc:
                if not exc.not_found:
                    raise Retry(str(exc)) from None
            await self._event(
                body, "Normal", "Shredded", f"sealed versions {versions} erased on deletion"
            )
        remaining = [f for f in finalizers if f != FINALIZER]
        patch_ops = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": metadata["resourceVersion"],
            },
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]
        try:
            await self.api.patch(APIKEYS, namespace, name, patch_ops, kind="json")
        except ApiError as exc:
            if not exc.not_found:
                raise Retry(str(exc)) from None

    async def _event(
        self, body: dict[str, Any], type_: EventType, reason: str, message: str
    ) -> None:
        await post_event(self.api, body, "ApiKey", type_, reason, message, instance=self.instance)
