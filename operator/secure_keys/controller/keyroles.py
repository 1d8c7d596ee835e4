"""KeyRoles: which ApiKeys a role grants, checked against what exists.

``resolve`` is pure (shared with the gateway: ``secure_keys.kube.keyroles``): given the
role's ``spec.keys`` (names and/or a label selector) and the ApiKeys in its namespace,
it returns the keys granted and the names that do not
exist. ``KeyRoleReconciler`` writes that to the KeyRole's status (``resolvedKeys``,
``missingKeys``, a Ready condition) and emits an Event when keys go missing. Who may
read what is enforced where keys are delivered (the gateway); this only keeps the
role's status honest.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from secure_keys.controller.conditions import get_condition, set_condition
from secure_keys.controller.events import post_event
from secure_keys.controller.status import Retry
from secure_keys.kube.client import APIKEYS, KEYROLES, ApiError, KubeApi
from secure_keys.kube.keyroles import KeySelection, Resolution, resolve

_log = structlog.get_logger("secure_keys.controller")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class KeyRoleSpec(_Model):
    keys: KeySelection


def status_for(
    current: Mapping[str, Any],
    resolution: Resolution,
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any]:
    conditions = list(current.get("conditions") or [])
    if resolution.missing:
        conditions = set_condition(
            conditions,
            "Ready",
            "False",
            "KeysMissing",
            "no ApiKey named " + ", ".join(resolution.missing) + " in this namespace",
            generation=generation,
            now=now,
        )
    else:
        conditions = set_condition(
            conditions,
            "Ready",
            "True",
            "KeysResolved",
            f"grants {len(resolution.granted)} ApiKey(s)",
            generation=generation,
            now=now,
        )
    return {
        "observedGeneration": generation,
        "resolvedKeys": list(resolution.granted),
        "missingKeys": list(resolution.missing),
        "conditions": conditions,
    }


class KeyRoleReconciler:
    def __init__(
        self,
        api: KubeApi,
        *,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        instance: str = "secure-keys-controller",
    ) -> None:
        self.api = api
        self.clock = clock
        self.instance = instance

    async def reconcile(self, namespace: str, name: str) -> None:
        try:
            await self._reconcile(namespace, name)
        except ApiError as exc:
            raise Retry(str(exc)) from None

    async def _reconcile(self, namespace: str, name: str) -> None:
        try:
            body = await self.api.get(KEYROLES, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return
            raise
        try:
            spec = KeyRoleSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            _log.warning("keyrole.invalid", namespace=namespace, keyrole=name)
            return
        listing = await self.api.list(APIKEYS, namespace)
        apikeys = [
            (item["metadata"]["name"], item["metadata"].get("labels") or {})
            for item in listing.get("items") or []
            if not item["metadata"].get("deletionTimestamp")
        ]
        resolution = resolve(spec.keys, apikeys)
        current = body.get("status") or {}
        generation = int(body["metadata"].get("generation", 1))
        status = status_for(current, resolution, generation, self.clock())
        if all(current.get(k) == v for k, v in status.items()):
            return
        was = get_condition(current.get("conditions") or [], "Ready")
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": status,
        }
        await self.api.patch(KEYROLES, namespace, name, patch, subresource="status")
        if resolution.missing and (was is None or was.get("reason") != "KeysMissing"):
            await self._event(body, ", ".join(resolution.missing))

    async def _event(self, body: dict[str, Any], missing: str) -> None:
        message = f"no ApiKey named {missing} in this namespace"
        await post_event(
            self.api, body, "KeyRole", "Warning", "KeysMissing", message, instance=self.instance
        )
