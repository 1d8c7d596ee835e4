"""Kubernetes Events about our resources: a pure builder and a best-effort poster.

Messages carry names, version numbers and keyed fingerprints only. Posting never fails
a reconcile: the status already records what the Event reports.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

import structlog

from secure_keys.controller.models import GROUP, VERSION
from secure_keys.core.stamps import format_stamp
from secure_keys.kube.client import EVENTS, ApiError, KubeApi

COMPONENT = "secure-keys-controller"
MAX_MESSAGE = 1024
_log = structlog.get_logger("secure_keys.controller")

EventType = Literal["Normal", "Warning"]


def build_event(
    body: dict[str, Any],
    kind: str,
    type_: EventType,
    reason: str,
    message: str,
    *,
    instance: str,
    now: datetime.datetime,
) -> dict[str, Any]:
    metadata = body["metadata"]
    stamp = format_stamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(
    api: KubeApi,
    body: dict[str, Any],
    kind: str,
    type_: EventType,
    reason: str,
    message: str,
    *,
    instance: str,
) -> None:
    event = build_event(
        body,
        kind,
        type_,
        reason,
        message,
        instance=instance,
        now=datetime.datetime.now(datetime.UTC),
    )
    try:
        await api.create(EVENTS, body["metadata"]["namespace"], event)
    except ApiError as exc:
        _log.warning("event.failed", reason=reason, status=exc.status)
