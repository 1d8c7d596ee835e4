"""KeyRole semantics shared by the controller and the gateway: parsing and resolution.

Pure: no I/O. A KeyRole's ``spec.keys`` (names and/or a label selector) is resolved
against the ApiKeys of its namespace by ``resolve``; the controller writes the result to
the role's status, the gateway uses it to decide whether a pod may receive a key.
``KeyRoleRules`` is the part of a spec that says who may do what, and
``binds_service_account`` says whether a subject names a given ServiceAccount, matching
the way Kubernetes RBAC matches a ServiceAccount's identity (its ServiceAccount name, its
user name ``system:serviceaccount:<ns>:<name>``, and its groups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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

    def covers(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether an existing ApiKey with this name and these labels is selected."""
        if name in self.names:
            return True
        return self.selector is not None and self.selector.matches(labels)


class Subject(_Model):
    kind: Literal["ServiceAccount", "User", "Group"]
    name: str
    namespace: str | None = None


Permission = Literal["read", "list", "rotate", "audit"]


class KeyRoleRules(_Model):
    """Who (subjects) may do what (permissions) with which keys: a KeyRole's spec."""

    subjects: tuple[Subject, ...]
    keys: KeySelection
    permissions: tuple[Permission, ...] = ("read",)
    """The CRD defaults it to [read]; the default here only covers unstored objects."""


@dataclass(frozen=True)
class Resolution:
    granted: tuple[str, ...]
    missing: tuple[str, ...]


def resolve(
    selection: KeySelection, apikeys: Sequence[tuple[str, Mapping[str, str]]]
) -> Resolution:
    """The ApiKeys a role grants (by name or selector) and the named ones that are absent."""
    return resolve_among(selection, dict(apikeys))


def resolve_among(selection: KeySelection, apikeys: Mapping[str, Mapping[str, str]]) -> Resolution:
    """``resolve`` over the ApiKeys' labels by name: a role that only names keys costs
    as many lookups as it names, however many ApiKeys there are."""
    granted = {name for name in selection.names if name in apikeys}
    if selection.selector is not None:
        granted |= {name for name, labels in apikeys.items() if selection.selector.matches(labels)}
    missing = sorted({name for name in selection.names if name not in apikeys})
    return Resolution(tuple(sorted(granted)), tuple(missing))


SERVICE_ACCOUNT_GROUPS = "system:serviceaccounts"
"""The group of every ServiceAccount; ``system:serviceaccounts:<ns>`` is its namespace's."""
_SERVICE_ACCOUNT_USER = "system:serviceaccount:"

Identity = tuple[str, ...]
"""("sa", namespace, name), ("user", name) or ("group", name): what a subject names,
comparably."""


def subject_identities(subject: Subject, role_namespace: str) -> tuple[Identity, ...]:
    """What a subject of a KeyRole in ``role_namespace`` can match of a ServiceAccount."""
    if subject.kind == "ServiceAccount":
        return (("sa", subject.namespace or role_namespace, subject.name),)
    if subject.kind == "User":
        parts = subject.name.split(":")
        if subject.name.startswith(_SERVICE_ACCOUNT_USER) and len(parts) == 4:
            return (("sa", parts[2], parts[3]),)
        return (("user", subject.name),)  # a person: never a pod's identity
    return (("group", subject.name),)


def service_account_identities(namespace: str, service_account: str) -> tuple[Identity, ...]:
    """Everything a subject may name to mean this ServiceAccount, as RBAC matches it."""
    return (
        ("sa", namespace, service_account),
        ("group", SERVICE_ACCOUNT_GROUPS),
        ("group", f"{SERVICE_ACCOUNT_GROUPS}:{namespace}"),
        ("group", "system:authenticated"),
    )


def user_identities(username: str, groups: Sequence[str]) -> tuple[Identity, ...]:
    """Everything a subject may name to mean an authenticated user, as RBAC matches it:
    the user name, each of its groups, and for a ServiceAccount's user name
    (``system:serviceaccount:<ns>:<name>``) the ServiceAccount itself. The groups are
    the API server's (``system:authenticated`` among them), never the caller's claim."""
    found: list[Identity] = [("user", username)]
    found.extend(("group", group) for group in groups)
    parts = username.split(":")
    if username.startswith(_SERVICE_ACCOUNT_USER) and len(parts) == 4:
        found.append(("sa", parts[2], parts[3]))
    return tuple(found)


def binds_user(subject: Subject, role_namespace: str, username: str, groups: Sequence[str]) -> bool:
    """Whether ``subject`` of a KeyRole in ``role_namespace`` names this user."""
    wanted = user_identities(username, groups)
    return any(i in wanted for i in subject_identities(subject, role_namespace))


def binds_service_account(
    subject: Subject, role_namespace: str, namespace: str, service_account: str
) -> bool:
    """Whether ``subject`` of a KeyRole in ``role_namespace`` names this ServiceAccount.

    As RBAC: kind ServiceAccount with its name (and namespace, defaulting to the role's),
    kind User with its user name ``system:serviceaccount:<ns>:<name>``, or kind Group
    with one of its groups (all ServiceAccounts, those of its namespace, or all
    authenticated identities).
    """
    wanted = service_account_identities(namespace, service_account)
    return any(i in wanted for i in subject_identities(subject, role_namespace))
