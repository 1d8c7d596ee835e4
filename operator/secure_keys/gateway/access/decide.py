"""Pure decisions for a person or pipeline: may this caller read, list or rotate a key, now.

The caller is what the API server authenticated (``userInfo``: user name and groups);
a KeyRole grants to it when a subject names the user, one of its groups or, for a
ServiceAccount's user name, the ServiceAccount (``kube.keyroles.binds_user``), the role
is in the key's namespace, covers the key and holds the permission (``read`` for a
read; ``read``, ``list`` or ``rotate`` for a list, which shows each key's rollout so that
a rotation's grantee can follow it; ``rotate`` for a rotation request). ``access``
applies as for pods, with one difference: a role with ``requireMFA`` grants to a caller
whose review carried a token that completed MFA (``Caller.mfa``), and to no one else.

A refusal names what would grant it. It never says whether a key exists to a caller
that no role names for that key (no existence oracle beyond what RBAC shows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from secure_keys.core.accessreview import (
    MAX_LISTED_STRAGGLERS,
    ListedKey,
    ListedRollout,
    ListedVersion,
    ReviewSpec,
)
from secure_keys.core.stamps import format_stamp
from secure_keys.gateway.broker.policy import (
    DEFAULT_LEASE,
    BrokerRole,
    DeliveryKeyView,
    Refusal,
    VersionView,
)
from secure_keys.kube.keyroles import binds_user


@dataclass(frozen=True)
class Caller:
    """An authenticated identity, as the API server put it in the AdmissionReview."""

    username: str
    groups: tuple[str, ...]
    credential_id: str = ""
    """``userInfo.extra['authentication.kubernetes.io/credential-id']`` when the API
    server sets it (a certificate's digest, a token's JTI): the audit's session id."""
    mfa: bool = False

    def describe(self) -> str:
        shown = [g for g in self.groups if g != "system:authenticated"][:5]
        groups = f" (groups {', '.join(shown)})" if shown else ""
        return f'user "{self.username}"{groups}'


@dataclass(frozen=True)
class RotateGrant:
    view: DeliveryKeyView
    roles: tuple[str, ...]
    mfa_used: bool


@dataclass(frozen=True)
class ReadGrant:
    view: DeliveryKeyView
    version: VersionView
    expires_at: datetime
    roles: tuple[str, ...]
    mfa_used: bool


def _binding(role: BrokerRole, caller: Caller) -> bool:
    return any(
        binds_user(s, role.namespace, caller.username, caller.groups) for s in role.rules.subjects
    )


def roles_naming(
    caller: Caller, namespace: str, key: str, labels: Mapping[str, str], roles: Iterable[BrokerRole]
) -> list[BrokerRole]:
    """The live roles of ``namespace`` that name the caller and cover the key."""
    return [
        role
        for role in roles
        if not role.deleting
        and role.namespace == namespace
        and role.rules.keys.covers(key, labels)
        and _binding(role, caller)
    ]


def _lease(role: BrokerRole, now: datetime) -> datetime | None:
    """Until when this role grants (its ``ttl``, cut at its window's close); ``None`` if
    every window is closed."""
    lease = now + (role.ttl or DEFAULT_LEASE)
    if role.windows:
        closes = [c for w in role.windows if (c := w.open_until(now)) is not None]
        if not closes:
            return None
        lease = min(lease, max(closes))
    return lease


def _version(
    spec: ReviewSpec, view: DeliveryKeyView, now: datetime, tag_key: bytes | bytearray
) -> VersionView | Refusal:
    where = f'ApiKey "{view.name}"'
    if spec.previous:
        previous = view.previous(now, tag_key)
        if previous is None:
            return Refusal(
                "NoPreviousVersion", f"{where} has no previous version in its grace period"
            )
        return previous[0]
    if spec.version is not None:
        if spec.version <= view.grace_ended_through and spec.version != view.current_version:
            # `secure-keys revoke` ended this version's delivery early; a reader naming it
            # must not get it either (else a revoked, perhaps leaked, key stays readable).
            return Refusal(
                "VersionRevoked",
                f"{where}: version {spec.version} was revoked (securekeys.io/"
                "grace-ended-through); only later versions are served",
            )
        for record in view.versions:
            if record.version == spec.version and record.state in ("Active", "Archived"):
                return record
        return Refusal(
            "VersionUnavailable",
            f"{where} has no readable version {spec.version} (only Active and Archived "
            "versions are served)",
        )
    current = view.current()
    if current is None:
        return Refusal("KeyNotReady", f"{where} has no Active version yet")
    return current


def _not_granted(
    reason: str,
    caller: Caller,
    key: str,
    namespace: str,
    naming: list[BrokerRole],
    permission: str,
    *,
    also: str = "",
) -> Refusal:
    """No role grants ``permission``: say what would. Only roles that name the key by
    name are named as lacking it: one covering it by selector would tell the caller that
    the key exists and carries the selector's labels."""
    by_name = sorted(r.name for r in naming if key in r.rules.keys.names)
    extra = f" (KeyRole {', '.join(by_name)} names you without {permission})" if by_name else ""
    return Refusal(
        reason,
        f'{caller.describe()} may not {permission} ApiKey "{key}" in namespace "{namespace}"'
        f"{extra}: {also}a KeyRole there with this user or one of its groups as a subject, "
        f'"{key}" in its keys and {permission} in its permissions would grant it',
    )


def _granting_now(
    caller: Caller, key: str, granting: list[BrokerRole], permission: str, now: datetime
) -> list[tuple[datetime, BrokerRole]] | Refusal:
    """The roles among ``granting`` (those holding ``permission`` on ``key``) that grant
    to this caller now, each with its lease: ``requireMFA`` only to a caller that
    completed MFA, and only within an open time window."""
    usable = [r for r in granting if caller.mfa or not r.require_mfa]
    if not usable:
        return Refusal(
            "MfaRequired",
            f'every KeyRole granting {permission} of "{key}" requires MFA '
            f"({', '.join(sorted(r.name for r in granting))}): run `secure-keys login` "
            "with a TOTP code, then try again",
        )
    leases = [(lease, r) for r in usable if (lease := _lease(r, now)) is not None]
    if not leases:
        return Refusal(
            "OutsideTimeWindow",
            f'no time window of a KeyRole granting {permission} of "{key}" is open now',
        )
    return leases


def decide_read(
    caller: Caller,
    spec: ReviewSpec,
    namespace: str,
    apikeys: Mapping[str, DeliveryKeyView],
    roles: Iterable[BrokerRole],
    now: datetime,
    tag_key: bytes | bytearray,
) -> ReadGrant | Refusal:
    """May ``caller`` read ``spec.key`` (and which version) now."""
    view = apikeys.get(spec.key)
    labels = view.labels if view is not None else {}
    naming = roles_naming(caller, namespace, spec.key, labels, roles)
    readers = [r for r in naming if "read" in r.rules.permissions]
    if not readers:
        return _not_granted("KeyNotGranted", caller, spec.key, namespace, naming, "read")
    if view is None or view.deleting:
        return Refusal("KeyNotFound", f'no ApiKey "{spec.key}" in namespace "{namespace}"')
    leases = _granting_now(caller, spec.key, readers, "read", now)
    if isinstance(leases, Refusal):
        return leases
    version = _version(spec, view, now, tag_key)
    if isinstance(version, Refusal):
        return version
    expires = max(lease for lease, _ in leases)
    return ReadGrant(
        view=view,
        version=version,
        expires_at=expires,
        roles=tuple(sorted(r.name for _, r in leases)),
        mfa_used=caller.mfa and any(r.require_mfa for _, r in leases),
    )


def decide_rotate(
    caller: Caller,
    spec: ReviewSpec,
    namespace: str,
    apikeys: Mapping[str, DeliveryKeyView],
    roles: Iterable[BrokerRole],
    now: datetime,
    tag_key: bytes | bytearray,
) -> RotateGrant | Refusal:
    """May ``caller`` ask for a rotation of ``spec.key`` now. The same gates as a read
    (the role's subjects and keys, ``requireMFA``, ``timeWindows``) with ``rotate`` in
    place of ``read``, and two of its own: no request pending, and no older version in
    its grace period (a second rotation would take it from every pod's ``.previous``
    early: a role's ``rotate`` rotates at most once per grace period; RBAC's ``patch``
    is for the emergency). The answer never says whether an unnamed key exists."""
    view = apikeys.get(spec.key)
    labels = view.labels if view is not None else {}
    naming = roles_naming(caller, namespace, spec.key, labels, roles)
    rotators = [r for r in naming if "rotate" in r.rules.permissions]
    if not rotators:
        return _not_granted(
            "RotateNotGranted",
            caller,
            spec.key,
            namespace,
            naming,
            "rotate",
            also="patch on apikeys (Kubernetes RBAC), or ",
        )
    if view is None or view.deleting:
        return Refusal("KeyNotFound", f'no ApiKey "{spec.key}" in namespace "{namespace}"')
    leases = _granting_now(caller, spec.key, rotators, "rotate", now)
    if isinstance(leases, Refusal):
        return leases
    open_now = [r for _, r in leases]
    if view.rotation_pending:
        # One request at a time: the controller's pace bounds a grantee's rotations (each
        # archives a version, and retention destroys the oldest).
        return Refusal(
            "RotationPending",
            f'ApiKey "{spec.key}" has a rotation requested and not yet done; try again once '
            "it is (status.lastRotationRequest, `secure-keys rollout status`)",
        )
    previous = view.previous(now, tag_key)
    if previous is not None:
        return Refusal(
            "RotationTooSoon",
            f'ApiKey "{spec.key}": version {previous[0].version} is in its grace period until '
            f"{format_stamp(previous[1])}; a rotation now would end it early in every pod. "
            "A KeyRole's rotate waits for it; whoever may patch the ApiKey can rotate now",
        )
    return RotateGrant(
        view=view,
        roles=tuple(sorted(r.name for r in open_now)),
        mfa_used=caller.mfa and any(r.require_mfa for r in open_now),
    )


_LISTING = ("read", "list", "rotate")


def _listed_rollout(view: DeliveryKeyView, asked: bool) -> ListedRollout | None:
    summary = view.rollout.summary
    if summary is None:
        # The gateways write nothing for a key no pod consumes: say so only when no pod
        # of the namespace asks for it (else the rollout is unknown, not complete).
        if asked or view.rollout.replicas:
            return None
        return ListedRollout(view.current_version, consumers=0, current=0)
    return ListedRollout(
        version=summary.version,
        consumers=summary.consumers,
        current=summary.current,
        stragglers=summary.stragglers[:MAX_LISTED_STRAGGLERS],
        unnamed=summary.unnamed + max(0, len(summary.stragglers) - MAX_LISTED_STRAGGLERS),
        rolled_out_at=summary.rolled_out_at or "",
    )


def decide_list(
    caller: Caller,
    namespace: str,
    apikeys: Mapping[str, DeliveryKeyView],
    roles: Iterable[BrokerRole],
    *,
    only: str = "",
    asked: frozenset[str] = frozenset(),
) -> tuple[ListedKey, ...]:
    """The keys of ``namespace`` (``only``: that one key, if so) some role lets the
    caller read, list or rotate, with their versions and rollouts (no material).
    ``asked``: the keys some running pod of the namespace asks for (a key no pod asks
    for and without a rollout written is listed as consumed by none)."""
    roles = [
        r for r in roles if not r.deleting and r.namespace == namespace and _binding(r, caller)
    ]
    listed: list[ListedKey] = []
    for name in [only] if only else sorted(apikeys):
        view = apikeys.get(name)
        if view is None or view.deleting:
            continue
        covering = [r for r in roles if r.rules.keys.covers(name, view.labels)]
        permissions = sorted({p for r in covering for p in r.rules.permissions if p in _LISTING})
        if not permissions:
            continue
        listed.append(
            ListedKey(
                name=name,
                current_version=view.current_version,
                versions=tuple(
                    ListedVersion(v.version, v.state, v.fingerprint)
                    for v in sorted(view.versions, key=lambda v: v.version)
                ),
                permissions=tuple(permissions),
                require_mfa=all(r.require_mfa for r in covering if "read" in r.rules.permissions)
                and any("read" in r.rules.permissions for r in covering),
                rollout=_listed_rollout(view, name in asked),
                last_rotation_request=view.last_rotation_request,
            )
        )
    return tuple(listed)
