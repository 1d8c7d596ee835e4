"""KeyRoles: which ApiKeys a role grants, checked against what exists.

``resolve`` is pure: given the role's ``spec.keys`` (names and/or a label selector) and
the ApiKeys in its namespace, it returns the keys granted and the names that do not
exist. ``KeyRoleReconciler`` writes that to the KeyRole's status (``resolvedKeys``,
``missingKeys``, a Ready condition) and emits an Event when keys go missing. Who may
read what is enforced where keys are delivered (the gateway); this only keeps the
role's status honest.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secure_keys.controller.conditions import get_condition, set_condition
from secure_keys.controller.events import post_event
from secure_keys.controller.status import Retry
from secure_keys.kube.client import APIKEYS, KEYROLES, ApiError, KubeApi

_log = structlog.get_logger("secure_keys.controller")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class Requirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


class Selector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[Requirement, ...] = Field((), alias="matchExpressions")

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            value = labels.get(requirement.key)
            if requirement.operator == "Exists" and not present:
                return False
            if requirement.operator == "DoesNotExist" and present:
                return False
            if requirement.operator == "In" and value not in requirement.values:
                return False
            if requirement.operator == "NotIn" and present and value in requirement.values:
                return False
        return True


class KeySelection(_Model):
    names: tuple[str, ...] = ()
    selector: Selector | None = None


class KeyRoleSpec(_Model):
    keys: KeySelection


@dataclass(frozen=True)
class Resolution:
    granted: tuple[str, ...]
    missing: tuple[str, ...]


def resolve(
    selection: KeySelection, apikeys: Sequence[tuple[str, Mapping[str, str]]]
) -> Resolution:
    """The ApiKeys a role grants (by name or selector) and the named ones that are absent."""
    existing = {name for name, _ in apikeys}
    granted = {name for name in selection.names if name in existing}
    if selection.selector is not None:
        granted |= {name for name, labels in apikeys if selection.selector.matches(labels)}
    missing = sorted(set(selection.names) - existing)
    return Resolution(tuple(sorted(granted)), tuple(missing))


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
