"""The controller process: watches in, a keyed work queue, reconcile workers out.

This module decides nothing about an ApiKey or a KeyRole (the reconcilers do); it owns
the process around them. ``Runtime`` holds the long-lived parts and is the larger half:
start-up (leader election, the controller's own keys opened with backoff, the workers),
the blob Secret informer, the recipient ConfigMap's guard (``controller_keys`` runs it;
the Runtime starts it once the keys are open), the work queue's routing of events to
keys (which KeyRoles an ApiKey event requeues), and shut-down.
``build_registry`` is the kopf wiring, and the helpers at the top (``blob_owner``,
``namespace_selected``) are pure.

kopf provides the ApiKey and KeyRole watches and login (leader election is ours:
``secure_keys.kube.leader``). Two more watches are our own informers
(``secure_keys.kube.informer``), because they need selectors applied by the API server:

* blob Secrets, with the label selector ``app.kubernetes.io/managed-by=secure-keys``, so
  no other Secret of the cluster ever reaches this process (kopf's ``labels=`` filter
  would receive every Secret and drop non-matching ones here, after parsing them);
* the recipient ConfigMap (``fieldSelector=metadata.name=...`` in the controller
  namespace), restored by the leader when it is deleted or its data replaced.

Event handlers only enqueue the ApiKey's key; workers pull keys and run the
``Reconciler``, which is level-triggered: it reads the current state and moves it one
step toward the spec, so a missed or duplicated event costs nothing. Delays (the next
rotation, a grace period ending) and failures (backoff) are scheduled on the same queue.

Nothing here writes kopf's own annotations or status: every ApiKey change is a write the
``Reconciler`` makes deliberately.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import fnmatch
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import kopf
import structlog

from secure_keys.controller import metrics
from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import (
    ControllerKeys,
    guard_recipient,
    load_or_create,
)
from secure_keys.controller.keyrole_status import KeyRoleReconciler, RoleSelections, selection_of
from secure_keys.controller.models import GROUP, VERSION
from secure_keys.controller.reconciler import (
    BLOB_SECRET_TYPE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Reconciler,
    Retry,
)
from secure_keys.controller.workqueue import WorkQueue
from secure_keys.core.errors import InvalidEnvelope, KmsError
from secure_keys.kube.client import (
    APIKEYS,
    SECRETS,
    ApiError,
    Credentials,
    KubeApi,
)
from secure_keys.kube.exec_auth import ExecAuthenticator
from secure_keys.kube.informer import Backoff, InformerEvent, informer
from secure_keys.kube.leader import LeaderElector, LeaseTiming
from secure_keys.kube.rollout import reconcile_digest

_log = structlog.get_logger("secure_keys.controller")

LOST_LEASE_EXIT_STATUS = 3

Kind = Literal["apikey", "keyrole"]
Key = tuple[Kind, str, str]
"""(kind, namespace, name): one queue serves both resources."""

BLOB_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
BLOB_TYPE_SELECTOR = f"type={BLOB_SECRET_TYPE}"
"""Also select on the Secret type: anyone may put our label on their own Secrets, but
only blob Secrets have this type, so no other Secret is listed into the process."""
"""The Secrets this process receives: ours only, selected by the API server."""


def blob_owner(metadata: Mapping[str, Any]) -> str | None:
    """The ApiKey a blob Secret belongs to: its controller owner reference's name (pure).

    Labels cannot say (names may be 253 characters, label values 63; the label holds the
    uid), so a Secret with no controller reference to an ApiKey maps to nothing.
    """
    for ref in metadata.get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == "ApiKey"
            and ref.get("apiVersion") == f"{GROUP}/{VERSION}"
            and ref.get("name")
        ):
            return str(ref["name"])
    return None


def namespace_selected(namespace: str, pattern: str | None) -> bool:
    """Whether ``--namespaces`` covers ``namespace``, as kopf reads the pattern (pure).

    Comma-separated globs; ``!glob`` excludes; the first inclusive glob decides the
    initial match (a leading exclusion implies ``*``); a later inclusive glob only brings
    back a namespace that the initial match had included and an exclusion then removed.
    """
    if pattern is None:
        return True
    globs = [part.strip() for part in pattern.split(",") if part.strip()]
    if not globs:
        return True
    if globs[0].startswith("!"):
        initial, rest = True, globs
    else:
        initial, rest = fnmatch.fnmatchcase(namespace, globs[0]), globs[1:]
    selected = initial
    for glob in rest:
        if glob.startswith("!"):
            if fnmatch.fnmatchcase(namespace, glob[1:]):
                selected = False
        elif fnmatch.fnmatchcase(namespace, glob):
            selected = initial
    return selected


def single_namespace(pattern: str | None) -> str | None:
    """The one namespace a pattern names, if it is a plain name (no globs, no list)."""
    if pattern is None or any(c in pattern for c in "*?[],!"):
        return None
    return pattern.strip() or None


@dataclass
class ControllerOptions:
    namespace: str
    kms_config: Path
    kubeconfig: Path | None = None
    workers: int = 8
    metrics_port: int | None = None
    lease: str | None = "secure-keys-controller"
    """Lease name for leader election in ``namespace``; None runs without election."""
    lease_timing: LeaseTiming = field(default_factory=LeaseTiming)
    instance: str = field(
        default_factory=lambda: (
            os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        )
    )
    namespaces: str | None = None
    """``--namespaces`` (kopf globs); None: every namespace."""


LIST_CHUNK = 500
"""Objects per page of kopf's initial ApiKey and KeyRole lists."""

BACKOFF = Backoff()
"""How opening the controller's keys is retried: as the informers retry."""


class Runtime:
    """The controller's long-lived parts, created at kopf startup and closed at cleanup."""

    def __init__(self, options: ControllerOptions) -> None:
        self.options = options
        self.queue: WorkQueue[Key] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self._api: KubeApi | None = None
        self._credentials: Credentials | None = None
        self.keys: ControllerKeys | None = None
        self.reconciler: Reconciler | None = None
        self.keyroles: KeyRoleReconciler | None = None
        # What decides which KeyRoles an ApiKey event requeues: each role's selection
        # (None if its spec does not parse) and each live ApiKey's last seen labels.
        self.roles = RoleSelections()
        self.apikey_labels: dict[tuple[str, str], dict[str, str]] = {}
        self.apikey_digests: dict[tuple[str, str], str] = {}
        """The last ApiKey event's ``kube.rollout.reconcile_digest``, per key."""

    async def start(self) -> None:
        options = self.options
        kms = KmsDirectory(KmsSettings.load(options.kms_config))
        self._api = KubeApi(self.credentials())
        api = await self._api.__aenter__()
        if options.lease:
            elector = LeaderElector(
                api, options.namespace, options.lease, options.instance, options.lease_timing
            )
            await elector.acquire()  # followers wait here, before any watch or worker
            self._tasks.append(asyncio.create_task(elector.hold(self._lost_lease)))
        if options.metrics_port is not None:
            metrics.serve(options.metrics_port)
        # Workers start at once, even before the controller's own keys are open: an
        # ApiKey whose next step needs them reports ControllerKeysUnavailable (a
        # condition and an Event) instead of waiting silently behind a log line.
        self.reconciler = Reconciler(api, kms, None, instance=options.instance)
        self.keyroles = KeyRoleReconciler(api, instance=options.instance)
        self._tasks.append(asyncio.create_task(self.queue.run_timers()))
        for _ in range(options.workers):
            self._tasks.append(asyncio.create_task(self._worker()))
        self._tasks.append(asyncio.create_task(self._watch_blobs(api)))
        self._tasks.append(asyncio.create_task(self._open_keys(api, kms)))
        _log.info("controller.started", namespace=options.namespace, workers=options.workers)

    async def _open_keys(self, api: KubeApi, kms: KmsDirectory) -> None:
        """Open (or create) the controller's keys under the default KMS key, retrying with
        backoff; then serve the recipient and requeue every ApiKey that waited for them."""
        options = self.options
        failures = 0
        while True:
            try:
                provider = await asyncio.to_thread(kms.default)
                self.keys = await load_or_create(api, options.namespace, provider)
                break
            except (KmsError, ApiError, InvalidEnvelope, ValueError) as exc:
                metrics.CONTROLLER_KEYS_OPEN.set(0)
                delay = BACKOFF.after(failures, exc)
                failures += 1
                _log.warning(
                    "controller.keys.unavailable",
                    error=type(exc).__name__,
                    detail=str(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
        metrics.CONTROLLER_KEYS_OPEN.set(1)
        if self.reconciler is not None:
            self.reconciler.keys = self.keys
        _log.info("controller.keys.opened", recipient=self.keys.public.key_id)
        guard = guard_recipient(
            api, self.options.namespace, self.keys.public, instance=self.options.instance
        )
        self._tasks.append(asyncio.create_task(guard))
        await self._requeue_apikeys(api)

    async def _requeue_apikeys(self, api: KubeApi) -> None:
        """Queue every selected ApiKey; names are all it needs, so it lists metadata only."""
        scope = single_namespace(self.options.namespaces)
        token: str | None = None
        while True:
            try:
                page = await api.list(
                    APIKEYS, scope, limit=500, continue_=token, metadata_only=True
                )
            except ApiError as exc:
                _log.warning("apikeys.requeue.failed", status=exc.status)
                return
            for item in page.get("items") or []:
                metadata = item.get("metadata") or {}
                namespace = str(metadata.get("namespace") or "")
                if namespace_selected(namespace, self.options.namespaces):
                    self.queue.add(("apikey", namespace, str(metadata.get("name"))))
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return

    def credentials(self) -> Credentials:
        """The API credentials, read once (kopf's login and our client share them)."""
        if self._credentials is None:
            self._credentials = Credentials.discover(self.options.kubeconfig)
        return self._credentials

    # -- blob Secrets ------------------------------------------------------------------
    async def _watch_blobs(self, api: KubeApi) -> None:
        scope = single_namespace(self.options.namespaces)
        async for event in informer(
            api, SECRETS, scope, label_selector=BLOB_SELECTOR, field_selector=BLOB_TYPE_SELECTOR
        ):
            self.blob_event(event)

    def blob_event(self, event: InformerEvent) -> None:
        """Queue the ApiKey a blob Secret event concerns, unless it is our own write."""
        if event.type == "LISTED":
            return
        metadata = event.metadata
        owner = blob_owner(metadata)
        if not (event.synthetic and event.type == "DELETED"):  # else nothing was received
            metrics.OBJECTS_RECEIVED.labels("secrets", "blob" if owner else "other").inc()
        namespace = str(metadata.get("namespace") or "")
        if owner is None or not namespace_selected(namespace, self.options.namespaces):
            return
        own = self.reconciler is not None and self.reconciler.wrote(
            "blobs", namespace, owner, str(metadata.get("resourceVersion"))
        )
        if event.type == "DELETED" or not own:
            self.queue.add(("apikey", namespace, owner))

    def _lost_lease(self) -> None:
        # Another replica may lead now: stop at once, as controller-runtime's managers do,
        # and let the Deployment restart this one as a follower.
        os._exit(LOST_LEASE_EXIT_STATUS)

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._api is not None:
            await self._api.__aexit__(None, None, None)
        if self.reconciler is not None:
            self.reconciler.close()
        if self.keys is not None:
            self.keys.close()

    def apikey_changed(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None,
        *,
        own: bool = False,
    ) -> None:
        """An ApiKey event: ``labels`` is ``None`` once the key is gone or being deleted.

        The key itself is queued unless the event is our own write; a KeyRole only if
        the key's existence or labels changed in a way that alters what the role covers.
        """
        if not own:
            self.queue.add(("apikey", namespace, name))
        after = None if labels is None else dict(labels)
        before = self.apikey_labels.get((namespace, name))
        if after is None:
            self.apikey_labels.pop((namespace, name), None)
        else:
            self.apikey_labels[(namespace, name)] = after
        if before != after and self.keyroles is not None:
            self.keyroles.apikeys_changed(namespace, name, after)
        for role in self.roles.affected(namespace, name, before, after):
            self.queue.add(("keyrole", namespace, role))

    def apikey_event(
        self,
        type_: str,
        namespace: str,
        name: str,
        meta: Mapping[str, Any],
        body: Mapping[str, Any],
    ) -> None:
        """One ApiKey watch event: queued unless it is our own write or a gateway's
        rollout write (status.rollout, RolledOut), which changes nothing the reconciler
        reads (``kube/rollout.reconcile_digest``)."""
        own = self.reconciler is not None and self.reconciler.wrote(
            "apikey", namespace, name, str(meta.get("resourceVersion"))
        )
        digest = reconcile_digest(body)
        rollout_only = self.apikey_digests.get((namespace, name)) == digest
        self.apikey_digests[(namespace, name)] = digest
        if type_ == "DELETED":
            self.apikey_digests.pop((namespace, name), None)
        gone = type_ == "DELETED" or bool(meta.get("deletionTimestamp"))
        labels = None if gone else dict(meta.get("labels") or {})
        self.apikey_changed(
            namespace, name, labels, own=(own or rollout_only) and type_ != "DELETED"
        )

    def selects(self, namespace: str) -> bool:
        """Whether ``--namespaces`` covers ``namespace`` (kopf watches the whole cluster
        unless the pattern is one plain name: see ``run``)."""
        return namespace_selected(namespace, self.options.namespaces)

    def keyrole_changed(
        self, namespace: str, name: str, deleted: bool, spec: Mapping[str, Any] | None = None
    ) -> None:
        if deleted:
            self.roles.remove(namespace, name)
        else:
            self.roles.set(namespace, name, selection_of(spec))
            self.queue.add(("keyrole", namespace, name))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            metrics.QUEUE_DEPTH.set(len(self.queue))
            started = time.perf_counter()
            outcome = await self._process(key)
            metrics.RECONCILES.labels(key[0], outcome).inc()
            metrics.RECONCILE_SECONDS.labels(key[0]).observe(time.perf_counter() - started)

    async def _process(self, key: Key) -> str:
        """Reconcile one key and schedule what follows; returns the outcome's name."""
        if self.reconciler is None or self.keyroles is None:
            raise RuntimeError("workers start after the reconcilers")
        kind, namespace, name = key
        try:
            if kind == "keyrole":
                await self.keyroles.reconcile(namespace, name)
                self.queue.forget(key)
                return "idle"
            outcome = await self.reconciler.reconcile(namespace, name)
        except Retry as exc:
            delay = self.queue.backoff(key)
            _log.info("retry", kind=kind, namespace=namespace, name=name, delay=delay, why=str(exc))
            return "retry"
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = self.queue.backoff(key)
            _log.exception(
                "reconcile.crashed", kind=kind, namespace=namespace, name=name, delay=delay
            )
            return "error"
        finally:
            self.queue.done(key)
        self.queue.forget(key)
        if outcome.wake_at is not None:
            now = datetime.datetime.now(datetime.UTC)
            self.queue.add_after(key, (outcome.wake_at - now).total_seconds() + 0.5)
        return "idle"


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled state" of an object, which it keeps for change-detecting
    handlers (``on.create``, ``on.update``) to compare old and new: there are none here,
    only event handlers, so nothing is built, read or stored. kopf's default deep-copies
    every body it receives (spec and all) to build one, and reads an annotation for it."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if runtime.options.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            return kopf.login_with_service_account(**kwargs)
        credentials = runtime.credentials()
        if credentials.exec is not None:
            # kopf's kubeconfig login ignores exec plugins: run the plugin ourselves.
            return await exec_login(credentials)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are written by the reconcilers
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per event
        settings.watching.server_timeout = 300
        # The initial lists a page at a time (kopf lists everything in one response by
        # default: 10,000 ApiKeys parsed at once). kopf's per-object workers keep their
        # default idle time (5 s).
        settings.watching.chunk_size = LIST_CHUNK
        settings.persistence.diffbase_storage = NoDiffBase()
        await runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    # The handlers are coroutines so that kopf runs them on the event loop: a plain
    # function it would run in its thread pool, one hop per watch event (7 % of the
    # controller's time sealing 1,000 keys), and the work queue is not thread-safe.
    @kopf.on.event(GROUP, VERSION, "apikeys", registry=registry)
    async def apikey_changed(
        type: str,  # noqa: A002 - kopf's argument name
        namespace: str | None,
        name: str,
        meta: Mapping[str, Any],
        body: Mapping[str, Any],
        **_: Any,
    ) -> None:
        if namespace and runtime.selects(namespace):
            runtime.apikey_event(type, namespace, name, meta, body)

    @kopf.on.event(GROUP, VERSION, "keyroles", registry=registry)
    async def keyrole_changed(
        type: str,  # noqa: A002 - kopf's argument name
        namespace: str | None,
        name: str,
        spec: Mapping[str, Any],
        **_: Any,
    ) -> None:
        if namespace and runtime.selects(namespace):
            runtime.keyrole_changed(namespace, name, deleted=type == "DELETED", spec=spec)

    # Blob Secrets are not watched through kopf: see Runtime._watch_blobs.
    return registry


async def exec_login(credentials: Credentials) -> kopf.ConnectionInfo:
    """kopf's connection from a kubeconfig exec plugin; kopf logs in again at expiry/401."""
    if credentials.exec is None:
        raise ValueError("no exec plugin in these credentials")
    authenticator = ExecAuthenticator(
        credentials.exec, server=credentials.server, ca_pem=credentials.ca_pem
    )
    credential = await authenticator.credential()
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_data=credentials.ca_pem,
        token=credential.token or credentials.token,
        certificate_data=credential.cert_pem or credentials.cert_pem,
        private_key_data=credential.key_pem or credentials.key_pem,
        expiration=credential.expires_at,
    )


def run(options: ControllerOptions, *, namespaces: str | None = None) -> None:
    """Run the controller until SIGINT/SIGTERM (kopf standalone: no kopf peering).

    ``namespaces`` is a kopf namespace pattern (globs, ``!`` negations, comma-separated);
    without it the controller watches the whole cluster.
    """
    if options.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(options.kubeconfig)
    if namespaces is not None:
        options = dataclasses.replace(options, namespaces=namespaces)
    runtime = Runtime(options)
    # kopf serves a glob by watching Namespaces and starting a watch per matching one. In
    # two CI runs a namespace created as the controller started got no watch until its
    # next change (its deletion a minute later), so its ApiKeys were never sealed. So
    # kopf watches the whole cluster and ``Runtime.selects`` applies the pattern to each
    # event, unless it is one plain name (a controller with a Role in that namespace
    # only).
    scope = single_namespace(namespaces)
    kopf.run(
        registry=build_registry(runtime),
        clusterwide=scope is None,
        namespaces=[scope] if scope else (),
        standalone=True,
    )
