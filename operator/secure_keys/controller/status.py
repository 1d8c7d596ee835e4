"""Writes to ApiKey objects: status patches, the finalizer, Events, and knowing our own.

Every write carries the resourceVersion it was computed from, so a concurrent change
fails with 409 (``Retry``) instead of being overwritten; a 400/422 becomes
``WriteRejected`` (retrying cannot help). The resourceVersion of each object version the
controller wrote itself, or read and found at its fixed point (``settled``), is
remembered, so the watch does not queue the key again for a change it already knows: at
a restart, an ApiKey reconciled (after the controller's keys opened) before the watch's
initial list reached it is not reconciled a second time for that list's event.
"""

from __future__ import annotations

from typing import Any

from secure_keys.controller.events import COMPONENT, EventType, post_event
from secure_keys.controller.models import FINALIZER
from secure_keys.controller.own_writes import OwnWrites
from secure_keys.kube.client import APIKEYS, ApiError, KubeApi


class Retry(Exception):
    """Try this key again later, with backoff."""


class WriteRejected(RuntimeError):
    """The API server refused a write as invalid (400/422): retrying cannot help."""


class StatusNotPersisted(RuntimeError):
    """A status write came back without fields the controller depends on."""


def write_error(exc: ApiError) -> Exception:
    """The exception a failed write turns into."""
    if exc.status in (400, 422):
        return WriteRejected(f"the API server rejected a write: {exc.message}")
    return Retry(str(exc))


class ApiKeyWriter:
    def __init__(self, api: KubeApi, *, instance: str = COMPONENT) -> None:
        self.api = api
        self.instance = instance
        self._written = OwnWrites()

    async def patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        patch = {"metadata": {"resourceVersion": metadata["resourceVersion"]}, "status": status}
        try:
            written = await self.api.patch(
                APIKEYS, metadata["namespace"], metadata["name"], patch, subresource="status"
            )
        except ApiError as exc:
            if exc.not_found:
                return body
            raise write_error(exc) from None
        return self._remember(written)

    async def add_finalizer(self, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        patch = {
            "metadata": {
                "resourceVersion": metadata["resourceVersion"],
                "finalizers": [*(metadata.get("finalizers") or []), FINALIZER],
            }
        }
        try:
            written = await self.api.patch(APIKEYS, metadata["namespace"], metadata["name"], patch)
        except ApiError as exc:
            raise write_error(exc) from None
        return self._remember(written)

    async def remove_finalizer(self, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        remaining = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
        patch_ops = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": metadata["resourceVersion"],
            },
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]
        try:
            await self.api.patch(
                APIKEYS, metadata["namespace"], metadata["name"], patch_ops, kind="json"
            )
        except ApiError as exc:
            if not exc.not_found:
                raise Retry(str(exc)) from None

    async def event(
        self, body: dict[str, Any], type_: EventType, reason: str, message: str
    ) -> None:
        await post_event(self.api, body, "ApiKey", type_, reason, message, instance=self.instance)

    # -- our own writes -------------------------------------------------------------------
    def _remember(self, apikey: dict[str, Any]) -> dict[str, Any]:
        metadata = apikey["metadata"]
        self._written.remember(metadata["namespace"], metadata["name"], metadata["resourceVersion"])
        return apikey

    def settled(self, apikey: dict[str, Any]) -> None:
        """``apikey`` was read and found at its fixed point: its watch event, if it comes
        later, carries nothing new."""
        self._remember(apikey)

    def wrote(self, namespace: str, name: str, resource_version: str) -> bool:
        return self._written.wrote(namespace, name, resource_version)

    def forget(self, namespace: str, name: str) -> None:
        self._written.forget(namespace, name)
