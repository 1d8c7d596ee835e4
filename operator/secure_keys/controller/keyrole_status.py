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
until an ApiKey of the namespace appears, goes or changes its labels in a way the kept
list does not already show (``apikeys_changed``, called from the watch): a restart
requeues every KeyRole, and 1,000 roles each listing 10,000 ApiKeys was ten million
objects sent and read. One list of a namespace runs at a time, and the resolutions that
need it meanwhile wait for it rather than list too. A change that comes while a list is
under way is checked against the finished list: if the list shows the key as the change
says (the watch's events at a restart all do), the list is kept; otherwise it is used
once and not kept, the change requeues the roles it can affect (``roles_to_requeue``),
and they list afresh. What is kept always came from the API server whole, never from
the watch's partial view.

``RoleSelections`` is what the watch knows of each role's ``spec.keys``, indexed by the
key names it lists, so an ApiKey event looks only at the roles naming it and the roles
with a selector, not at every role of the namespace.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from secure_keys.controller.conditions import get_condition, set_condition
from secure_keys.controller.events import post_event
from secure_keys.controller.status import Retry
from secure_keys.kube.client import APIKEYS, KEYROLES, ApiError, KubeApi
from secure_keys.kube.keyroles import KeySelection, Resolution, resolve_among

_log = structlog.get_logger("secure_keys.controller")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class KeyRoleSpec(_Model):
    keys: KeySelection


LIST_PAGE = 100
"""ApiKeys asked for per list call. The list is of metadata only, but labels,
annotations and managedFields are still unbounded, so a page bounds what one resolution
holds at a time (about 0.2 MiB of JSON for 100 of the bench's ApiKeys). The pages are
read one after the other while the roles of the namespace wait for the list: 25 a page
was 400 calls, some 5 s with every worker waiting, at 10,000 ApiKeys."""


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


class RoleSelections:
    """Each KeyRole's ``spec.keys`` by namespace (``None`` for a spec that does not
    parse), indexed by the ApiKey names a role lists, so ``affected`` looks only at the
    roles that name the key and the roles with a selector."""

    def __init__(self) -> None:
        self._roles: dict[str, dict[str, KeySelection | None]] = {}
        self._naming: dict[tuple[str, str], set[str]] = {}
        self._selecting: dict[str, set[str]] = {}

    def roles(self, namespace: str) -> Mapping[str, KeySelection | None]:
        return self._roles.get(namespace, {})

    def set(self, namespace: str, role: str, selection: KeySelection | None) -> None:
        self.remove(namespace, role)
        self._roles.setdefault(namespace, {})[role] = selection
        if selection is None:
            return
        for name in selection.names:
            self._naming.setdefault((namespace, name), set()).add(role)
        if selection.selector is not None:
            self._selecting.setdefault(namespace, set()).add(role)

    def remove(self, namespace: str, role: str) -> None:
        roles = self._roles.get(namespace)
        if roles is None or role not in roles:
            return
        selection = roles.pop(role)
        if not roles:
            del self._roles[namespace]
        if selection is None:
            return
        for name in selection.names:
            naming = self._naming.get((namespace, name))
            if naming is not None:
                naming.discard(role)
                if not naming:
                    del self._naming[(namespace, name)]
        selecting = self._selecting.get(namespace)
        if selecting is not None:
            selecting.discard(role)
            if not selecting:
                del self._selecting[namespace]

    def affected(
        self,
        namespace: str,
        name: str,
        before: Mapping[str, str] | None,
        after: Mapping[str, str] | None,
    ) -> list[str]:
        """``roles_to_requeue`` over the roles that can cover ``name`` (sorted)."""
        if before == after:
            return []
        roles = self._roles.get(namespace, {})
        candidates = self._naming.get((namespace, name), set()) | self._selecting.get(
            namespace, set()
        )
        return roles_to_requeue({r: roles[r] for r in candidates}, name, before, after)


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
        self._listed: dict[str, dict[str, dict[str, str]]] = {}
        """Per namespace, the kept list: each live ApiKey's labels by name."""
        self._journals: dict[str, list[tuple[str, Mapping[str, str] | None]]] = {}
        """Per namespace with a list under way, the changes seen since it began."""
        self._listing: dict[str, asyncio.Lock] = {}

    def apikeys_changed(self, namespace: str, name: str, labels: Mapping[str, str] | None) -> None:
        """An ApiKey of ``namespace`` appeared, went or changed its labels: ``labels`` is
        ``None`` once it is gone or being deleted. A kept list that already shows it so
        stays kept."""
        journal = self._journals.get(namespace)
        if journal is not None:
            journal.append((name, None if labels is None else dict(labels)))
        kept = self._listed.get(namespace)
        if kept is not None and not _shows(kept, name, labels):
            del self._listed[namespace]

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
        resolution = resolve_among(spec.keys, await self._kept_labels(namespace))
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

    async def _kept_labels(self, namespace: str) -> Mapping[str, Mapping[str, str]]:
        """Each live ApiKey's labels by name (``_names_and_labels``), shared while no
        ApiKey of the namespace changed."""
        lock = self._listing.setdefault(namespace, asyncio.Lock())
        async with lock:  # one list of a namespace at a time; the others wait for it
            kept = self._listed.get(namespace)
            if kept is None:
                journal: list[tuple[str, Mapping[str, str] | None]] = []
                self._journals[namespace] = journal
                try:
                    listed = dict(await self._names_and_labels(namespace))
                finally:
                    del self._journals[namespace]
                if all(_shows(listed, name, labels) for name, labels in journal):
                    self._listed[namespace] = listed
                kept = listed
        return kept

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


def _shows(
    listed: Mapping[str, Mapping[str, str]], name: str, labels: Mapping[str, str] | None
) -> bool:
    """Whether a list shows ApiKey ``name`` as live with ``labels`` (or, for ``None``,
    as absent)."""
    return listed.get(name) == (None if labels is None else dict(labels))
