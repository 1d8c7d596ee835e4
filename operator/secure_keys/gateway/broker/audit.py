"""Owns the broker's audit trail: one chained JSON record per delivery and refusal, and
Kubernetes Events on the pod.

Records have the original design's shape: ``timestamp``, ``event_type``
(``key.delivered``, ``key.refused``, ``key.revoked``), ``user_id`` (the
ServiceAccount's user name), ``key_id`` (``<namespace>/<apikey>@<version>``, or without
``@`` when no version is involved), ``action`` (``read``), ``result`` (``success`` or
``denied``), ``ip_address``, ``user_agent``, ``session_id`` (the pod's uid) and
``additional_context`` (reason, message, pod name). Each is chained by
``core.auditchain`` and written through structlog under the logger
``secure_keys.audit`` (event ``audit``), so a log collector gets one JSON line per record.

Events are aggregated so that a crash-looping pod cannot flood the API server: a
``KeyDelivered`` Event once per pod, key and version; a Warning ``KeyDenied`` at most once
per pod and reason per ``denied_interval`` seconds. Event writes are fire-and-forget.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from secure_keys.core.auditchain import AuditChain

_AUDIT_LOGGER = "secure_keys.audit"


def _log_record(record: dict[str, Any]) -> None:
    """Log one audit record as chained. The configured chain's ``TimeStamper`` would
    replace the record's own ``timestamp``, which its mac covers (the logged line would
    then never verify), so this one call runs the chain without it."""
    processors = [
        p
        for p in structlog.get_config()["processors"]
        if not isinstance(p, structlog.processors.TimeStamper)
    ]
    logger = structlog.wrap_logger(
        None, processors=processors, logger_factory_args=(_AUDIT_LOGGER,)
    )
    logger.info("audit", **record)


_events_log = structlog.get_logger("secure_keys.gateway.events")


class EventSink(Protocol):
    async def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...


class AuditLog:
    def __init__(
        self,
        chain: AuditChain,
        *,
        emit: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._chain = chain
        self._emit = emit or _log_record
        self._clock = clock

    def record(
        self,
        *,
        event_type: str,
        user_id: str,
        key_id: str,
        result: str,
        ip_address: str,
        user_agent: str,
        session_id: str,
        context: Mapping[str, Any],
        action: str = "read",
    ) -> dict[str, Any]:
        record = self._chain.link(
            {
                "timestamp": self._clock().isoformat(),
                "event_type": event_type,
                "user_id": user_id,
                "key_id": key_id,
                "action": action,
                "result": result,
                "ip_address": ip_address,
                "user_agent": user_agent,
                "session_id": session_id,
                "additional_context": dict(context),
            }
        )
        self._emit(record)
        return record


def pod_event(
    pod: Mapping[str, str], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod['name']}.", "namespace": pod["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["name"],
            "namespace": pod["namespace"],
            "uid": pod["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "secure-keys-gateway"},
        "reportingComponent": "secure-keys-gateway",
        "reportingInstance": "secure-keys-gateway",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class PodEvents:
    """Aggregated Events on pods (see the module docstring)."""

    def __init__(
        self,
        sink: EventSink | None,
        *,
        denied_interval: float = 600.0,
        max_remembered: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._interval = denied_interval
        self._max = max_remembered
        self._clock = clock
        self._seen: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def _first(self, key: tuple[str, ...], interval: float | None) -> bool:
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and (interval is None or now - last < interval):
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True

    def delivered(self, pod: Mapping[str, str], key: str, version: int) -> None:
        if self._first(("delivered", pod["uid"], key, str(version)), None):
            self._post(pod, "Normal", "KeyDelivered", f"ApiKey {key} version {version} delivered")

    def denied(self, pod: Mapping[str, str], reason: str, message: str) -> None:
        if self._first(("denied", pod["uid"], reason), self._interval):
            self._post(pod, "Warning", "KeyDenied", f"{reason}: {message}")

    def _post(self, pod: Mapping[str, str], type_: str, reason: str, message: str) -> None:
        if self._sink is None:
            return
        body = pod_event(pod, type_, reason, message, datetime.now(UTC))
        task = asyncio.get_running_loop().create_task(self._send(pod["namespace"], body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            await self._sink.create_event(namespace, body)  # type: ignore[union-attr]
        except Exception as exc:  # an Event is best effort
            _events_log.warning("event.failed", error=type(exc).__name__, reason=body["reason"])
