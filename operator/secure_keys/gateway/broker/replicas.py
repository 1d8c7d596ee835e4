"""Owns which gateway replicas are alive: the pods of the gateway's own Deployment, watched
in its own namespace with its own label selector, so the rollout tracker can remove the
``status.rollout.replicas`` entries of replicas that no longer exist (docs/rollout.md,
"Replica death").

A replica is alive while its pod exists, is not being deleted (no deletionTimestamp: a
draining replica withdraws its own entries) and has not finished (phase ``Failed``, as an
evicted pod stays, or ``Succeeded``). A container restarted in place keeps its pod and
its name, so it stays alive. ``names()`` is ``None`` until the first list: nothing is
pruned on a partial picture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from secure_keys.gateway.broker.caches import PODS
from secure_keys.kube.client import KubeApi
from secure_keys.kube.informer import InformerEvent, informer, object_key

_ENDED = frozenset({"Failed", "Succeeded"})


def alive(pod: Mapping[str, Any]) -> bool:
    """Whether a gateway pod's replica may still be writing (pure)."""
    metadata = pod.get("metadata")
    status = pod.get("status")
    if not isinstance(metadata, Mapping) or metadata.get("deletionTimestamp"):
        return False
    return not (isinstance(status, Mapping) and status.get("phase") in _ENDED)


class ReplicaPods:
    """The names of the live gateway pods in ``namespace`` matching ``selector``."""

    def __init__(self, namespace: str, selector: str) -> None:
        self.namespace = namespace
        self.selector = selector
        self.on_gone: Callable[[str], None] = lambda _name: None
        """Called with a replica's name when its pod stops being alive."""
        self.on_listed: Callable[[], None] = lambda: None
        """Called after the first complete list."""
        self._live: set[str] = set()
        self._synced = False

    def names(self) -> frozenset[str] | None:
        """The live replicas, or ``None`` before the first complete list."""
        return frozenset(self._live) if self._synced else None

    def apply(self, event: InformerEvent) -> None:
        """Update from one informer event (pure state change, and the callbacks)."""
        if event.type == "LISTED":
            first = not self._synced
            self._synced = True
            if first:
                self.on_listed()
            return
        namespace, name = object_key(event.object)
        if namespace != self.namespace:
            return
        if event.type != "DELETED" and alive(event.object):
            self._live.add(name)
        elif name in self._live:
            self._live.discard(name)
            self.on_gone(name)

    async def run(self, api: KubeApi) -> None:
        """Feed from a namespaced watch until cancelled."""
        async for event in informer(api, PODS, self.namespace, label_selector=self.selector):
            self.apply(event)
