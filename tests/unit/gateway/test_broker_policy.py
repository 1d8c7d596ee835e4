"""``gateway.broker.policy``: what a KeyRole's ``access`` means for a pod, and grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from secure_keys.core.integrity import archived_tag
from secure_keys.core.stamps import format_stamp
from secure_keys.gateway.broker.policy import (
    DeliveryKeyView,
    Grant,
    Refusal,
    grant,
    project_delivery_key,
    project_pod,
    project_role,
)

NS = "payments"
MONDAY_NOON = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)  # a Monday

POD = project_pod(
    {
        "metadata": {
            "name": "p",
            "namespace": NS,
            "uid": "u",
            "annotations": {"securekeys.io/keys": "k", "securekeys.io/injected": "native"},
        },
        "spec": {"serviceAccountName": "app"},
    }
)
KEY = project_delivery_key({"metadata": {"name": "k", "namespace": NS, "uid": "ku"}, "spec": {}})


def role(access: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["k"]},
    }
    if access is not None:
        spec["access"] = access
    return project_role({"metadata": {"name": "r", "namespace": NS}, "spec": spec})


def _grant(*roles: Any, now: datetime = MONDAY_NOON) -> Grant | Refusal:
    assert POD is not None
    assert KEY is not None
    return grant(POD, "k", {"k": KEY}, roles, now)


def test_ttl_is_the_lease_and_is_renewed_at_half_life() -> None:
    result = _grant(role({"ttl": "10m"}))
    assert isinstance(result, Grant)
    assert result.lease_expires_at == MONDAY_NOON + timedelta(minutes=10)
    assert result.wake_at == MONDAY_NOON + timedelta(minutes=5)


def test_a_window_bounds_the_lease_and_a_closed_window_refuses_until_it_opens() -> None:
    window = {"timeWindows": [{"days": ["Mon"], "start": "09:00", "end": "12:30"}]}
    result = _grant(role(window))
    assert isinstance(result, Grant)
    assert result.lease_expires_at == MONDAY_NOON + timedelta(minutes=30)
    closed = _grant(role(window), now=MONDAY_NOON + timedelta(hours=1))
    assert isinstance(closed, Refusal)
    assert closed.reason == "OutsideTimeWindow"
    assert closed.wake_at == datetime(2025, 1, 13, 9, 0, tzinfo=UTC)  # next Monday


def test_an_overnight_window_in_a_time_zone() -> None:
    window = {
        "ttl": "24h",
        "timeWindows": [
            {"days": ["Sun"], "start": "22:00", "end": "02:00", "timeZone": "Europe/Berlin"}
        ],
    }
    # Monday 00:30 in Berlin is Sunday 23:30 UTC: inside Sunday's window.
    inside = _grant(role(window), now=datetime(2025, 1, 5, 23, 30, tzinfo=UTC))
    assert isinstance(inside, Grant)
    assert inside.lease_expires_at == datetime(2025, 1, 6, 1, 0, tzinfo=UTC)


def test_require_mfa_never_grants_to_a_service_account() -> None:
    result = _grant(role({"requireMFA": True}))
    assert isinstance(result, Refusal)
    assert result.reason == "MfaRequired"
    assert isinstance(_grant(role({"requireMFA": True}), role()), Grant)


TAG_KEY = bytes(range(32))


def _rotated(archived_at: str, archive_tag: str | None, uid: str = "ku") -> DeliveryKeyView:
    """Version 2 Active, version 1 Archived at ``archived_at`` with ``archive_tag``."""
    archived: dict[str, Any] = {
        "version": 1,
        "state": "Archived",
        "archivedAt": archived_at,
        "fingerprint": "f1",
    }
    if archive_tag is not None:
        archived["archiveTag"] = archive_tag
    view = project_delivery_key(
        {
            "metadata": {"name": "k", "namespace": NS, "uid": uid},
            "spec": {"rotation": {"interval": "1h"}},
            "status": {
                "currentVersion": 2,
                "versions": [archived, {"version": 2, "state": "Active", "fingerprint": "f2"}],
            },
        }
    )
    assert view is not None
    return view


def test_previous_is_served_only_within_grace() -> None:
    archived = MONDAY_NOON - timedelta(minutes=20)
    stamp = format_stamp(archived)
    view = _rotated(stamp, archived_tag(TAG_KEY, "ku", 1, stamp))
    assert view.grace == timedelta(minutes=30)  # the controller's default: half the interval
    previous = view.previous(MONDAY_NOON, TAG_KEY)
    assert previous is not None
    assert previous[0].version == 1
    assert previous[1] == archived + timedelta(minutes=30)
    assert view.previous(archived + timedelta(minutes=30), TAG_KEY) is None


def test_previous_needs_the_controllers_tag_on_archived_at() -> None:
    """A status edit of archivedAt is not believed: the version is withheld until the
    controller stamps it again (it can neither lengthen nor cut short the grace)."""
    archived = MONDAY_NOON - timedelta(minutes=20)
    stamp = format_stamp(archived)
    tag = archived_tag(TAG_KEY, "ku", 1, stamp)
    later = format_stamp(MONDAY_NOON + timedelta(days=365))
    refused = {
        "untagged": _rotated(stamp, None),
        "forged": _rotated(stamp, "hm1:" + "0" * 32),
        "moved-later": _rotated(later, tag),  # an edit to lengthen the grace
        "another-version": _rotated(stamp, archived_tag(TAG_KEY, "ku", 2, stamp)),
        "another-apikey": _rotated(stamp, tag, uid="other"),
        "another-key": _rotated(stamp, archived_tag(bytes(32), "ku", 1, stamp)),
    }
    for name, view in refused.items():
        assert view.previous(MONDAY_NOON, TAG_KEY) is None, name
    # The same instant written another way is the same time: still believed.
    other_form = (archived.replace(microsecond=0)).isoformat()  # +00:00, not Z
    assert _rotated(other_form, tag).previous(MONDAY_NOON, TAG_KEY) is not None
