"""Kopf wiring: watch streams in, a keyed work queue, reconcile workers. Kept thin.

kopf provides the watches and login (leader election is ours: ``leader.py``). Its event
handlers only enqueue the ApiKey's key; workers pull keys and run the ``Reconciler``,
which is level-triggered: it reads the current state and moves it one step toward the
spec, so a missed or duplicated event costs nothing. Delays (the next rotation, a grace
period ending) and failures (backoff) are scheduled on the same queue.

Nothing here writes kopf's own annotations or status: every ApiKey change is a write the
service makes deliberately.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import kopf
import structlog

from secure_keys.controller import metrics
from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys, load_or_create
from secure_keys.controller.keyroles import KeyRoleReconciler
from secure_keys.controller.leader import LeaderElector, LeaseTiming
from secure_keys.controller.models import GROUP, VERSION
from secure_keys.controller.service import (
    LABEL_APIKEY,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Reconciler,
    Retry,
)
from secure_keys.controller.workqueue import WorkQueue
from secure_keys.core.errors import KmsError
from secure_keys.kube.client import Credentials, KubeApi

_log = structlog.get_logger("secure_keys.controller")

LOST_LEASE_EXIT_STATUS = 3

Kind = Literal["apikey", "keyrole"]
Key = tuple[Kind, str, str]
"""(kind, namespace, name): one queue serves both resources."""


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


class Runtime:
    """The controller's long-lived parts, created at kopf startup and closed at cleanup."""

    def __init__(self, options: ControllerOptions) -> None:
        self.options = options
        self.queue: WorkQueue[Key] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self._api: KubeApi | None = None
        self.keys: ControllerKeys | None = None
        self.reconciler: Reconciler | None = None
        self.keyroles: KeyRoleReconciler | None = None
        self.roles_by_namespace: dict[str, set[str]] = {}

    async def start(self) -> None:
        options = self.options
        kms = KmsDirectory(KmsSettings.load(options.kms_config))
        self._api = KubeApi(Credentials.discover(options.kubeconfig))
        api = await self._api.__aenter__()
        if options.lease:
            elector = LeaderElector(
                api, options.namespace, options.lease, options.instance, options.lease_timing
            )
            await elector.acquire()  # followers wait here, before any watch or worker
            self._tasks.append(asyncio.create_task(elector.hold(self._lost_lease)))
        delay = 0.5
        while True:
            try:
                self.keys = await load_or_create(api, options.namespace, kms.default())
                break
            except KmsError as exc:
                # Without the default KMS nothing can be sealed or opened: wait for it.
                _log.warning("controller.keys.unavailable", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        if options.metrics_port is not None:
            metrics.serve(options.metrics_port)
        self.reconciler = Reconciler(api, kms, self.keys, instance=options.instance)
        self.keyroles = KeyRoleReconciler(api, instance=options.instance)
        self._tasks.append(asyncio.create_task(self.queue.run_timers()))
        for _ in range(options.workers):
            self._tasks.append(asyncio.create_task(self._worker()))
        _log.info(
            "controller.started",
            namespace=options.namespace,
            recipient=self.keys.public.key_id,
            workers=options.workers,
        )

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
        if self.keys is not None:
            self.keys.close()

    def apikey_changed(self, namespace: str, name: str) -> None:
        self.queue.add(("apikey", namespace, name))
        for role in self.roles_by_namespace.get(namespace, ()):
            self.queue.add(("keyrole", namespace, role))

    def keyrole_changed(self, namespace: str, name: str, deleted: bool) -> None:
        roles = self.roles_by_namespace.setdefault(namespace, set())
        if deleted:
            roles.discard(name)
        else:
            roles.add(name)
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


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if runtime.options.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            return kopf.login_with_service_account(**kwargs)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are written by the service
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per event
        settings.watching.server_timeout = 300
        await runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    @kopf.on.event(GROUP, VERSION, "apikeys", registry=registry)
    def apikey_changed(
        type: str,  # noqa: A002 - kopf's argument name
        namespace: str | None,
        name: str,
        meta: Mapping[str, Any],
        **_: Any,
    ) -> None:
        if not namespace:
            return
        own = runtime.reconciler is not None and runtime.reconciler.wrote(
            "apikey", namespace, name, str(meta.get("resourceVersion"))
        )
        if type == "DELETED" or not own:
            runtime.apikey_changed(namespace, name)

    @kopf.on.event(GROUP, VERSION, "keyroles", registry=registry)
    def keyrole_changed(type: str, namespace: str | None, name: str, **_: Any) -> None:  # noqa: A002
        if namespace:
            runtime.keyrole_changed(namespace, name, deleted=type == "DELETED")

    @kopf.on.event("", "v1", "secrets", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    def blobs_changed(
        type: str,  # noqa: A002 - kopf's argument name
        namespace: str | None,
        labels: Mapping[str, str],
        meta: Mapping[str, Any],
        **_: Any,
    ) -> None:
        owner = labels.get(LABEL_APIKEY)
        if not owner or not namespace:
            return
        own = runtime.reconciler is not None and runtime.reconciler.wrote(
            "blobs", namespace, owner, str(meta.get("resourceVersion"))
        )
        if type == "DELETED" or not own:
            runtime.queue.add(("apikey", namespace, owner))

    return registry


def run(options: ControllerOptions, *, namespaces: str | None = None) -> None:
    """Run the controller until SIGINT/SIGTERM (kopf standalone: no kopf peering).

    ``namespaces`` is a kopf namespace pattern (globs, ``!`` negations, comma-separated);
    without it the controller watches the whole cluster.
    """
    if options.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(options.kubeconfig)
    runtime = Runtime(options)
    kopf.run(
        registry=build_registry(runtime),
        clusterwide=namespaces is None,
        namespaces=[namespaces] if namespaces else (),
        standalone=True,
    )
