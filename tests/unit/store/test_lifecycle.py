"""The store's version rules, as pure functions: the cluster's states and retention."""

from __future__ import annotations

import datetime as dt

import pytest

from secure_keys.store.lifecycle import VersionRow, next_version, previous, promote, sweep

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
GRACE = dt.timedelta(hours=1)


def _row(version: int, state: str, archived_minutes_ago: int | None = None) -> VersionRow:
    archived = (
        None if archived_minutes_ago is None else T0 - dt.timedelta(minutes=archived_minutes_ago)
    )
    return VersionRow("k", version, state, T0, "local", "s", "1", archived_at=archived)  # type: ignore[arg-type]


def test_version_numbers_go_above_every_recorded_one() -> None:
    assert next_version([]) == 1
    assert next_version([_row(1, "Destroyed"), _row(4, "Destroyed")]) == 5


def test_previous_is_the_newest_archived_version_in_its_grace_period() -> None:
    rows = [_row(1, "Archived", 30), _row(2, "Archived", 10), _row(3, "Active")]
    found = previous(rows, T0, GRACE)
    assert found is not None
    assert found.version == 2
    assert previous([_row(1, "Archived", 60), _row(2, "Active")], T0, GRACE) is None
    assert previous([_row(1, "Destroyed"), _row(2, "Active")], T0, GRACE) is None


def test_promote_makes_one_active_and_archives_the_old_one() -> None:
    rows = [_row(1, "Active"), _row(2, "Pending")]
    changed = {r.version: r for r in promote(rows, 2, T0)}
    assert (changed[1].state, changed[1].archived_at) == ("Archived", T0)
    assert (changed[2].state, changed[2].activated_at) == ("Active", T0)
    with pytest.raises(ValueError, match="Archived, not Pending"):
        promote([_row(1, "Archived", 5)], 1, T0)
    with pytest.raises(ValueError, match="no version 9"):
        promote(rows, 9, T0)


def test_sweep_destroys_only_beyond_retain_and_past_grace() -> None:
    rows = [
        _row(1, "Archived", 300),
        _row(2, "Archived", 120),
        _row(3, "Archived", 30),
        _row(4, "Active"),
    ]
    destroyed = sweep(rows, T0, GRACE, retain=2)
    assert [(r.version, r.state, r.destroyed_at) for r in destroyed] == [
        (2, "Destroyed", T0),
        (1, "Destroyed", T0),
    ]
    assert sweep(rows, T0, GRACE, retain=4) == []
    # With retain=1, version 3 is beyond it too, but still in its grace period: kept.
    assert [r.version for r in sweep(rows, T0, GRACE, retain=1)] == [2, 1]
