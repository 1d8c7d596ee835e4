"""KeyRole status: which ApiKeys a role grants, checked against what exists.

The role semantics (parsing ``spec.keys``, ``resolve``) are pure and shared with the
gateway in ``secure_keys.kube.keyroles``; this module is the controller's side of them:
given the role's ``spec.keys`` (names and/or a label selector) and the ApiKeys in its
namespace, ``KeyRoleReconciler`` writes the keys granted and the names that do not exist
to the KeyRole's status (``resolvedKeys``, ``missingKeys``, a Ready condition) and emits
an Event when keys go missing. Who may read what is enforced where keys are delivered
(the gateway); this only keeps the role's status honest. ``roles_to_requeue`` decides
which roles an ApiKey event can affect (only a change of existence or labels can), so the
watch does not fan every ApiKey write out to every role of the namespace. Resolution
lists the namespace's ApiKeys a page at a time as metadata only
(``KubeApi.list(..., metadata_only=True)``: a ``PartialObjectMetadataList``), so the
sealed sources and statuses it has no use for are never sent to the controller, and it
keeps only names and labels.

The names and labels listed are kept per namespace and shared by the next resolutions
until an ApiKey of the namespace appears, goes or changes its labels
(``apikeys_changed``, called from the watch): a restart requeues every KeyRole, and
1,000 roles each listing 10,000 ApiKeys was ten million objects sent and read. A list
that was under way when such a change came is used once and not kept; the change
requeues the roles it can affect (``roles_to_requeue``), which then list afresh. What is
kept always came from the API server whole, never from the watch's partial view.
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


LIST_PAGE = 25
"""ApiKeys asked for per list call. The list is of metadata only, but labels,
annotations and managedFields are still unbounded, so a page bounds what one resolution
holds at a time."""


def selection_of(spec: Mapping[str, Any] | None) -> KeySelection | None:
    """A KeyRole's ``spec.keys``, or ``None`` if the spec does not parse (such a role is
    never resolved, so no ApiKey change can alter it)."""
    try:
        return KeyRoleSpec.model_validate(spec or {}).keys
    except ValidationError:
        return None


def roles_to_requeue(
    roles: Mapping[str, KeySelection | None],
    name: str,
    before: Mapping[str, str] | None,
    after: Mapping[str, str] | None,
) -> list[str]:
    """The roles whose resolution an ApiKey's change can alter, sorted.

    ``before`` and ``after`` are the ApiKey's labels, or ``None`` while it does not exist
    (or is being deleted, which resolution treats alike). A role resolves an ApiKey from
    its name, its existence and its labels only, so a change of spec or status alters no
    role, and a role is requeued only if it covered the key before and not after, or the
    other way round.
    """
    if before == after:
        return []
    changed = []
    for role, selection in roles.items():
        if selection is None:
            continue
        was = before is not None and selection.covers(name, before)
        now = after is not None and selection.covers(name, after)
        if was != now:
            changed.append(role)
    return sorted(changed)


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
        self._listed: dict[str, tuple[int, list[tuple[str, dict[str, str]]]]] = {}
        self._changes: dict[str, int] = {}

    def apikeys_changed(self, namespace: str) -> None:
        """An ApiKey of ``namespace`` appeared, went or changed its labels."""
        self._changes[namespace] = self._changes.get(namespace, 0) + 1
        self._listed.pop(namespace, None)

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
        resolution = resolve(spec.keys, await self._kept_names_and_labels(namespace))
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

    async def _kept_names_and_labels(self, namespace: str) -> list[tuple[str, dict[str, str]]]:
        """``_names_and_labels``, shared while no ApiKey of the namespace changed."""
        changes = self._changes.get(namespace, 0)
        kept = self._listed.get(namespace)
        if kept is not None and kept[0] == changes:
            return kept[1]
        listed = await self._names_and_labels(namespace)
        if self._changes.get(namespace, 0) == changes:
            self._listed[namespace] = (changes, listed)
        return listed

    async def _names_and_labels(self, namespace: str) -> list[tuple[str, dict[str, str]]]:
        """Every live ApiKey of the namespace as (name, labels), a page at a time.

        Only names and labels decide a resolution, so the pages are metadata only: the
        specs (sealed sources of tens of KiB) and statuses stay on the API server. Each
        page is dropped before the next is asked for.
        """
        apikeys: list[tuple[str, dict[str, str]]] = []
        token: str | None = None
        while True:
            page = await self.api.list(
                APIKEYS, namespace, limit=LIST_PAGE, continue_=token, metadata_only=True
            )
            for item in page.get("items") or []:
                metadata = item["metadata"]
                if not metadata.get("deletionTimestamp"):
                    apikeys.append((metadata["name"], dict(metadata.get("labels") or {})))
            del page["items"]
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return apikeys

    async def _event(self, body: dict[str, Any], missing: str) -> None:
        message = f"no ApiKey named {missing} in this namespace"
        await post_event(
            self.api, body, "KeyRole", "Warning", "KeysMissing", message, instance=self.instance
        )
