"""Admission-time authorization: may this pod's ServiceAccount read the keys it names? Pure.

A key is granted when a KeyRole **in the pod's namespace** (keys never cross namespaces)
that is not being deleted has a subject naming the pod's ServiceAccount (as RBAC matches
it: ``secure_keys.kube.keyroles.binds_service_account``, decided here by comparing the
identities each side names, ``KeyRoleView.identities`` kept per role), covers the key
(by name or selector) and lists ``read`` among its permissions. The verdict names every
refused key and, for each, what would grant it. KeyRole ``access`` conditions (TTL,
time windows, MFA) are not checked here: they bound each delivery, and the broker
enforces them then.

The snapshot is what the gateway's caches hold; ``ApiKeyView`` and ``KeyRoleView`` are
the projections they keep (names, labels, delivery file name; never key material).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from secure_keys.kube.keyroles import (
    Identity,
    KeyRoleRules,
    service_account_identities,
    subject_identities,
)


@dataclass(frozen=True)
class ApiKeyView:
    name: str
    labels: Mapping[str, str]
    file_name: str
    """``spec.delivery.fileName``, else the ApiKey's name."""
    deleting: bool = False


@dataclass(frozen=True)
class KeyRoleView:
    name: str
    namespace: str
    rules: KeyRoleRules
    deleting: bool = False

    @functools.cached_property
    def identities(self) -> frozenset[Identity]:
        """Every ServiceAccount identity the role's subjects name (``subject_identities``),
        worked out on first use and then kept with the view, which is immutable."""
        return frozenset(
            identity
            for subject in self.rules.subjects
            for identity in subject_identities(subject, self.namespace)
        )


class Snapshot(Protocol):
    """What authorization reads: the gateway's caches, or a table in a test."""

    def apikeys(self, namespace: str) -> Mapping[str, ApiKeyView]: ...

    def keyroles_naming(self, namespace: str, service_account: str) -> Iterable[KeyRoleView]:
        """The KeyRoles of ``namespace`` with a subject that may name the ServiceAccount
        (more is harmless: each is checked again; fewer would refuse a bound pod)."""
        ...

    def service_account_exists(self, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    files: tuple[str, ...]
    """The delivery file name of each requested key, in the pod's order (when allowed)."""
    problems: tuple[str, ...]
    reason: str = ""
    """Empty when allowed; else KeyNotFound, ServiceAccountNotFound, KeyNotGranted or
    FileNameClash."""

    @property
    def allowed(self) -> bool:
        return not self.problems


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def authorize(
    namespace: str, service_account: str, keys: tuple[str, ...], snapshot: Snapshot
) -> Verdict:
    """Whether ``service_account`` in ``namespace`` may receive ``keys``, and if not, why."""
    apikeys = snapshot.apikeys(namespace)
    missing = [k for k in keys if k not in apikeys or apikeys[k].deleting]
    problems: list[str] = []
    reason = ""
    if missing:
        reason = "KeyNotFound"
        gone = [k for k in missing if k in apikeys]
        absent = [k for k in missing if k not in apikeys]
        if absent:
            problems.append(f'no ApiKey {_quoted(absent)} in namespace "{namespace}"')
        if gone:
            problems.append(f'ApiKey {_quoted(gone)} in namespace "{namespace}" is being deleted')
    if not snapshot.service_account_exists(namespace, service_account):
        reason = reason or "ServiceAccountNotFound"
        problems.append(f'ServiceAccount "{service_account}" does not exist in "{namespace}"')
        return Verdict((), tuple(problems), reason)

    wanted = service_account_identities(namespace, service_account)
    roles = [
        role
        for role in snapshot.keyroles_naming(namespace, service_account)
        if not role.deleting
        and role.namespace == namespace
        # binds_service_account for some subject, each side's identities worked out once
        and not role.identities.isdisjoint(wanted)
    ]
    readers = [role.rules.keys for role in roles if "read" in role.rules.permissions]
    refused: list[str] = []
    hints: list[str] = []
    for key in keys:
        if key in missing:
            continue
        labels = apikeys[key].labels
        if any(selection.covers(key, labels) for selection in readers):
            continue
        refused.append(key)
        covering = [role for role in roles if role.rules.keys.covers(key, labels)]
        for role in covering:
            granted = ", ".join(role.rules.permissions)
            hints.append(f'KeyRole "{role.name}" covers "{key}" but grants only {granted}')
    if refused:
        reason = reason or "KeyNotGranted"
        message = (
            f'ServiceAccount "{service_account}" may not read ApiKey {_quoted(refused)}: '
            f'no KeyRole in namespace "{namespace}" names it as a subject with "read" on '
            + ("it" if len(refused) == 1 else "them")
        )
        if hints:
            message += " (" + "; ".join(hints) + ")"
        message += (
            f'. To grant it, create a KeyRole in namespace "{namespace}" with subjects '
            f"[{{kind: ServiceAccount, name: {service_account}}}], keys.names "
            f"[{', '.join(refused)}] and permissions [read]"
        )
        problems.append(message)
    if problems:
        return Verdict((), tuple(problems), reason)
    files = tuple([apikeys[k].file_name for k in keys])
    clashes = _clashes(keys, files)
    if clashes:
        return Verdict((), tuple(clashes), "FileNameClash")
    return Verdict(files, ())


def _clashes(keys: tuple[str, ...], files: tuple[str, ...]) -> list[str]:
    """Two keys of one pod delivered to the same file: the second would overwrite the
    first (the sidecar refuses, and the pod would wait for its keys forever)."""
    first: dict[str, str] = {}
    problems: list[str] = []
    for key, file_name in zip(keys, files, strict=True):
        other = first.setdefault(file_name, key)
        if other != key:
            problems.append(
                f'ApiKeys "{other}" and "{key}" are both delivered to file "{file_name}" '
                "(spec.delivery.fileName): a pod cannot hold both; change one's fileName "
                "or ask for one of them"
            )
    return problems
