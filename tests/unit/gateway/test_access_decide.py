"""``gateway.access.decide``: who may read or list a key, as the API server authenticated
them (user name and groups), under KeyRoles with User, Group and ServiceAccount subjects."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from secure_keys.core.accessreview import ListedRollout, ReviewSpec
from secure_keys.core.integrity import archived_tag
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.gateway.access.decide import (
    Caller,
    ReadGrant,
    RotateGrant,
    decide_list,
    decide_read,
    decide_rotate,
)
from secure_keys.gateway.broker.policy import (
    BrokerRole,
    DeliveryKeyView,
    Refusal,
    project_delivery_key,
    project_role,
)
from secure_keys.kube.rollout import parse_rollout

NS = "payments"
MONDAY_NOON = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
TAG_KEY = bytes(32)
RECIPIENT = RecipientPrivateKey.generate().public()


def _key(name: str, labels: dict[str, str] | None = None) -> DeliveryKeyView:
    view = project_delivery_key(
        {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "labels": labels or {},
            },
            "spec": {},
            "status": {
                "currentVersion": 2,
                "versions": [
                    {"version": 1, "state": "Archived", "fingerprint": "f1"},
                    {"version": 2, "state": "Active", "fingerprint": "f2"},
                ],
            },
        }
    )
    assert view is not None
    return view


KEYS = {"stripe": _key("stripe"), "github": _key("github", {"team": "a"})}


def _role(
    subjects: list[dict[str, str]],
    keys: dict[str, Any],
    permissions: tuple[str, ...] = ("read",),
    access: dict[str, Any] | None = None,
    name: str = "r",
    namespace: str = NS,
) -> BrokerRole:
    spec: dict[str, Any] = {"subjects": subjects, "keys": keys, "permissions": list(permissions)}
    if access:
        spec["access"] = access
    role = project_role({"metadata": {"name": name, "namespace": namespace}, "spec": spec})
    assert role is not None
    return role


ALICE = Caller("alice", ("devs", "system:authenticated"))
CI = Caller("system:serviceaccount:payments:deployer", ("system:serviceaccounts",))


def _read(caller: Caller, *roles: BrokerRole, **spec: Any) -> ReadGrant | Refusal:
    key = spec.pop("key", "stripe")
    return decide_read(
        caller,
        ReviewSpec("read", key=key, recipient=RECIPIENT, **spec),
        NS,
        KEYS,
        roles,
        MONDAY_NOON,
        TAG_KEY,
    )


@pytest.mark.parametrize(
    ("subject", "caller"),
    [
        ({"kind": "User", "name": "alice"}, ALICE),
        ({"kind": "Group", "name": "devs"}, ALICE),
        ({"kind": "Group", "name": "system:authenticated"}, ALICE),
        ({"kind": "ServiceAccount", "name": "deployer"}, CI),
        ({"kind": "User", "name": "system:serviceaccount:payments:deployer"}, CI),
    ],
)
def test_a_subject_naming_the_user_its_group_or_its_service_account_grants_read(
    subject: dict[str, str], caller: Caller
) -> None:
    result = _read(caller, _role([subject], {"names": ["stripe"]}))
    assert isinstance(result, ReadGrant)
    assert result.version.version == 2
    assert result.roles == ("r",)


@pytest.mark.parametrize(
    "subject",
    [
        {"kind": "User", "name": "alicia"},
        {"kind": "Group", "name": "ops"},
        {"kind": "ServiceAccount", "name": "alice"},
        {"kind": "ServiceAccount", "name": "deployer", "namespace": "other"},
    ],
)
def test_a_subject_naming_someone_else_refuses_and_says_what_would_grant(
    subject: dict[str, str],
) -> None:
    result = _read(ALICE, _role([subject], {"names": ["stripe"]}))
    assert isinstance(result, Refusal)
    assert result.reason == "KeyNotGranted"
    assert 'user "alice" (groups devs)' in result.message
    assert "would grant it" in result.message


def test_a_role_of_another_namespace_or_without_read_does_not_grant() -> None:
    alice = [{"kind": "User", "name": "alice"}]
    elsewhere = _role(alice, {"names": ["stripe"]}, namespace="other")
    lister = _role(alice, {"names": ["stripe"]}, permissions=("list",), name="lister")
    refused = _read(ALICE, elsewhere, lister)
    assert isinstance(refused, Refusal)
    assert refused.reason == "KeyNotGranted"
    assert "lister names you without read" in refused.message


def test_no_existence_oracle_for_a_caller_no_role_names() -> None:
    missing = _read(ALICE, key="nope")
    assert isinstance(missing, Refusal)
    existing = _read(ALICE, key="stripe")
    assert isinstance(existing, Refusal)
    assert (missing.reason, existing.reason) == ("KeyNotGranted", "KeyNotGranted")
    named = _read(
        ALICE, _role([{"kind": "User", "name": "alice"}], {"names": ["nope"]}), key="nope"
    )
    assert isinstance(named, Refusal)
    assert named.reason == "KeyNotFound"


def test_a_selector_grants_the_keys_it_matches() -> None:
    role = _role([{"kind": "User", "name": "alice"}], {"selector": {"matchLabels": {"team": "a"}}})
    assert isinstance(_read(ALICE, role, key="github"), ReadGrant)
    assert isinstance(_read(ALICE, role, key="stripe"), Refusal)


def test_require_mfa_grants_only_to_a_caller_that_completed_mfa() -> None:
    role = _role(
        [{"kind": "User", "name": "alice"}], {"names": ["stripe"]}, access={"requireMFA": True}
    )
    refused = _read(ALICE, role)
    assert isinstance(refused, Refusal)
    assert refused.reason == "MfaRequired"
    assert "secure-keys login" in refused.message
    granted = _read(Caller("alice", ("devs",), mfa=True), role)
    assert isinstance(granted, ReadGrant)
    assert granted.mfa_used


def test_ttl_bounds_how_long_the_reader_may_keep_it_and_a_closed_window_refuses() -> None:
    alice = [{"kind": "User", "name": "alice"}]
    short = _read(ALICE, _role(alice, {"names": ["stripe"]}, access={"ttl": "5m"}))
    assert isinstance(short, ReadGrant)
    assert short.expires_at == MONDAY_NOON + timedelta(minutes=5)
    closed = {"timeWindows": [{"days": ["Sat"], "start": "09:00", "end": "17:00"}]}
    refused = _read(ALICE, _role(alice, {"names": ["stripe"]}, access=closed))
    assert isinstance(refused, Refusal)
    assert refused.reason == "OutsideTimeWindow"


def test_a_version_is_chosen_among_active_and_archived_only() -> None:
    role = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]})
    old = _read(ALICE, role, version=1)
    assert isinstance(old, ReadGrant)
    assert old.version.fingerprint == "f1"
    absent = _read(ALICE, role, version=7)
    assert isinstance(absent, Refusal)
    assert absent.reason == "VersionUnavailable"
    # version 1's archivedAt carries no controller tag: --previous is not believed
    untagged = _read(ALICE, role, previous=True)
    assert isinstance(untagged, Refusal)
    assert untagged.reason == "NoPreviousVersion"


def test_a_revoked_version_is_not_read_by_naming_it() -> None:
    """Hostile: `secure-keys revoke --version 1` ends version 1's grace; `get --version 1`
    must not hand it out anyway (it stays Archived until the controller destroys it)."""
    role = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]})
    revoked = dataclasses.replace(KEYS["stripe"], grace_ended_through=1)
    refused = decide_read(
        ALICE,
        ReviewSpec("read", key="stripe", recipient=RECIPIENT, version=1),
        NS,
        {"stripe": revoked},
        (role,),
        MONDAY_NOON,
        TAG_KEY,
    )
    assert isinstance(refused, Refusal)
    assert refused.reason == "VersionRevoked"
    current = decide_read(
        ALICE,
        ReviewSpec("read", key="stripe", recipient=RECIPIENT, version=2),
        NS,
        {"stripe": revoked},
        (role,),
        MONDAY_NOON,
        TAG_KEY,
    )
    assert isinstance(current, ReadGrant)


def test_list_shows_the_keys_a_role_lets_the_caller_read_or_list() -> None:
    roles = [
        _role([{"kind": "Group", "name": "devs"}], {"names": ["stripe"]}, permissions=("list",)),
        _role([{"kind": "User", "name": "bob"}], {"names": ["github"]}, name="bobs"),
    ]
    listed = decide_list(ALICE, NS, KEYS, roles)
    assert [(k.name, k.permissions) for k in listed] == [("stripe", ("list",))]
    assert [v.fingerprint for v in listed[0].versions] == ["f1", "f2"]
    assert decide_list(Caller("mallory", ()), NS, KEYS, roles) == ()


def test_list_shows_a_rotate_grantee_its_key_and_the_rollout_and_can_name_one_key() -> None:
    """A KeyRole's rotate grantee follows its rotation through list reviews (`rotate
    --wait` without RBAC on ApiKeys): the key is listed with permission rotate and the
    rollout the gateways wrote; ``only`` narrows the answer to one key, and a key no role
    covers stays unlisted (no existence oracle)."""
    rolling = dataclasses.replace(
        KEYS["stripe"],
        rollout=parse_rollout(
            {
                "rollout": {
                    "version": 2,
                    "consumers": 5,
                    "current": 4,
                    "stragglers": ["web-4"],
                    "unnamedStragglers": 0,
                }
            }
        ),
    )
    rolling = dataclasses.replace(rolling, last_rotation_request="2026-12-07T10:00:00Z-0a1b2c")
    keys = {**KEYS, "stripe": rolling}
    oncall = _role(
        [{"kind": "User", "name": "alice"}], {"names": ["stripe"]}, permissions=("rotate",)
    )
    [listed] = decide_list(ALICE, NS, keys, [oncall])
    assert (listed.name, listed.permissions, listed.current_version) == ("stripe", ("rotate",), 2)
    assert listed.rollout == ListedRollout(2, 5, 4, ("web-4",), 0, "")
    assert listed.last_rotation_request == "2026-12-07T10:00:00Z-0a1b2c"  # what --wait seeks
    assert decide_list(ALICE, NS, keys, [oncall], only="stripe") == (listed,)
    assert decide_list(ALICE, NS, keys, [oncall], only="github") == ()
    assert decide_list(ALICE, NS, keys, [oncall], only="no-such-key") == ()


def test_list_says_a_key_no_pod_asks_for_is_consumed_by_none_and_otherwise_nothing() -> None:
    """No rollout is written for a key nobody consumes; the answer says so (0 of 0, so a
    grantee's `rotate --wait` ends) only when no running pod asks for the key: while one
    does and no gateway has written its rollout, the rollout is unknown."""
    reader = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]})
    [idle] = decide_list(ALICE, NS, KEYS, [reader])
    assert idle.rollout == ListedRollout(2, 0, 0)
    [asked] = decide_list(ALICE, NS, KEYS, [reader], asked=frozenset({"stripe"}))
    assert asked.rollout is None


def _rotate(caller: Caller, *roles: BrokerRole, key: str = "stripe") -> RotateGrant | Refusal:
    spec = ReviewSpec("rotate", key=key, recipient=RECIPIENT)
    return decide_rotate(caller, spec, NS, KEYS, roles, MONDAY_NOON, TAG_KEY)


def test_rotate_is_granted_only_by_a_role_holding_rotate() -> None:
    alice = [{"kind": "User", "name": "alice"}]
    reader = _role(alice, {"names": ["stripe"]}, name="reader")
    refused = _rotate(ALICE, reader)
    assert isinstance(refused, Refusal)
    assert refused.reason == "RotateNotGranted"
    assert "reader names you without rotate" in refused.message
    # A role covering the key only by selector is not named: that would tell a caller
    # without rotate that the key exists and carries the selector's labels.
    by_label = _role(alice, {"selector": {"matchLabels": {"team": "a"}}}, name="team-a")
    quiet = _rotate(ALICE, by_label, key="github")
    assert isinstance(quiet, Refusal)
    assert "team-a" not in quiet.message
    assert "patch on apikeys (Kubernetes RBAC)" in refused.message
    rotator = _role(alice, {"names": ["stripe"]}, permissions=("rotate",), name="oncall")
    granted = _rotate(ALICE, reader, rotator)
    assert isinstance(granted, RotateGrant)
    assert (granted.view.name, granted.roles) == ("stripe", ("oncall",))
    other_key = _rotate(ALICE, rotator, key="github")
    assert isinstance(other_key, Refusal)
    assert other_key.reason == "RotateNotGranted"


def test_rotate_keeps_the_roles_mfa_window_and_no_existence_oracle() -> None:
    alice = [{"kind": "User", "name": "alice"}]
    mfa = _role(alice, {"names": ["stripe"]}, ("rotate",), access={"requireMFA": True})
    refused = _rotate(ALICE, mfa)
    assert isinstance(refused, Refusal)
    assert refused.reason == "MfaRequired"
    granted = _rotate(Caller("alice", ("devs",), mfa=True), mfa)
    assert isinstance(granted, RotateGrant)
    assert granted.mfa_used
    closed = {"timeWindows": [{"days": ["Sat"], "start": "09:00", "end": "17:00"}]}
    shut = _rotate(ALICE, _role(alice, {"names": ["stripe"]}, ("rotate",), access=closed))
    assert isinstance(shut, Refusal)
    assert shut.reason == "OutsideTimeWindow"
    missing, unnamed = _rotate(ALICE, key="nope"), _rotate(ALICE, key="stripe")
    assert isinstance(missing, Refusal)
    assert isinstance(unnamed, Refusal)
    assert missing.reason == unnamed.reason == "RotateNotGranted"
    named = _rotate(ALICE, _role(alice, {"names": ["nope"]}, ("rotate",)), key="nope")
    assert isinstance(named, Refusal)
    assert named.reason == "KeyNotFound"


def test_rotate_waits_while_an_earlier_request_is_not_yet_honoured() -> None:
    """One request at a time per key: the controller's pace bounds a grantee's rotations."""

    def key(requested: str, honoured: str | None) -> DeliveryKeyView:
        status: dict[str, Any] = {"currentVersion": 1, "versions": []}
        if honoured is not None:
            status["lastRotationRequest"] = honoured
        annotations = {"securekeys.io/rotate-requested-at": requested}
        meta = {"name": "stripe", "namespace": NS, "uid": "u", "annotations": annotations}
        view = project_delivery_key({"metadata": meta, "spec": {}, "status": status})
        assert view is not None
        return view

    role = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]}, ("rotate",))
    spec = ReviewSpec("rotate", key="stripe", recipient=RECIPIENT)
    for pending in (key("t2-b", "t1-a"), key("t1-a", None)):
        refused = decide_rotate(ALICE, spec, NS, {"stripe": pending}, [role], MONDAY_NOON, TAG_KEY)
        assert isinstance(refused, Refusal)
        assert refused.reason == "RotationPending"
    honoured = key("t1-a", "t1-a")
    granted = decide_rotate(ALICE, spec, NS, {"stripe": honoured}, [role], MONDAY_NOON, TAG_KEY)
    assert isinstance(granted, RotateGrant)


def test_a_role_rotates_at_most_once_per_grace_period() -> None:
    """A second rotation while the previous version's grace runs would take it from every
    pod's .previous early: a role's rotate waits; RBAC's patch does not."""
    archived_at = MONDAY_NOON - timedelta(minutes=10)
    stamp = archived_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "currentVersion": 2,
        "versions": [
            {
                "version": 1,
                "state": "Archived",
                "fingerprint": "f1",
                "archivedAt": stamp,
                "archiveTag": archived_tag(TAG_KEY, "uid-stripe", 1, stamp),
            },
            {"version": 2, "state": "Active", "fingerprint": "f2"},
        ],
    }
    meta = {"name": "stripe", "namespace": NS, "uid": "uid-stripe"}
    spec_body = {"rotation": {"gracePeriod": "1h"}}
    view = project_delivery_key({"metadata": meta, "spec": spec_body, "status": status})
    assert view is not None
    role = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]}, ("rotate",))
    spec = ReviewSpec("rotate", key="stripe", recipient=RECIPIENT)
    keys = {"stripe": view}
    refused = decide_rotate(ALICE, spec, NS, keys, [role], MONDAY_NOON, TAG_KEY)
    assert isinstance(refused, Refusal)
    assert refused.reason == "RotationTooSoon"
    assert "version 1 is in its grace period until 2025-01-06T12:50:00Z" in refused.message
    later = MONDAY_NOON + timedelta(minutes=51)
    assert isinstance(decide_rotate(ALICE, spec, NS, keys, [role], later, TAG_KEY), RotateGrant)


def test_rotate_waits_while_a_version_is_pending() -> None:
    """The controller records the request with the new Pending version and archives the
    old one in a later write: in between, neither the annotation nor the grace says a
    rotation is under way, the Pending record does."""
    status = {
        "currentVersion": 1,
        "lastRotationRequest": "t1-a",
        "versions": [
            {"version": 1, "state": "Active", "fingerprint": "f1"},
            {"version": 2, "state": "Pending", "fingerprint": "f2"},
        ],
    }
    meta = {
        "name": "stripe",
        "namespace": NS,
        "uid": "u",
        "annotations": {"securekeys.io/rotate-requested-at": "t1-a"},
    }
    view = project_delivery_key({"metadata": meta, "spec": {}, "status": status})
    assert view is not None
    role = _role([{"kind": "User", "name": "alice"}], {"names": ["stripe"]}, ("rotate",))
    spec = ReviewSpec("rotate", key="stripe", recipient=RECIPIENT)
    refused = decide_rotate(ALICE, spec, NS, {"stripe": view}, [role], MONDAY_NOON, TAG_KEY)
    assert isinstance(refused, Refusal)
    assert refused.reason == "RotationPending"


def test_a_read_refusal_names_no_role_that_covers_the_key_only_by_selector() -> None:
    """Naming it would tell a caller without read that the key exists and carries the
    selector's labels; a role naming the key by name is named."""
    alice = [{"kind": "User", "name": "alice"}]
    by_label = _role(alice, {"selector": {"matchLabels": {"team": "a"}}}, ("list",), name="team-a")
    quiet = _read(ALICE, by_label, key="github")
    assert isinstance(quiet, Refusal)
    assert quiet.reason == "KeyNotGranted"
    assert "team-a" not in quiet.message
    by_name = _role(alice, {"names": ["github"]}, ("list",), name="lister")
    named = _read(ALICE, by_name, key="github")
    assert isinstance(named, Refusal)
    assert "lister names you without read" in named.message


def test_the_view_keeps_the_last_rotation_request_honoured_when_short() -> None:
    def honoured(value: str) -> str:
        view = project_delivery_key(
            {
                "metadata": {"name": "k", "namespace": NS, "uid": "u"},
                "spec": {},
                "status": {"currentVersion": 1, "lastRotationRequest": value},
            }
        )
        assert view is not None
        return view.last_rotation_request

    assert honoured("2026-12-07T10:00:00Z-0a1b2c-role") == "2026-12-07T10:00:00Z-0a1b2c-role"
    assert honoured("x" * 200) == ""  # a digest of a long request: never one of ours
