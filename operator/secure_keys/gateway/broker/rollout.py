"""Owns this replica's part of the rollout status: which of its streams hold the current
version of each key, written to ``status.rollout`` only when that picture changes.

``RolloutTracker.touch(namespace)`` is called by the broker whenever the picture of a
namespace may have changed: a watch event there (a rotation, a pod joining or leaving,
a KeyRole change) or one of its streams opening, ending or being sent a state. Touches
are coalesced: a namespace is looked at ``delay`` seconds after its first touch, so a
rotation pushed to a hundred streams in one burst costs one look, and usually one write
per replica. A look compares, per key of the namespace, what this replica would write
(its own ``ReplicaView`` and the summary ``kube.rollout.merge`` computes) with what
status holds, and writes only on a difference:

* its own entry differs (a stream of this replica caught up, opened or ended), or
* the facts of the summary differ (version, consumers, current): a rotation with no
  stream on this replica, a pod without a stream joining or leaving. Every replica sees
  those; the first write wins, the others find status already right and write nothing
  (a difference in which pods are *named* alone never causes a write, so two replicas
  with different knowledge cannot take turns rewriting the list).

So there are no writes at steady state and O(1) writes per replica per rotation. Each
write is a merge patch of ``apikeys/status`` with the resourceVersion of the object the
summary was computed from (409: look again once the watch has the newer object). A
replica that drains (SIGTERM) withdraws its entries; its streams reconnect elsewhere and
that replica's entry counts them. A replica killed outright (or evicted) leaves its
entry; where the gateway runs in a pod and knows its replicas (``ReplicaPods``: the
pods of its Deployment), every look also removes the entries whose id is not a live
gateway pod, and a gateway pod's end touches the namespaces of the keys it had entries
for. A host-process gateway (no ``POD_NAME``) prunes nothing: its id is no pod's name,
so it cannot tell a dead replica from another host process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from secure_keys.gateway import metrics
from secure_keys.gateway.broker.caches import BrokerCaches
from secure_keys.gateway.broker.policy import DeliveryKeyView, Refusal, RunningPod, grant
from secure_keys.gateway.broker.replicas import ReplicaPods
from secure_keys.kube import rollout as fmt
from secure_keys.kube.client import APIKEYS, ApiError, KubeApi
from secure_keys.kube.rollout import ReplicaView, RolloutSummary

_log = structlog.get_logger("secure_keys.gateway.rollout")

DELAY = 0.5
"""Seconds between a namespace's first touch and its look: the coalescing window."""
RETRY = 1.0
"""Seconds before looking again after a conflict or a failed write."""
PRUNE_BACKOFF = 5.0
PRUNE_BACKOFF_MAX = 600.0
"""An entry pruned and written again (a replica whose pod this watch has not seen yet,
or a writer that is no gateway pod) is pruned again at once, then after 5 s, 10 s, ...
at most every 10 minutes: two writers that disagree cannot trade writes in a loop."""
_PRUNED_KEPT = 1024


class Stream(Protocol):
    """What the tracker reads of a broker session."""

    @property
    def pod(self) -> RunningPod: ...

    def holds(self, key: str) -> int | None:
        """The current version this stream delivered of ``key`` (0: none yet, or it was
        refused); ``None`` if the stream does not carry ``key``."""


PatchStatus = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""``(namespace, name, merge patch) -> None``; raises ``Conflict`` on a 409."""


class Conflict(Exception):
    """The object changed since the summary was computed."""


def replica_view(
    streams: Iterable[Stream], key: str, version: int
) -> tuple[ReplicaView, set[str], dict[int, int]]:
    """This replica's view of ``key``, the names of the pods it serves it to, and how
    many hold each version (pure)."""
    connected: set[str] = set()
    current: set[str] = set()
    by_version: dict[int, int] = {}
    for stream in streams:
        held = stream.holds(key)
        if held is None or stream.pod.name in connected:
            continue
        connected.add(stream.pod.name)
        by_version[held] = by_version.get(held, 0) + 1
        if held == version and version > 0:
            current.add(stream.pod.name)
    behind = tuple(sorted(connected - current)[: fmt.MAX_NAMED])
    return ReplicaView(version, len(connected), len(current), behind), connected, by_version


def consumers(
    pods: Mapping[str, RunningPod], key: str, may_read: Callable[[RunningPod], bool]
) -> list[str]:
    """Running pods of the namespace that ask for ``key`` and may read it now (a pod the
    broker would refuse is not waited for: otherwise anyone who may create a labelled
    pod could hold every rollout)."""
    return [p.name for p in pods.values() if key in p.keys and not p.terminating and may_read(p)]


def _facts(summary: RolloutSummary | None) -> tuple[int, int, int] | None:
    return None if summary is None else (summary.version, summary.consumers, summary.current)


def _condition(conditions: Iterable[Mapping[str, Any]]) -> tuple[object, object] | None:
    for condition in conditions:
        if condition.get("type") == fmt.CONDITION:
            return condition.get("status"), condition.get("reason")
    return None


class RolloutTracker:
    def __init__(
        self,
        caches: BrokerCaches,
        sessions: Mapping[str, Iterable[Stream]],
        patch_status: PatchStatus,
        replica: str,
        *,
        delay: float = DELAY,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        replicas: ReplicaPods | None = None,
    ) -> None:
        self.caches = caches
        self.replicas = replicas
        """The live gateway replicas (``None``: entries of dead replicas are never
        pruned, as in a host-process gateway)."""
        if replicas is not None:
            replicas.on_gone = self.replica_gone
            replicas.on_listed = self.replicas_listed
        self.sessions = sessions
        self.patch_status = patch_status
        self.replica = replica
        self.delay = delay
        self.now = now
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.first_seen: dict[tuple[str, str], tuple[int, float]] = {}
        """(namespace, key) -> the current version and when this replica first saw it:
        the start of the rotation-to-rollout histogram."""
        self.writes = 0
        self.stopping = False
        self._retries: set[asyncio.Task[None]] = set()
        self._pruned: dict[str, tuple[float, float]] = {}
        """Replica id -> when this replica last pruned it, and the wait before the next."""

    def touch(self, namespace: str) -> None:
        if not self.stopping:
            self.dirty.add(namespace)
            self.wake.set()

    def replica_gone(self, name: str) -> None:
        """A gateway pod ended: look at the namespaces of the keys it had entries for."""
        for namespace in self.caches.apikeys.namespaces():
            views = self.caches.apikeys.in_namespace(namespace).values()
            if any(name in view.rollout.entries for view in views):
                self.touch(namespace)

    def replicas_listed(self) -> None:
        """The live replicas are known: look at every namespace holding another's entry."""
        for namespace in self.caches.apikeys.namespaces():
            views = self.caches.apikeys.in_namespace(namespace).values()
            if any(view.rollout.entries - {self.replica} for view in views):
                self.touch(namespace)

    def gone(self, entries: Iterable[str]) -> tuple[list[str], float | None]:
        """The ids among ``entries`` to prune now: not a live gateway replica (never this
        one), and not pruned too recently (see ``PRUNE_BACKOFF``); and, if one is held
        back, in how many seconds it may go. None while the live replicas are not known."""
        live = None if self.replicas is None else self.replicas.names()
        if live is None:
            return [], None
        now = time.monotonic()
        due: list[str] = []
        wait: float | None = None
        for entry in sorted(e for e in entries if e != self.replica and e not in live):
            last = self._pruned.get(entry)
            if last is not None and now < last[0] + last[1]:
                left = last[0] + last[1] - now
                wait = left if wait is None else min(wait, left)
                continue
            due.append(entry)
        return due, wait

    def _pruning(self, namespace: str, apikey: str, gone: list[str]) -> None:
        now = time.monotonic()
        if len(self._pruned) > _PRUNED_KEPT:
            self._pruned.clear()
        again = [g for g in gone if g in self._pruned and self._pruned[g][1] > 0]
        for entry in gone:
            last = self._pruned.get(entry)
            backoff = (
                0.0 if last is None else min(max(2 * last[1], PRUNE_BACKOFF), PRUNE_BACKOFF_MAX)
            )
            self._pruned[entry] = (now, backoff)
        log = _log.warning if again else _log.info
        log(
            "rollout.pruned_again" if again else "rollout.pruned",
            namespace=namespace,
            apikey=apikey,
            replicas=[g[:63] for g in gone[:5]],
            count=len(gone),
        )

    async def run(self) -> None:
        """Look at touched namespaces, ``delay`` after their first touch, forever."""
        while not self.caches.synced:
            await asyncio.sleep(0.2)
        for namespace in self.caches.apikeys.namespaces():
            self.dirty.add(namespace)  # rewrite a stale entry left by this replica's last run
        while True:
            if not self.dirty:
                self.wake.clear()
                await self.wake.wait()
            await asyncio.sleep(self.delay)
            batch, self.dirty = self.dirty, set()
            for namespace in sorted(batch):
                try:
                    await self.look(namespace)
                except Exception as exc:  # one namespace's failure never stops the rest
                    _log.warning("rollout.look_failed", namespace=namespace, error=repr(exc)[:200])
                    self._later(namespace)

    def _later(self, namespace: str, wait: float = RETRY) -> None:
        async def again() -> None:
            await asyncio.sleep(wait * (1 + random.random()))  # noqa: S311 - jitter
            self.touch(namespace)

        task = asyncio.get_running_loop().create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def look(self, namespace: str) -> int:
        """Write what changed for each key of ``namespace``; the number of writes."""
        written = 0
        pods = self.caches.pods.in_namespace(namespace)
        streams = list(self.sessions.get(namespace, ()))
        for view in list(self.caches.apikeys.in_namespace(namespace).values()):
            patch = self.plan(view, pods, streams)
            if patch is None:
                continue
            try:
                await self.patch_status(namespace, view.name, patch)
            except Conflict:
                self._later(namespace)
                continue
            written += 1
            self.writes += 1
            metrics.ROLLOUT_WRITES.inc()
        return written

    def _may_read(self, view: DeliveryKeyView) -> Callable[[RunningPod], bool]:
        apikeys = self.caches.apikeys.in_namespace(view.namespace)
        now = self.now()

        def may_read(pod: RunningPod) -> bool:
            decision = grant(pod, view.name, apikeys, self.caches.roles_for(pod), now)
            return not isinstance(decision, Refusal)

        return may_read

    def plan(
        self, view: DeliveryKeyView, pods: Mapping[str, RunningPod], streams: list[Stream]
    ) -> dict[str, Any] | None:
        """The patch this replica should send for ``view``, or ``None`` (pure but for the
        clock and the histogram)."""
        version = view.current_version
        seen = self.first_seen.get((view.namespace, view.name))
        if seen is None or seen[0] != version:
            seen = self.first_seen[(view.namespace, view.name)] = (version, time.monotonic())
        mine, connected, by_version = replica_view(streams, view.name, version)
        own = mine if mine.connected else None
        metrics.set_rollout_pods(view.namespace, view.name, by_version)
        users = consumers(pods, view.name, self._may_read(view))
        stored = view.rollout
        if own is None and not users and stored.summary is None and not stored.entries:
            return None  # a key nobody consumes: nothing to say
        gone, wait = self.gone(stored.entries)
        if wait is not None:
            self._later(view.namespace, wait)
        replicas = {k: v for k, v in stored.replicas.items() if k != self.replica and k not in gone}
        if own is not None:
            replicas[self.replica] = own
        summary = fmt.merge(
            version,
            users,
            replicas,
            mine=self.replica,
            my_connected=connected,
            previous=stored.summary,
            now=self.now(),
        )
        conditions = fmt.condition_for(summary, view.conditions, now=self.now())
        wanted = _condition(conditions)
        same_entry = stored.replicas.get(self.replica) == own
        same_facts = _facts(stored.summary) == _facts(summary)
        same_condition = _condition(view.conditions) == wanted
        if same_entry and same_facts and same_condition and not gone:
            return None
        was = stored.summary
        was_complete = was is not None and was.version == version and was.complete
        if summary.complete and summary.consumers and not was_complete:
            metrics.ROLLOUT_SECONDS.observe(time.monotonic() - seen[1])
        _log.info(
            "rollout.write",
            namespace=view.namespace,
            apikey=view.name,
            version=version,
            pods=summary.pods,
            replica=self.replica,
            pruned=len(gone),
        )
        if gone:
            self._pruning(view.namespace, view.name, gone)
        return fmt.status_patch(
            view.resource_version, summary, self.replica, own, conditions, gone=gone
        )

    async def withdraw(self) -> None:
        """Remove this replica's entries (it is draining: its streams go elsewhere)."""
        self.stopping = True
        views = [
            view
            for namespace in self.caches.apikeys.namespaces()
            for view in list(self.caches.apikeys.in_namespace(namespace).values())
        ]
        for view in views:
            if self.replica not in view.rollout.replicas:
                continue
            replicas = {k: v for k, v in view.rollout.replicas.items() if k != self.replica}
            pods = self.caches.pods.in_namespace(view.namespace)
            users = consumers(pods, view.name, self._may_read(view))
            summary = fmt.merge(
                view.current_version,
                users,
                replicas,
                mine=self.replica,
                my_connected=(),
                previous=view.rollout.summary,
                now=self.now(),
            )
            conditions = fmt.condition_for(summary, view.conditions, now=self.now())
            patch = fmt.status_patch(view.resource_version, summary, self.replica, None, conditions)
            with contextlib.suppress(Exception):
                await self.patch_status(view.namespace, view.name, patch)


REPLICA_ENV = "POD_NAME"
"""The replica id: the gateway pod's name (the chart sets it), stable across restarts of
its container; outside a pod, the host name and the process id."""


def replica_id() -> str:
    name = os.environ.get(REPLICA_ENV, "")
    if name and len(name) <= 253:
        return name
    return f"{socket.gethostname()[:200]}-{os.getpid()}"


def replica_pods(namespace: str, selector: str) -> ReplicaPods | None:
    """The watch of live gateway replicas, when this process is one of them: it runs
    in a pod (``POD_NAME``, its replica id) and knows its Deployment's namespace and
    pod selector. ``None`` otherwise: pruning off (docs/rollout.md, "Replica death")."""
    if not (os.environ.get(REPLICA_ENV) and namespace and selector):
        _log.info("rollout.pruning_off", in_pod=bool(os.environ.get(REPLICA_ENV)))
        return None
    return ReplicaPods(namespace, selector)


def tracker_for(
    caches: BrokerCaches,
    sessions: Mapping[str, Iterable[Stream]],
    api: KubeApi,
    replicas: ReplicaPods | None = None,
) -> RolloutTracker:
    """A tracker writing ``apikeys/status`` through ``api``, pruning the entries of dead
    replicas when ``replicas`` says which are alive."""

    async def patch_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            await api.patch(APIKEYS, namespace, name, patch, subresource="status")
        except ApiError as exc:
            if exc.status == 409:
                raise Conflict() from None
            if exc.not_found:
                return
            raise

    return RolloutTracker(caches, sessions, patch_status, replica_id(), replicas=replicas)
