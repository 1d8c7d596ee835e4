"""Reconcile one ApiKey: read it and its blob Secret, plan one step, execute it, repeat.

This module drives a reconcile and decides what each failure means; the pieces it drives
each own one job:

* ``rotation.plan`` (pure) picks the next step;
* ``projection`` (pure) maps stored objects to the planner's state and back to status;
* ``steps.StepExecutor`` executes a step in its crash-safe write order, KMS calls off
  the event loop;
* ``blobs.BlobStore`` reads and writes the blob Secret, and only one this ApiKey owns;
* ``status.ApiKeyWriter`` patches the ApiKey and posts Events.

Failures are classified:

* retried with backoff (KMS unreachable, source Secret missing or unusable, the
  controller's own keys not open yet, write conflict), with Ready=False saying why;
* permanent until the object changes (invalid spec, a foreign Secret under the blob
  Secret's name, a sealed value for another key, KMS not configured, a source the
  controller may not read): Ready=False with the reason.

Whatever goes wrong with one ApiKey ends in a Ready=False condition and a Warning Event
(one per new reason), never in a traceback loop: an error nobody foresaw is reported as
``InternalError`` by its type alone, and retried with backoff.

No plaintext, DEK or sealed value is ever put in a status field, an Event, a log line or
an exception message; status and Events carry version numbers and keyed fingerprints.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from secure_keys.controller import metrics, projection, rotation
from secure_keys.controller.blobs import (
    BLOB_SECRET_TYPE,
    LABEL_APIKEY,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    BlobStore,
    ForeignBlobSecret,
    blob_secret_name,
    blob_versions,
)
from secure_keys.controller.config import KmsDirectory, KmsNotConfigured
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.events import COMPONENT
from secure_keys.controller.models import FINALIZER, ApiKey, InvalidSpec
from secure_keys.controller.schedule import InvalidSchedule, RotationPolicy
from secure_keys.controller.sources import SourceForbidden, SourceInvalid, SourceUnavailable
from secure_keys.controller.status import (
    ApiKeyWriter,
    Retry,
    StatusNotPersisted,
    WriteRejected,
)
from secure_keys.controller.steps import ControllerKeysUnavailable, OrphanBlobs, StepExecutor
from secure_keys.core.errors import InvalidEnvelope, KmsError, SealedSourceInvalid
from secure_keys.kube.client import APIKEYS, ApiError, KubeApi

__all__ = [
    "BLOB_SECRET_TYPE",
    "LABEL_APIKEY",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "Outcome",
    "Reconciler",
    "Retry",
    "blob_secret_name",
    "blob_versions",
]

_log = structlog.get_logger("secure_keys.controller")
MAX_STEPS = 16


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class Outcome:
    wake_at: datetime.datetime | None


class _Failed(Exception):
    """A classified failure: report ``reason``; retry with backoff if ``retry``."""

    def __init__(self, reason: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


def classify(exc: Exception) -> _Failed | None:
    """The reason (and whether to retry) a step's exception is reported with. Pure."""
    if isinstance(exc, ControllerKeysUnavailable):
        return _Failed("ControllerKeysUnavailable", str(exc), retry=True)
    if isinstance(exc, KmsNotConfigured):
        return _Failed("KmsNotConfigured", str(exc), retry=False)
    if isinstance(exc, KmsError):
        reason = "KmsUnavailable" if exc.retryable else "KmsRefused"
        return _Failed(reason, str(exc), retry=True)
    table: tuple[tuple[type[Exception], str, bool], ...] = (
        (SourceUnavailable, "SourceUnavailable", True),
        (SourceInvalid, "SourceInvalid", True),
        (SourceForbidden, "SourceForbidden", False),
        (SealedSourceInvalid, "SealedSourceInvalid", False),
        (InvalidEnvelope, "BlobInvalid", False),
        (ForeignBlobSecret, "BlobSecretConflict", False),
        (OrphanBlobs, "OrphanBlobs", False),
        (StatusNotPersisted, "StatusNotPersisted", False),
        (WriteRejected, "WriteRejected", False),
    )
    for kind, reason, retry in table:
        if isinstance(exc, kind):
            return _Failed(reason, str(exc), retry=retry)
    return None


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        kms: KmsDirectory,
        keys: ControllerKeys | None,
        *,
        clock: Callable[[], datetime.datetime] = utcnow,
        instance: str = COMPONENT,
    ) -> None:
        self.api = api
        self.kms = kms
        self.keys = keys
        """The controller's own keys; None until its default KMS key can open them."""
        self.clock = clock
        self.writer = ApiKeyWriter(api, instance=instance)
        self.blobs = BlobStore(api)
        self.steps = StepExecutor(self.writer, self.blobs, kms, lambda: self.keys, clock)

    def close(self) -> None:
        self.steps.close()

    # -- entry point ----------------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> Outcome:
        try:
            body = await self.api.get(APIKEYS, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                self.forget(namespace, name)
                return Outcome(None)
            raise Retry(str(exc)) from None
        try:
            return await self._reconcile(body)
        except Retry:
            raise
        except _Failed as failed:
            await self._fail(body, failed.reason, failed.message)
            if failed.retry:
                raise Retry(failed.message) from None
            return Outcome(None)
        except Exception as exc:
            # Nothing foreseen this: report it by type (its message may quote input) and
            # retry with backoff, rather than crash the worker or loop on a traceback.
            _log.error(
                "apikey.internal_error",
                namespace=namespace,
                apikey=name,
                error=type(exc).__name__,
            )
            await self._fail(
                body,
                "InternalError",
                f"the controller failed on this ApiKey ({type(exc).__name__}); "
                "see the controller log",
            )
            raise Retry(type(exc).__name__) from None

    async def _reconcile(self, body: dict[str, Any]) -> Outcome:
        if body["metadata"].get("deletionTimestamp"):
            # Shred whatever the spec says: a spec this version cannot parse must not
            # leave a deleted key Terminating with its blobs in place.
            await self._shred(body)
            return Outcome(None)
        try:
            key = ApiKey.parse(body)
        except InvalidSpec as exc:
            raise _Failed("InvalidSpec", str(exc), retry=False) from None
        # A key the controller has never reconciled (no finalizer yet) with no version in
        # status has no blob Secret of ours: the finalizer is always written before the
        # first blob. Its first step is then planned without reading the Secret (a read
        # per new key, and a 404), and the assumption is checked before anything is
        # reported: the blob write is a create, which fails rather than overwrite a Secret
        # that is there after all (ours, with the finalizer removed by hand, or foreign),
        # and a failing step reads the Secret and plans again if it exists.
        assumed_absent = FINALIZER not in key.metadata.finalizers and not key.status.get("versions")
        if FINALIZER not in key.metadata.finalizers:
            body = await self.writer.add_finalizer(body)
            key = ApiKey.parse(body)
        try:
            policy = RotationPolicy.from_spec(key.spec.rotation)
        except InvalidSchedule as exc:
            raise _Failed("InvalidRotation", str(exc), retry=False) from None
        secret = None if assumed_absent else await self._read_blobs(key)
        current_kms = await self._current_kms(key)
        log = _log.bind(namespace=key.metadata.namespace, apikey=key.metadata.name)
        reread = False
        for _ in range(MAX_STEPS):
            try:
                tag_key = self.keys.fingerprint_key if self.keys is not None else None
                state = projection.key_state(key, secret, policy, current_kms, tag_key)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # A hand-edited or foreign status: stop rather than guess what is served.
                raise _Failed(
                    "StatusInvalid", f"status.versions is unusable: {exc}", retry=False
                ) from None
            step = rotation.plan(state, self.clock())
            log.debug("apikey.step", step=type(step).__name__)
            blob_writes = self._blob_writes(key)
            try:
                if isinstance(step, rotation.Idle):
                    if assumed_absent:  # (a key with no version is never idle: check anyway)
                        assumed_absent = False
                        secret = await self._read_blobs(key)
                        continue
                    if not reread and state.active is not None and key.status.get("consumedSource"):
                        # Deleting the source cannot be undone: plan it from the blob
                        # Secret as stored now, not as this pass wrote it (a first version
                        # is recorded Active with no re-read before it).
                        reread = True
                        secret = await self._read_blobs(key)
                        continue
                    if self.keys is not None:
                        # Read at its fixed point with the keys open (without them, the
                        # requeue when they open reconciles it again anyway).
                        self.writer.settled(body)
                    await self._settle(key, body, state, secret)
                    return Outcome(step.wake_at)
                body, secret = await self._execute(key, body, secret, state, step)
            except Exception as exc:
                if assumed_absent and self._blob_writes(key) == blob_writes:
                    # The step failed before writing the Secret: check the assumption.
                    assumed_absent = False
                    secret = await self._read_blobs(key)
                    if secret is not None:
                        continue  # it was there: plan again from what is stored
                if isinstance(exc, (Retry, _Failed)):
                    raise
                failed = classify(exc)
                if failed is None:
                    raise
                raise failed from None
            assumed_absent = False  # the step wrote the Secret, or needed none
            key = ApiKey.parse(body)
        raise Retry(f"no fixed point after {MAX_STEPS} steps")

    async def _execute(
        self,
        key: ApiKey,
        body: dict[str, Any],
        secret: dict[str, Any] | None,
        state: rotation.KeyState,
        step: rotation.Step,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        steps = self.steps
        match step:
            case rotation.DeleteBlobs():
                return body, await steps.delete_blobs(key, secret, step)
            case rotation.Adopt():
                return await steps.adopt(key, body, secret, state, step), secret
            case rotation.MarkLost():
                return await steps.mark_lost(key, body, state, step), secret
            case rotation.NewVersion():
                secret, body = await steps.new_version(key, body, secret, state, step)
                return body, secret
            case rotation.Rewrap():
                secret, body = await steps.rewrap(key, body, secret, state, step)
                return body, secret
            case rotation.Promote():
                # Re-read the blobs: another writer (a second replica during a rolling
                # update) may have removed the one we are about to serve.
                secret = await self._read_blobs(key)
                if step.version not in blob_versions(secret):
                    return body, secret
                steps.check_blob(key, secret, step.version)  # never serve a swapped blob
                return await steps.promote(key, body, state, step), secret
            case rotation.Destroy():
                return await steps.destroy(key, body, state, step), secret
            case rotation.Restamp():
                return await steps.restamp(key, body, state, step), secret
            case _:
                raise AssertionError(f"unexpected step {step!r}")

    # -- reads ----------------------------------------------------------------------------
    async def _read_blobs(self, key: ApiKey) -> dict[str, Any] | None:
        try:
            return await self.blobs.read(key)
        except ForeignBlobSecret as exc:
            raise _Failed("BlobSecretConflict", str(exc), retry=False) from None
        except ApiError as exc:
            raise Retry(str(exc)) from None

    def _blob_writes(self, key: ApiKey) -> tuple[str, ...]:
        """The blob Secret versions written last for this key (changed by a write)."""
        return self.blobs.written(key.metadata.namespace, key.metadata.name)

    async def _current_kms(self, key: ApiKey) -> tuple[str, str, str] | None:
        """(provider, key id, key version) of the ApiKey's KMS key; None if not usable now
        (sealing reports why; rewrapping simply waits)."""
        try:
            return await self.steps.current_kms(key.spec.kms)
        except (KmsError, KmsNotConfigured):
            return None

    # -- status ---------------------------------------------------------------------------
    async def _settle(
        self,
        key: ApiKey,
        body: dict[str, Any],
        state: rotation.KeyState,
        secret: dict[str, Any] | None,
    ) -> None:
        """At a fixed point: delete a consumed source once the Active version's blob (in
        ``secret``, read again for it) checks out, and bring the summary fields
        (conditions, generation) up to date."""
        if state.active is not None and key.status.get("consumedSource"):
            self.steps.check_blob(key, secret, state.active.version)  # else keep the source
            body = await self.steps.consume_source(key, body)
            key = ApiKey.parse(body)
        status = projection.summary(key, state.records, state.blobs, state.policy, self.clock())
        if projection.settled(key.status, status):
            return
        await self.writer.patch_status(body, status)

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
        except (Retry, WriteRejected):
            metadata = body["metadata"]
            try:
                fresh = await self.api.get(APIKEYS, metadata["namespace"], metadata["name"])
            except ApiError as exc:
                raise Retry(str(exc)) from None
            try:
                await self._report(fresh, reason, message)
            except WriteRejected as exc:
                # A status the API server will not take (a broken object): the Event and
                # the log still say why.
                _log.warning("apikey.report.rejected", reason=reason, error=str(exc))
                await self.writer.event(fresh, "Warning", reason, message)

    async def _report(self, body: dict[str, Any], reason: str, message: str) -> None:
        patch = projection.failure(body, reason, message, self.clock())
        if patch is None:
            return
        await self.writer.patch_status(body, patch)
        await self.writer.event(body, "Warning", reason, message)

    async def _shred(self, body: dict[str, Any]) -> None:
        """Finalizer: erase every blob (crypto-shredding), delete the Secret, let go."""
        metadata = body["metadata"]
        if FINALIZER not in (metadata.get("finalizers") or []):
            return
        try:
            versions = await self.blobs.shred(
                metadata["namespace"], metadata["name"], metadata["uid"]
            )
        except ApiError as exc:
            raise Retry(str(exc)) from None
        if versions is not None:
            await self.writer.event(
                body, "Normal", "Shredded", f"sealed versions {versions} erased on deletion"
            )
        await self.writer.remove_finalizer(body)

    # -- our own writes -------------------------------------------------------------------
    def wrote(self, kind: str, namespace: str, name: str, resource_version: str) -> bool:
        """Whether this exact object version is one this reconciler wrote itself (or, for
        an ApiKey, read and found at its fixed point: ``ApiKeyWriter.settled``).

        A watch event for it carries nothing the reconciler does not already know, so the
        operator need not queue the key again.
        """
        if kind == "blobs":
            return self.blobs.wrote(namespace, name, resource_version)
        return self.writer.wrote(namespace, name, resource_version)

    def forget(self, namespace: str, name: str) -> None:
        self.writer.forget(namespace, name)
        self.blobs.forget(namespace, name)
