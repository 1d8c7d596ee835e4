"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does.

Shared by the controller (only the holder of its Lease runs reconcile workers; other
replicas wait) and the gateway (only the holder of its certificates Lease issues and
renews the serving certificate: ``gateway/certs.py``). This module owns the Lease record's
arithmetic (pure) and the acquire/renew loop (I/O).

Expiry is judged only by this replica's own monotonic clock, never by comparing the
holder's ``renewTime`` with the local wall clock (the two machines' clocks may disagree
by any amount). A follower remembers the last Lease record it observed and the local
monotonic time at which it first saw that record; it may take the Lease over only once
that record has stayed unchanged for ``leaseDurationSeconds`` of its own time. Every
write carries the resourceVersion it read, so two candidates can never both win a term.

The holder renews every ``retry_period``. Each attempt (GET and PUT together) is bounded
by what is left of ``renew_deadline`` since the start of its last successful renewal, so
a hanging API server cannot hold it up; once ``renew_deadline`` has passed without a
renewal it calls ``on_lost`` (the process exits and is restarted, as controller-runtime's
managers do). The deadline is measured from the start of the attempt that succeeded,
which is no later than any follower could have observed the written record, and
``renew_deadline < lease_duration``, so the leader stops before anyone may take over
(assuming the replicas' clocks run at about the same rate, as client-go does). The
Lease's ``renewTime`` and ``acquireTime`` are still written from the wall clock, for
people and other tools to read.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from secure_keys.kube.client import ApiError, KubeApi, Resource

LEASES = Resource("coordination.k8s.io", "v1", "leases")
_log = structlog.get_logger("secure_keys.kube.leader")

# What one acquire/renew attempt may fail with and still be worth retrying: an error
# status, a transport failure, or our own per-attempt timeout (a TimeoutError).
_TRANSIENT = (ApiError, aiohttp.ClientError, OSError)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease spec that its holder rewrites; any change means it is alive."""

    holder: str
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LeaseRecord:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Observation:
    """A Lease record and the local monotonic time at which this replica first saw it."""

    record: LeaseRecord
    since: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading ``record`` at local monotonic time ``now`` (pure).

    An unchanged record keeps the time it was first seen; any change restarts the clock.
    """
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def expired(observation: Observation, now: float, timing: LeaseTiming) -> bool:
    """Whether the observed holder's term is over at local monotonic time ``now`` (pure).

    The term is the record's own ``leaseDurationSeconds`` (what its holder promised),
    or ours when the record has none; the record's timestamps are not consulted.
    """
    record = observation.record
    if not record.holder:
        return True
    duration = record.duration_seconds if record.duration_seconds > 0 else timing.lease_duration
    return now - observation.since > duration


def claimed_spec(
    current: dict[str, Any] | None, identity: str, timing: LeaseTiming, now: datetime.datetime
) -> dict[str, Any]:
    """The Lease spec after ``identity`` acquires or renews it at wall time ``now`` (pure).

    ``leaseDurationSeconds`` is rounded up, so followers never wait less than our term.
    """
    current = current or {}
    ours = current.get("holderIdentity") == identity
    transitions = int(current.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, math.ceil(timing.lease_duration)),
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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.clock = clock  # wall clock: only for the timestamps written into the Lease
        self.monotonic = monotonic  # every expiry and deadline is judged by this one
        self._observed: Observation | None = None
        # When our last successful acquire or renew started (monotonic); -inf: never.
        self._renewed = -math.inf

    async def _try(self) -> bool:
        """One attempt to acquire or renew. True if we hold the Lease afterwards."""
        started = self.monotonic()
        held = await self._attempt()
        if held:
            self._renewed = started
        return held

    async def _attempt(self) -> bool:
        try:
            lease = await self.api.get(LEASES, self.namespace, self.name)
        except ApiError as exc:
            if not exc.not_found:
                raise
            spec = claimed_spec(None, self.identity, self.timing, self.clock())
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec,
            }
            try:
                await self.api.create(LEASES, self.namespace, body)
            except ApiError as race:
                if race.conflict:
                    return False
                raise
            self._observed = Observation(LeaseRecord.from_spec(spec), self.monotonic())
            return True
        spec = lease.get("spec") or {}
        record = LeaseRecord.from_spec(spec)
        self._observed = observe(self._observed, record, self.monotonic())
        if record.holder != self.identity and not expired(
            self._observed, self.monotonic(), self.timing
        ):
            return False
        lease["spec"] = claimed_spec(spec, self.identity, self.timing, self.clock())
        try:
            await self.api.replace(LEASES, self.namespace, self.name, lease)  # carries its RV
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        self._observed = Observation(LeaseRecord.from_spec(lease["spec"]), self.monotonic())
        return True

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease.

        Each attempt is bounded by ``renew_deadline``, so a hanging API server only delays
        the next attempt, and a won Lease always leaves time to renew it.
        """
        logged = False
        while True:
            try:
                async with asyncio.timeout(self.timing.renew_deadline):
                    held = await self._try()
                if held:
                    _log.info("leader.acquired", lease=self.name, identity=self.identity)
                    return
            except _TRANSIENT as exc:
                _log.warning(
                    "leader.error",
                    lease=self.name,
                    error=type(exc).__name__,
                    status=getattr(exc, "status", None),
                )
            if not logged:
                _log.info("leader.waiting", lease=self.name, identity=self.identity)
                logged = True
            await asyncio.sleep(self.timing.retry_period)

    def _remaining(self) -> float:
        """Seconds left before ``renew_deadline`` passes since our last renewal."""
        return self._renewed + self.timing.renew_deadline - self.monotonic()

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew until ``renew_deadline`` passes without a renewal, then call ``on_lost``.

        Also calls ``on_lost`` at once if the Lease turns out to be someone else's (or
        was written by someone else between our read and write).
        """
        if self._renewed == -math.inf:
            raise RuntimeError("hold() needs the Lease: call acquire() first")
        while (remaining := self._remaining()) > 0:
            await asyncio.sleep(min(self.timing.retry_period, remaining))
            if (remaining := self._remaining()) <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    held = await self._try()
            except _TRANSIENT as exc:
                # Transient (a TimeoutError when the attempt used up the deadline): retry
                # while time is left.
                _log.warning(
                    "leader.renew.failed",
                    lease=self.name,
                    error=type(exc).__name__,
                    status=getattr(exc, "status", None),
                )
                continue
            if not held:
                break
        _log.error("leader.lost", lease=self.name, identity=self.identity)
        on_lost()
