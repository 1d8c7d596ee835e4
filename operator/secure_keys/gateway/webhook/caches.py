"""The gateway's watch-fed caches: ApiKeys, KeyRoles and ServiceAccounts, cluster-wide.

Each is a ``secure_keys.kube.cache.WatchCache`` fed by our informer (list, then watch,
relist on 410), keeping only a small projection: for an ApiKey its name, labels,
delivery file name and whether it is being deleted (``spec.source`` is never read, so a
sealed blob or a Secret reference never stays in this process); for a KeyRole its
subjects, key selection and permissions; for a ServiceAccount nothing but its name.
KeyRoles are indexed by the ServiceAccount identities their subjects name, so finding
the roles of a pod's ServiceAccount does not scan the namespace's roles.
``GatewayCaches`` is the ``Snapshot`` the admission pipeline reads, so an admission
request makes no API call. ``synced`` is true once all three have listed once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from secure_keys.gateway.webhook.authorize import ApiKeyView, KeyRoleView
from secure_keys.kube.cache import WatchCache
from secure_keys.kube.client import APIKEYS, KEYROLES, JsonObject, KubeApi, Resource
from secure_keys.kube.informer import labels_of, metadata_of
from secure_keys.kube.keyroles import (
    Identity,
    KeyRoleRules,
    service_account_identities,
    subject_identities,
)

SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")


def project_apikey(obj: JsonObject) -> ApiKeyView | None:
    metadata = metadata_of(obj)
    name = metadata.get("name")
    if not isinstance(name, str):
        return None
    spec = obj.get("spec")
    delivery = spec.get("delivery") if isinstance(spec, dict) else None
    file_name = delivery.get("fileName") if isinstance(delivery, dict) else None
    return ApiKeyView(
        name=name,
        labels=labels_of(metadata),
        file_name=file_name if isinstance(file_name, str) and file_name else name,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


def project_keyrole(obj: JsonObject) -> KeyRoleView | None:
    metadata = metadata_of(obj)
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    try:
        rules = KeyRoleRules.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None  # the CRD schema makes this unreachable for stored objects
    return KeyRoleView(name, namespace, rules, deleting=bool(metadata.get("deletionTimestamp")))


def _identities(role: KeyRoleView) -> list[Identity]:
    """Index a KeyRole under every ServiceAccount identity its subjects can name."""
    return [i for s in role.rules.subjects for i in subject_identities(s, role.namespace)]


def project_service_account(obj: JsonObject) -> bool | None:
    return True if isinstance(metadata_of(obj).get("name"), str) else None


class GatewayCaches:
    """The three caches, and the ``Snapshot`` view over them."""

    def __init__(self) -> None:
        self.apikeys: WatchCache[ApiKeyView] = WatchCache(APIKEYS, project_apikey)
        self.keyroles: WatchCache[KeyRoleView] = WatchCache(
            KEYROLES, project_keyrole, index=_identities
        )
        self.service_accounts: WatchCache[bool] = WatchCache(
            SERVICEACCOUNTS, project_service_account
        )

    @property
    def all(self) -> tuple[WatchCache[Any], ...]:
        return (self.apikeys, self.keyroles, self.service_accounts)

    @property
    def synced(self) -> bool:
        return all(cache.synced for cache in self.all)

    @property
    def generation(self) -> tuple[int, ...]:
        """Changes whenever anything the three caches hold changes."""
        return (
            self.apikeys.generation,
            self.keyroles.generation,
            self.service_accounts.generation,
        )

    async def wait_synced(self) -> None:
        await asyncio.gather(*(cache.wait_synced() for cache in self.all))

    async def run(self, api: KubeApi) -> None:
        """Feed all three until cancelled."""
        await asyncio.gather(*(cache.run(api) for cache in self.all))

    # -- Snapshot --------------------------------------------------------------------
    def apikeys_in(self, namespace: str) -> Mapping[str, ApiKeyView]:
        return self.apikeys.in_namespace(namespace)

    def keyroles_naming(self, namespace: str, service_account: str) -> list[KeyRoleView]:
        found: dict[str, KeyRoleView] = {}
        for identity in service_account_identities(namespace, service_account):
            found.update(self.keyroles.indexed(namespace, identity))
        return list(found.values())

    def service_account_exists(self, namespace: str, name: str) -> bool:
        return self.service_accounts.get(namespace, name) is not None


class CacheSnapshot:
    """``GatewayCaches`` seen through the ``Snapshot`` protocol."""

    def __init__(self, caches: GatewayCaches) -> None:
        self._caches = caches

    def apikeys(self, namespace: str) -> Mapping[str, ApiKeyView]:
        return self._caches.apikeys_in(namespace)

    def keyroles_naming(self, namespace: str, service_account: str) -> list[KeyRoleView]:
        return self._caches.keyroles_naming(namespace, service_account)

    def service_account_exists(self, namespace: str, name: str) -> bool:
        return self._caches.service_account_exists(namespace, name)
