"""An in-memory stand-in for ``KubeApi``, for interleavings a real API server can't stage.

The e2e suite runs the controller against a real kube-apiserver. What that cannot do on
demand is change an object *between two calls of one reconcile*: a second replica
deleting a blob, a user replacing a source Secret, the API server pruning a status
field. This fake keeps objects in a dict and enforces what the controller relies on:
resourceVersion preconditions on merge patches and replaces (409), ``test`` operations
in JSON patches, uid/resourceVersion delete preconditions, finalizers delaying deletion,
and status written only through the status subresource. ``before`` hooks run before a
matching call, so a test can interleave a change; ``calls`` records every call but
lists, which ``lists`` records. ``list`` pages with ``limit`` and ``continue_``, and with
``metadata_only`` keeps only each item's metadata, as the API server does.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable
from typing import Any

from secure_keys.kube.client import ApiError, Resource

Key = tuple[str, str | None, str]
Hook = Callable[["FakeApi", str, Resource, str | None, str, Any], None]


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str | None, str, Any]] = []
        self._rv = itertools.count(100)
        self.hooks: list[tuple[str, str, str, Hook]] = []
        self.lists: list[tuple[str, str | None, int | None, str | None]] = []
        """Every list call: plural, namespace, limit, continue token (not in ``calls``)."""

    # -- test helpers -------------------------------------------------------------------
    def before(self, method: str, plural: str, subresource: str, hook: Hook) -> None:
        """Run ``hook`` (once) before the next matching call."""
        self.hooks.append((method, plural, subresource, hook))

    def put(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> None:
        """Store an object directly, as another client would (bumping its version)."""
        body = copy.deepcopy(body)
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("generation", 1)
        metadata["namespace"] = namespace
        metadata["resourceVersion"] = str(next(self._rv))
        self.objects[(resource.plural, namespace, metadata["name"])] = body

    def stored(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self.objects[(resource.plural, namespace, name)]

    def _hook(
        self, method: str, resource: Resource, ns: str | None, name: str, sub: str, arg: Any
    ) -> None:
        for index, (m, plural, subresource, hook) in enumerate(self.hooks):
            if (m, plural, subresource) == (method, resource.plural, sub):
                del self.hooks[index]
                hook(self, method, resource, ns, name, arg)
                return

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    def _get(self, resource: Resource, ns: str | None, name: str) -> dict[str, Any]:
        try:
            return self.objects[(resource.plural, ns, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f"{resource.plural} {name!r} not found") from None

    # -- the KubeApi surface --------------------------------------------------------------
    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        self.calls.append(("get", resource.plural, namespace, name, None))
        self._hook("get", resource, namespace, name, "", None)
        return copy.deepcopy(self._get(resource, namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        limit: int | None = None,
        continue_: str | None = None,
        metadata_only: bool = False,
        **_: Any,
    ) -> dict[str, Any]:
        """Items in the order stored; with ``limit``, a page and a ``continue`` token (an
        offset here, opaque to the caller) when more remain, as the API server pages."""
        self.lists.append((resource.plural, namespace, limit, continue_))
        matching = [
            v
            for (plural, ns, _name), v in self.objects.items()
            if plural == resource.plural and ns == namespace
        ]
        start = int(continue_) if continue_ else 0
        end = len(matching) if not limit else min(len(matching), start + limit)
        items = [copy.deepcopy(v) for v in matching[start:end]]
        if metadata_only:
            items = [{"kind": "PartialObjectMetadata", "metadata": v["metadata"]} for v in items]
        metadata = {"resourceVersion": str(next(self._rv))}
        if end < len(matching):
            metadata["continue"] = str(end)
        return {"items": items, "metadata": metadata}

    async def create(
        self, resource: Resource, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(
            ("create", resource.plural, namespace, body["metadata"].get("name", ""), body)
        )
        self._hook("create", resource, namespace, body["metadata"].get("name", ""), "", body)
        name = body["metadata"].get("name") or f"{body['metadata']['generateName']}{next(self._rv)}"
        if (resource.plural, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f"{name} already exists")
        body = copy.deepcopy(body)
        body["metadata"]["name"] = name
        self.put(resource, namespace, body)
        return copy.deepcopy(self._get(resource, namespace, name))

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        kind: str = "merge",
        subresource: str = "",
    ) -> dict[str, Any]:
        self.calls.append(("patch", resource.plural, namespace, name, patch))
        self._hook("patch", resource, namespace, name, subresource, patch)
        obj = self._get(resource, namespace, name)
        if kind == "json":
            for op in patch:
                path = op["path"].strip("/").split("/")
                if op["op"] == "test":
                    value: Any = obj
                    for part in path:
                        value = value[int(part)] if isinstance(value, list) else value[part]
                    if value != op["value"]:
                        raise ApiError(409, "Conflict", "test operation failed")
            for op in patch:
                if op["op"] in ("replace", "add"):  # add: onto a member (not list append)
                    *parents, last = op["path"].strip("/").split("/")
                    target = obj
                    for part in parents:
                        target = target[int(part)] if isinstance(target, list) else target[part]
                    target[last] = copy.deepcopy(op["value"])
        else:
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            patch = copy.deepcopy(patch)
            (patch.get("metadata") or {}).pop("resourceVersion", None)
            if subresource == "status":
                patch = {"status": patch.get("status") or {}}
            else:
                patch.pop("status", None)
            merged = _merge(obj, patch)
            obj.clear()
            obj.update(merged)
        result = self._bump(obj)
        if obj.get("metadata", {}).get("deletionTimestamp") and not obj["metadata"].get(
            "finalizers"
        ):
            del self.objects[(resource.plural, namespace, name)]
        return result

    async def replace(
        self, resource: Resource, namespace: str | None, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("replace", resource.plural, namespace, name, body))
        self._hook("replace", resource, namespace, name, "", body)
        obj = self._get(resource, namespace, name)
        if body["metadata"].get("resourceVersion") != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        obj.clear()
        obj.update(copy.deepcopy(body))
        return self._bump(obj)

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        preconditions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("delete", resource.plural, namespace, name, preconditions))
        self._hook("delete", resource, namespace, name, "", preconditions)
        obj = self._get(resource, namespace, name)
        for field, value in (preconditions or {}).items():
            if obj["metadata"].get(field) != value:
                raise ApiError(409, "Conflict", f"precondition failed: {field}")
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            return self._bump(obj)
        del self.objects[(resource.plural, namespace, name)]
        return {}
