"""Owns the record of the controller's own writes: the object versions it wrote itself.

A watch event for an object version this process wrote carries nothing the reconciler
does not already know, so the key is not queued again. One reconcile writes an object
several times in a row (a new ApiKey: its finalizer, then two status patches), and the
watch delivers each version, often after the next write has been made: so the last
``KEPT`` versions written are remembered per object, not only the last one. Otherwise
every new key would be reconciled a second time for nothing (two reads and a plan).
Resource versions are opaque: they are only ever compared for equality.
"""

from __future__ import annotations

KEPT = 4
"""Versions remembered per object: more than one reconcile writes in a row."""


class OwnWrites:
    def __init__(self) -> None:
        self._written: dict[tuple[str, str], tuple[str, ...]] = {}

    def remember(self, namespace: str, name: str, resource_version: str) -> None:
        slot = (namespace, name)
        self._written[slot] = (*self._written.get(slot, ())[-(KEPT - 1) :], resource_version)

    def written(self, namespace: str, name: str) -> tuple[str, ...]:
        """The versions remembered for this object, oldest first."""
        return self._written.get((namespace, name), ())

    def wrote(self, namespace: str, name: str, resource_version: str) -> bool:
        return resource_version in self._written.get((namespace, name), ())

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)
