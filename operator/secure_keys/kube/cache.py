"""Watch-fed caches: one resource's objects, each kept as a small frozen projection.

A ``WatchCache`` consumes ``informer()`` events for one resource and keeps, per object,
only what its ``project`` function extracts (a frozen value), indexed by namespace, so a
reader (the gateway's admission handler) answers from memory and makes no API call. The
raw objects are dropped as soon as they are projected: an ApiKey's ``spec.source`` (a
sealed blob, a Secret reference) is never kept. ``synced`` turns true after the first
complete list; a relist after a 410 replaces what changed meanwhile (the informer's
synthetic events), so the cache converges on what the API server stores.

An optional ``index`` (as client-go's indexers) files each object, within its
namespace, under the keys it returns, so a reader can ask for "the objects of this
namespace under this key" without scanning them all (the gateway asks for the KeyRoles
that name one ServiceAccount among 1,000 in a namespace).

``run_caches`` feeds several caches with one informer per distinct resource and
selectors: caches that keep different projections of the same objects (the gateway's
webhook and broker both keep ApiKeys, KeyRoles and ServiceAccounts) share one list and
one watch, so each object is received, parsed and remembered by the informer once.

``apply`` is the whole state change and is synchronous, so tests drive it with events.
``generation`` changes whenever what the cache holds changes (an object added, removed,
or projected differently; the first list), and only then: an update that leaves the
projection as it was (a status write) keeps it, so a reader can keep what it derived
from the cache for as long as the generation stays the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import structlog

from secure_keys.kube.client import JsonObject, KubeApi, Resource
from secure_keys.kube.informer import Backoff, InformerEvent, informer, object_key

_log = structlog.get_logger("secure_keys.kube.cache")

T = TypeVar("T")
_EMPTY: Mapping[str, object] = MappingProxyType({})


class WatchCache(Generic[T]):
    """The projected objects of one resource, current as of the last watch event."""

    def __init__(
        self,
        resource: Resource,
        project: Callable[[JsonObject], T | None],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        index: Callable[[T], Iterable[Hashable]] | None = None,
    ) -> None:
        self.resource = resource
        self.project = project
        """Object -> projection; None drops the object (say, one that cannot be parsed)."""
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._by_namespace: dict[str, dict[str, T]] = {}
        self._index_of = index
        self._index: dict[tuple[str, Hashable], dict[str, T]] = {}
        self._count = 0
        self.generation = 0
        """Changes whenever the projections held (or ``synced``) change; see the module."""
        self._synced = asyncio.Event()
        self.rejected = 0
        """Objects the projection refused since start (they are left out of the cache)."""

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def __len__(self) -> int:
        return self._count

    def get(self, namespace: str, name: str) -> T | None:
        return self._by_namespace.get(namespace, {}).get(name)

    def namespaces(self) -> list[str]:
        """The namespaces that hold at least one object now."""
        return list(self._by_namespace)

    def in_namespace(self, namespace: str) -> Mapping[str, T]:
        """The namespace's objects by name (a live view: do not keep it across awaits)."""
        found = self._by_namespace.get(namespace)
        if found is None:
            return _EMPTY  # type: ignore[return-value]
        return found

    def indexed(self, namespace: str, key: Hashable) -> Mapping[str, T]:
        """The namespace's objects filed under ``key`` by the index (a live view)."""
        found = self._index.get((namespace, key))
        if found is None:
            return _EMPTY  # type: ignore[return-value]
        return found

    def _file(self, namespace: str, name: str, value: T, *, add: bool) -> None:
        if self._index_of is None:
            return
        for key in set(self._index_of(value)):
            slot = (namespace, key)
            if add:
                self._index.setdefault(slot, {})[name] = value
                continue
            bucket = self._index.get(slot)
            if bucket is not None:
                bucket.pop(name, None)
                if not bucket:
                    del self._index[slot]

    def apply(self, event: InformerEvent) -> None:
        """Update the cache with one informer event (pure state change, no I/O)."""
        if event.type == "LISTED":
            if not self._synced.is_set():
                self.generation += 1
            self._synced.set()
            return
        namespace, name = object_key(event.object)
        if event.type == "DELETED":
            self._remove(namespace, name)
            return
        projected = self.project(event.object)
        if projected is None:
            self.rejected += 1
            _log.warning(
                "cache.object_rejected",
                resource=self.resource.plural,
                namespace=namespace,
                name=name,
            )
            self._remove(namespace, name)
            return
        bucket = self._by_namespace.setdefault(namespace, {})
        previous = bucket.get(name)
        if previous is None:
            self._count += 1
        elif previous == projected:
            return  # nothing this cache holds changed: same generation
        else:
            self._file(namespace, name, previous, add=False)
        self.generation += 1
        bucket[name] = projected
        self._file(namespace, name, projected, add=True)

    def _remove(self, namespace: str, name: str) -> None:
        bucket = self._by_namespace.get(namespace)
        if bucket is None or name not in bucket:
            return
        self._file(namespace, name, bucket.pop(name), add=False)
        self._count -= 1
        self.generation += 1
        if not bucket:
            del self._by_namespace[namespace]

    @property
    def source(self) -> tuple[Resource, str | None, str | None]:
        """What its informer lists and watches: the resource and both selectors."""
        return (self.resource, self.label_selector, self.field_selector)

    async def run(self, api: KubeApi, *, backoff: Backoff | None = None) -> None:
        """Feed the cache from an informer until cancelled."""
        await run_caches(api, [self], backoff=backoff)


def shared_sources(
    caches: Iterable[WatchCache[Any]],
) -> dict[tuple[Resource, str | None, str | None], list[WatchCache[Any]]]:
    """The caches grouped by what their informer watches, in order (pure)."""
    groups: dict[tuple[Resource, str | None, str | None], list[WatchCache[Any]]] = {}
    for cache in caches:
        groups.setdefault(cache.source, []).append(cache)
    return groups


async def run_caches(
    api: KubeApi, caches: Iterable[WatchCache[Any]], *, backoff: Backoff | None = None
) -> None:
    """Feed every cache until cancelled, one informer per ``shared_sources`` group: each
    event is applied to the group's caches in turn."""

    async def feed(
        source: tuple[Resource, str | None, str | None], members: list[WatchCache[Any]]
    ) -> None:
        resource, label_selector, field_selector = source
        async for event in informer(
            api,
            resource,
            None,
            label_selector=label_selector,
            field_selector=field_selector,
            backoff=backoff,
        ):
            for cache in members:
                cache.apply(event)

    await asyncio.gather(*(feed(k, v) for k, v in shared_sources(caches).items()))
