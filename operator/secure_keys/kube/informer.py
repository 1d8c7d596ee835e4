"""List-then-watch ("informer") over ``KubeApi``: a stream of changes that survives 410s.

``informer()`` lists the objects matching a label and field selector, then watches from
the list's resourceVersion, with both selectors applied by the API server (so objects
outside them never reach this process). It yields ``InformerEvent``s:

* ``ADDED`` / ``MODIFIED`` / ``DELETED`` as the watch reports them;
* after a relist, synthetic events for what changed while no watch was open: ``ADDED``
  for new objects, ``MODIFIED`` for a new resourceVersion, ``DELETED`` for objects gone
  (a synthetic ``DELETED`` carries only the metadata the informer kept: name, namespace,
  uid, resourceVersion, labels, ownerReferences);
* ``LISTED`` (with an empty object) after every complete list, so a consumer can check
  for an object that should exist but was not listed.

It relists when the watch expires (``WatchExpired``: 410 as a status or an ERROR event),
resumes from the newest resourceVersion it saw (bookmarks included) when a watch ends or
fails otherwise, and backs off exponentially, with jitter, while the API server fails.
It keeps only the metadata above for each object, never the objects themselves. A list
is read a page (``limit``/``continue``, ``page_size`` objects) at a time, and a page's
events are handed over, each dropped once the consumer has taken it, before the next
page is asked for: at most one page of whole objects is held, however many are listed
(holding a whole list until its last event was consumed kept 10,000 parsed ApiKeys,
about 200 MiB, in the gateway after every start).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import structlog

from secure_keys.kube.client import ApiError, JsonObject, KubeApi, Resource, WatchExpired

_log = structlog.get_logger("secure_keys.kube.informer")

EventType = Literal["ADDED", "MODIFIED", "DELETED", "LISTED"]
ObjectKey = tuple[str, str]
"""(namespace or "", name)."""
_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences")


@dataclass(frozen=True)
class InformerEvent:
    type: EventType
    object: JsonObject = field(repr=False)
    synthetic: bool = False
    """Made up by a relist (the watch did not report it)."""

    @property
    def metadata(self) -> Mapping[str, Any]:
        metadata: Mapping[str, Any] = self.object.get("metadata") or {}
        return metadata


LISTED = InformerEvent("LISTED", {})


class _ShortWatch(Exception):
    """A watch closed within a second without a single event."""


@dataclass(frozen=True)
class Backoff:
    """Delays between failed list/watch attempts: initial, doubling, capped, jittered."""

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2

    def delay(self, failures: int, retry_after: float | None, unit_random: float) -> float:
        wanted = self.initial * float(2 ** min(failures, 30))
        if retry_after is not None:
            wanted = max(wanted, retry_after)
        return min(wanted, self.maximum) * (1 + self.jitter * unit_random)

    def after(self, failures: int, exc: BaseException) -> float:
        """The delay before the next attempt, after ``failures`` failed ones and this
        ``exc``: an API error's Retry-After is honoured, the jitter drawn here."""
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        return self.delay(failures, retry_after, random.random())  # noqa: S311 - jitter


def metadata_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj``'s metadata, or an empty one if it is missing or not an object (pure)."""
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


NO_LABELS: Mapping[str, str] = MappingProxyType({})
"""An object without labels: one shared empty mapping, not one per cached object."""


def labels_of(metadata: Mapping[str, Any]) -> Mapping[str, str]:
    """``metadata.labels`` as strings; ``NO_LABELS`` when there are none (pure)."""
    labels = metadata.get("labels")
    if not isinstance(labels, dict) or not labels:
        return NO_LABELS
    return {str(k): str(v) for k, v in labels.items()}


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def stub(obj: Mapping[str, Any]) -> JsonObject:
    """The little the informer remembers of an object (pure)."""
    metadata = obj.get("metadata") or {}
    return {"metadata": {k: metadata[k] for k in _KEPT_METADATA if k in metadata}}


def page_events(
    known: Mapping[ObjectKey, JsonObject], items: list[JsonObject]
) -> tuple[list[InformerEvent], dict[ObjectKey, JsonObject]]:
    """What one page of a list changed against what was known, and the page's stubs (pure).

    An object re-created under the same name (another uid) is reported as DELETED then
    ADDED, as a watch would have reported it.
    """
    events: list[InformerEvent] = []
    now: dict[ObjectKey, JsonObject] = {}
    for item in items:
        key = object_key(item)
        now[key] = stub(item)
        before = known.get(key)
        if before is None:
            events.append(InformerEvent("ADDED", item, synthetic=True))
            continue
        old, new = before["metadata"], now[key]["metadata"]
        if old.get("uid") != new.get("uid"):
            events.append(InformerEvent("DELETED", before, synthetic=True))
            events.append(InformerEvent("ADDED", item, synthetic=True))
        elif old.get("resourceVersion") != new.get("resourceVersion"):
            events.append(InformerEvent("MODIFIED", item, synthetic=True))
    return events, now


def vanished_events(
    known: Mapping[ObjectKey, JsonObject], listed: Collection[ObjectKey]
) -> list[InformerEvent]:
    """A synthetic DELETED for each known object a complete list did not name (pure)."""
    return [
        InformerEvent("DELETED", before, synthetic=True)
        for key, before in known.items()
        if key not in listed
    ]


def relist_events(
    known: Mapping[ObjectKey, JsonObject], items: list[JsonObject]
) -> tuple[list[InformerEvent], dict[ObjectKey, JsonObject]]:
    """What changed between what was known and a fresh list, and the new known set (pure):
    ``page_events`` over the whole list, then ``vanished_events``."""
    events, now = page_events(known, items)
    return events + vanished_events(known, now), now


async def informer(
    api: KubeApi,
    resource: Resource,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    page_size: int = 500,
    watch_timeout: int = 300,
    backoff: Backoff | None = None,
) -> AsyncGenerator[InformerEvent, None]:
    """Changes to the matching objects, forever (cancel the consuming task to stop)."""
    backoff = backoff or Backoff()
    what = {
        "resource": resource.plural,
        "namespace": namespace,
        "label_selector": label_selector,
        "field_selector": field_selector,
    }
    known: dict[ObjectKey, JsonObject] = {}
    resource_version: str | None = None
    failures = 0
    while True:
        try:
            if resource_version is None:
                # A page at a time: its events are handed over (and dropped) before the
                # next page is asked for, so no more than one page of whole objects is
                # ever held here, whatever the number of objects listed.
                listed: set[ObjectKey] = set()
                token: str | None = None
                while True:
                    page = await api.list(
                        resource,
                        namespace,
                        label_selector=label_selector,
                        field_selector=field_selector,
                        limit=page_size,
                        continue_=token,
                    )
                    metadata = page.get("metadata") or {}
                    token = metadata.get("continue") or None
                    events, stubs = page_events(known, page.get("items") or [])
                    del page
                    # What the consumer is told, the informer knows: a list that fails
                    # midway leaves ``known`` as the consumer saw it.
                    known.update(stubs)
                    listed.update(stubs)
                    del stubs
                    events.reverse()
                    while events:
                        yield events.pop()
                    if token is None:
                        break
                failures = 0
                resource_version = str(metadata.get("resourceVersion") or "")
                events = vanished_events(known, listed)
                known = {key: known[key] for key in listed}
                del listed
                events.reverse()
                while events:
                    yield events.pop()
                yield LISTED
            started, seen = time.monotonic(), 0
            async for raw in api.watch(
                resource,
                namespace,
                resource_version=resource_version,
                label_selector=label_selector,
                field_selector=field_selector,
                timeout_seconds=watch_timeout,
            ):
                failures, seen = 0, seen + 1
                kind = raw.get("type")
                obj: JsonObject = raw.get("object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    resource_version = str(version)
                if kind == "DELETED":
                    known.pop(object_key(obj), None)
                    yield InformerEvent("DELETED", obj)
                elif kind in ("ADDED", "MODIFIED"):
                    known[object_key(obj)] = stub(obj)
                    yield InformerEvent("ADDED" if kind == "ADDED" else "MODIFIED", obj)
                # BOOKMARK: only its resourceVersion matters, recorded above.
            if not seen and time.monotonic() - started < 1:
                # As client-go's reflector: a watch that ends at once, empty, is a failure
                # (a proxy cutting it, say); back off instead of spinning.
                raise _ShortWatch
        except WatchExpired:
            _log.info("informer.relist", reason="watch expired (410)", **what)
            resource_version = None
        except Exception as exc:  # an informer outlives any one failure
            delay = backoff.after(failures, exc)
            failures += 1
            # Only an API error's own text is logged: other exceptions may quote data.
            _log.warning(
                "informer.failed",
                error=str(exc) if isinstance(exc, ApiError) else type(exc).__name__,
                retry_in=round(delay, 2),
                **what,
            )
            await asyncio.sleep(delay)
