"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does.

Only the holder of the Lease runs reconcile workers; other replicas wait. The holder
renews every ``retry_period``; a replica may take the Lease over only once
``renewTime + leaseDurationSeconds`` has passed. Every write carries the resourceVersion
it read, so two candidates can never both win the same term. A leader that cannot renew
within ``renew_deadline`` stops leading (the process exits and is restarted, as
controller-runtime's managers do), before another replica can take the Lease.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from secure_keys.kube.client import ApiError, KubeApi, Resource

LEASES = Resource("coordination.k8s.io", "v1", "leases")
_log = structlog.get_logger("secure_keys.controller")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")


def expired(spec: dict[str, Any], now: datetime.datetime) -> bool:
    """Whether the holder's term is over (pure)."""
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    if renewed is None or not spec.get("holderIdentity"):
        return True
    duration = float(spec.get("leaseDurationSeconds") or 0)
    return now > renewed + datetime.timedelta(seconds=duration)


def claimed_spec(
    current: dict[str, Any] | None, identity: str, timing: LeaseTiming, now: datetime.datetime
) -> dict[str, Any]:
    """The Lease spec after ``identity`` acquires or renews it (pure)."""
    current = current or {}
    ours = current.get("holderIdentity") == identity
    transitions = int(current.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(timing.lease_duration)),
        "acquireTime": current.get("acquireTime") if ours else _stamp(now),
        "renewTime": _stamp(now),
        "leaseTransitions": transitions if ours or not current else transitions + 1,
    }


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        *,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.clock = clock

    async def _try(self) -> bool:
        """One attempt to acquire or renew. True if we hold the Lease afterwards."""
        now = self.clock()
        try:
            lease = await self.api.get(LEASES, self.namespace, self.name)
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": claimed_spec(None, self.identity, self.timing, now),
            }
            try:
                await self.api.create(LEASES, self.namespace, body)
            except ApiError as race:
                if race.conflict:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity and not expired(spec, now):
            return False
        lease["spec"] = claimed_spec(spec, self.identity, self.timing, now)
        try:
            await self.api.replace(LEASES, self.namespace, self.name, lease)  # carries its RV
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        logged = False
        while True:
            try:
                if await self._try():
                    _log.info("leader.acquired", lease=self.name, identity=self.identity)
                    return
            except ApiError as exc:
                _log.warning("leader.error", lease=self.name, status=exc.status)
            if not logged:
                _log.info("leader.waiting", lease=self.name, identity=self.identity)
                logged = True
            await asyncio.sleep(self.timing.retry_period)

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew until a renewal deadline is missed, then call ``on_lost``."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            try:
                held = await self._try()
            except (ApiError, OSError, TimeoutError) as exc:
                # Transient: keep trying until the renewal deadline.
                _log.warning("leader.renew.failed", lease=self.name, error=type(exc).__name__)
                if loop.time() - last < self.timing.renew_deadline:
                    continue
                held = False
            if held:
                last = loop.time()
                continue
            _log.error("leader.lost", lease=self.name, identity=self.identity)
            on_lost()
            return
