"""Owns the broker's watch caches: ApiKeys (with status and delivery), KeyRoles (with
access), opted-in pods and ServiceAccounts (their uids), each poking the broker's sessions
of a namespace after every change (``on_change``), and a ServiceAccount's change also
dropping its cached TokenReviews (``on_account``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from secure_keys.gateway.broker.policy import (
    BrokerRole,
    DeliveryKeyView,
    RunningPod,
    project_delivery_key,
    project_pod,
    project_role,
)
from secure_keys.kube import annotations as ann
from secure_keys.kube.cache import WatchCache
from secure_keys.kube.client import APIKEYS, KEYROLES, JsonObject, KubeApi, Resource
from secure_keys.kube.informer import InformerEvent, object_key
from secure_keys.kube.keyroles import service_account_identities, subject_identities

PODS = Resource("", "v1", "pods")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
INJECT_SELECTOR = f"{ann.INJECT_LABEL}=true"

T = TypeVar("T")


class NotifyingCache(WatchCache[T], Generic[T]):
    """A ``WatchCache`` that calls ``on_change(namespace)`` after every object event."""

    def __init__(
        self,
        resource: Resource,
        project: Callable[[JsonObject], T | None],
        on_change: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, project, **kwargs)
        self.on_change = on_change

    def apply(self, event: InformerEvent) -> None:
        super().apply(event)
        if event.type != "LISTED":
            self.on_change(object_key(event.object)[0])


def project_account_uid(obj: JsonObject) -> str | None:
    metadata = obj.get("metadata")
    uid = metadata.get("uid") if isinstance(metadata, dict) else None
    return uid if isinstance(uid, str) else None


class AccountCache(NotifyingCache[str]):
    """ServiceAccounts (their uids); ``on_account(namespace, name)`` after every event
    of one, so its cached TokenReviews go with it."""

    def __init__(
        self, on_change: Callable[[str], None], on_account: Callable[[str, str], None]
    ) -> None:
        super().__init__(SERVICEACCOUNTS, project_account_uid, on_change)
        self.on_account = on_account

    def apply(self, event: InformerEvent) -> None:
        if event.type != "LISTED":
            namespace, name = object_key(event.object)
            before = self.get(namespace, name)
            super().apply(event)
            if before is not None and self.get(namespace, name) != before:
                self.on_account(namespace, name)
            return
        super().apply(event)


def _role_identities(role: BrokerRole) -> list[Hashable]:
    return [i for s in role.rules.subjects for i in subject_identities(s, role.namespace)]


class BrokerCaches:
    """ApiKeys (with status and delivery), KeyRoles (with access), opted-in pods,
    ServiceAccounts (uids)."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        on_account: Callable[[str, str], None] = lambda _namespace, _name: None,
    ) -> None:
        self.apikeys: NotifyingCache[DeliveryKeyView] = NotifyingCache(
            APIKEYS, project_delivery_key, on_change
        )
        self.roles: NotifyingCache[BrokerRole] = NotifyingCache(
            KEYROLES, project_role, on_change, index=_role_identities
        )
        self.pods: NotifyingCache[RunningPod] = NotifyingCache(
            PODS, project_pod, on_change, label_selector=INJECT_SELECTOR
        )
        self.accounts = AccountCache(on_change, on_account)

    @property
    def all(self) -> tuple[WatchCache[Any], ...]:
        return (self.apikeys, self.roles, self.pods, self.accounts)

    @property
    def synced(self) -> bool:
        return all(c.synced for c in self.all)

    async def run(self, api: KubeApi) -> None:
        await asyncio.gather(*(c.run(api) for c in self.all))

    def roles_for(self, pod: RunningPod) -> list[BrokerRole]:
        found: dict[str, BrokerRole] = {}
        for identity in service_account_identities(pod.namespace, pod.service_account):
            found.update(self.roles.indexed(pod.namespace, identity))
        return list(found.values())
