"""Rotation timing (secure_keys.controller.schedule): durations, cron schedules, rotation policy.

The cron tables pin Kubernetes CronJob (robfig/cron v3) behaviour where cronsim, which
computes the fire times, would read the same text differently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_keys.controller.schedule import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_RETAIN,
    MAX_DURATION,
    CronSchedule,
    InvalidSchedule,
    RotationPolicy,
    _cron_period,
    format_duration,
    parse_duration,
)


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


# Durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("720h", timedelta(hours=720)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("0.25m", timedelta(seconds=15)),
        ("90m", timedelta(minutes=90)),
        ("1h1m1s1ms", timedelta(hours=1, minutes=1, seconds=1, milliseconds=1)),
        ("1ms", timedelta(milliseconds=1)),
        ("1.5ms", timedelta(microseconds=1500)),
        ("0.001ms", timedelta(microseconds=1)),
        ("0s", timedelta(0)),
        ("007m", timedelta(minutes=7)),
        ("1s1s", timedelta(seconds=2)),  # Go sums repeated units too
        ("2562047h47m16.854775s", MAX_DURATION),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("-1h", "a sign is not allowed"),
        ("+1h", "a sign is not allowed"),
        ("1 h", "must not contain spaces"),
        (" 1h", "must not contain spaces"),
        ("1h\n", "must not contain spaces"),
        ("1d", "unknown unit 'd'"),
        ("1us", "unknown unit 'us'"),
        ("1µs", "unknown unit 'µs'"),
        ("1H", "unknown unit 'H'"),
        ("1", "missing unit after '1'"),
        ("1h30", "missing unit after '30'"),
        ("1.h", "a decimal point needs digits on both sides"),
        (".5h", "expected a number at position 0"),
        ("h", "expected a number at position 0"),
        ("1h-1m", "expected a number at position 2"),
        ("1.5.5h", "a decimal point needs digits on both sides"),
        ("1.0000001s", "finer than a microsecond"),
        ("2562047h47m16.854776s", "overflows (at most 2562047h47m16.854775s)"),
        ("9999999999h", "overflows"),
        ("1" * 33 + "s", "longer than 32"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        parse_duration(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(InvalidSchedule, match="must be a string"):
        parse_duration(3600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1), "1h0m0s"),
        (timedelta(hours=1, minutes=30), "1h30m0s"),
        (timedelta(hours=720), "720h0m0s"),
        (timedelta(seconds=1, milliseconds=500), "1.5s"),
        (timedelta(minutes=2, microseconds=5), "2m0.000005s"),
        (timedelta(milliseconds=1), "1ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=1), "0.001ms"),
        (MAX_DURATION, "2562047h47m16.854775s"),
    ],
)
def test_format_duration(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text


@pytest.mark.parametrize("duration", [timedelta(microseconds=-1), MAX_DURATION + timedelta(1)])
def test_format_duration_refuses_what_cannot_be_parsed(duration: timedelta) -> None:
    with pytest.raises(ValueError, match="outside"):
        format_duration(duration)


@given(st.integers(0, MAX_DURATION // timedelta(microseconds=1)))
def test_format_then_parse_is_the_identity(micros: int) -> None:
    duration = timedelta(microseconds=micros)
    assert parse_duration(format_duration(duration)) == duration


_terms = st.tuples(
    st.integers(0, 9_999), st.sampled_from(["", ".5", ".25", ".125"]), st.sampled_from("hms")
).map(lambda t: f"{t[0]}{t[1]}{t[2]}") | st.integers(0, 9_999).map(lambda n: f"{n}ms")


@given(st.lists(_terms, min_size=1, max_size=3).map("".join))  # at most 32 characters
def test_parse_then_format_is_canonical(text: str) -> None:
    duration = parse_duration(text)
    canonical = format_duration(duration)
    assert parse_duration(canonical) == duration
    assert format_duration(parse_duration(canonical)) == canonical


# Cron parsing

ALL_MINUTES = frozenset(range(60))
ALL_HOURS = frozenset(range(24))
ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))


@pytest.mark.parametrize(
    ("expression", "field", "expected"),
    [
        ("* * * * *", "minutes", ALL_MINUTES),
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("5/20 * * * *", "minutes", {5, 25, 45}),
        ("10-20/5 * * * *", "minutes", {10, 15, 20}),
        ("1,2,3-5 * * * *", "minutes", {1, 2, 3, 4, 5}),
        ("0 */6 * * *", "hours", {0, 6, 12, 18}),
        ("0 0 1,15 * *", "days_of_month", {1, 15}),
        ("0 0 * JAN-MAR *", "months", {1, 2, 3}),
        ("0 0 * jan,Jul,DEC *", "months", {1, 7, 12}),
        ("0 0 * */3 *", "months", {1, 4, 7, 10}),
        ("0 0 * * MON-FRI", "days_of_week", {1, 2, 3, 4, 5}),
        ("0 0 * * sun,Sat", "days_of_week", {0, 6}),
        ("0 0 * * 7", "days_of_week", {0}),
        ("0 0 * * 5-7", "days_of_week", {5, 6, 0}),
        ("0 0 * * FRI-7", "days_of_week", {5, 6, 0}),
        ("0 0 * * */2", "days_of_week", {0, 2, 4, 6}),
        ("0 0 * * 1/2", "days_of_week", {1, 3, 5}),
        ("0 0 * * *", "days_of_week", ALL_WEEKDAYS),
        ("0 0 * * 0-7", "days_of_week", ALL_WEEKDAYS),
        ("59 23 31 12 6", "minutes", {59}),
        ("*/90 * * * *", "minutes", {0}),
        ("  0   3 * * *  ", "hours", {3}),
        ("0\t3 * * *", "hours", {3}),
    ],
)
def test_parse_fields(expression: str, field: str, expected: set[int]) -> None:
    assert getattr(CronSchedule.parse(expression), field) == frozenset(expected)


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_macros(macro: str, expansion: str) -> None:
    assert CronSchedule.parse(macro) == CronSchedule.parse(expansion)


@pytest.mark.parametrize(
    ("expression", "dom_restricted", "dow_restricted"),
    [
        ("0 0 * * *", False, False),
        ("0 0 13 * *", True, False),
        ("0 0 * * FRI", False, True),
        ("0 0 13 * FRI", True, True),
        ("0 0 */1 * */1", False, False),
        ("0 0 */2 * *", True, False),  # as in Kubernetes CronJobs (robfig/cron)
        ("0 0 1-31 * 0-6", True, True),  # Vixie: written out, so restricted
        ("0 0 *,5 * 1,*", False, False),
    ],
)
def test_restricted_day_fields(expression: str, dom_restricted: bool, dow_restricted: bool) -> None:
    schedule = CronSchedule.parse(expression)
    assert (schedule.dom_restricted, schedule.dow_restricted) == (dom_restricted, dow_restricted)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "got 6"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("* * * 0 *", "month: 0 is out of range 1-12"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("5-1 * * * *", "minute: range '5-1' is reversed"),
        ("* * * * SAT-SUN", "day-of-week: range 'SAT-SUN' is reversed"),
        ("*/0 * * * *", "minute: step must be at least 1"),
        ("* 1-5/0 * * *", "hour: step must be at least 1"),
        ("*/x * * * *", "minute: step 'x' is not a number"),
        ("*/ * * * *", "minute: step '' is not a number"),
        ("1,,2 * * * *", "minute: empty item in list"),
        ("1, * * * *", "minute: empty item in list"),
        ("-5 * * * *", "minute: missing value"),
        ("1- * * * *", "minute: missing value"),
        ("MON * * * *", "minute: 'MON' is not a number"),
        ("* * * FOO *", "month: 'FOO' is not a number or a name JAN-DEC"),
        ("* * * * MONDAY", "day-of-week: 'MONDAY' is not a number or a name SUN-SAT"),
        ("* * * MON *", "month: 'MON' is not a number"),
        ("* * * * JAN", "day-of-week: 'JAN' is not a number"),
        ("? * * * *", "minute: '?' is not a number"),
        ("L * * * *", "minute: 'L' is not a number"),
        ("\u0661 * * * *", "minute: '\u0661' is not a number"),  # an Arabic-Indic digit
        ("@midnight", "unknown macro"),
        ("@DAILY", "unknown macro"),
        ("@every 1h", "unknown macro"),
        ("0 0 31 2 *", "day-of-month: never fires"),
        ("0 0 30,31 2 *", "day-of-month: never fires"),
        ("0 0 31 4,6,9,11 *", "day-of-month: never fires"),
        ("0 " * 64 + "*", "longer than 128"),
    ],
)
def test_parse_rejects(expression: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        CronSchedule.parse(expression)
    assert message in str(info.value)


def test_parse_error_names_the_expression() -> None:
    with pytest.raises(InvalidSchedule, match=r"invalid cron schedule '0 25 \* \* \*': hour"):
        CronSchedule.parse("0 25 * * *")


def test_direct_construction_is_validated() -> None:
    def build(**fields: frozenset[int]) -> CronSchedule:
        one = frozenset({1})
        return CronSchedule(
            minutes=fields.get("minutes", one),
            hours=fields.get("hours", one),
            days_of_month=fields.get("days_of_month", one),
            months=fields.get("months", one),
            days_of_week=fields.get("days_of_week", one),
            dom_restricted=True,
            dow_restricted=True,
        )

    assert build().next_after(at(2024, 1, 1)) == at(2024, 1, 1, 1, 1)
    with pytest.raises(InvalidSchedule, match="minute: values must be 0-59"):
        build(minutes=frozenset({60}))
    with pytest.raises(InvalidSchedule, match="day-of-week: values must be 0-6"):
        build(days_of_week=frozenset({7}))
    with pytest.raises(InvalidSchedule, match="hour: values must be 0-23"):
        build(hours=frozenset())
    with pytest.raises(InvalidSchedule, match="day-of-month: values must be 1-31"):
        build(days_of_month=frozenset({0}))
    # Unrestricted means written as "*": robfig's star bit comes with every value.
    with pytest.raises(InvalidSchedule, match="day-of-week: an unrestricted field allows every"):
        CronSchedule(
            ALL_MINUTES, ALL_HOURS, ALL_DAYS, ALL_MONTHS, frozenset({1}), True, dow_restricted=False
        )


# next_after


def test_next_after_is_strictly_after_and_ignores_seconds() -> None:
    every_minute = CronSchedule.parse("* * * * *")
    assert every_minute.next_after(at(2024, 1, 1, 10, 0)) == at(2024, 1, 1, 10, 1)
    assert every_minute.next_after(at(2024, 1, 1, 10, 0, 59, 999999)) == at(2024, 1, 1, 10, 1)
    daily = CronSchedule.parse("30 3 * * *")
    assert daily.next_after(at(2024, 1, 1, 3, 30)) == at(2024, 1, 2, 3, 30)
    assert daily.next_after(at(2024, 1, 1, 3, 29, 59)) == at(2024, 1, 1, 3, 30)


def test_next_after_rolls_over_hours_days_months_and_years() -> None:
    assert CronSchedule.parse("15 * * * *").next_after(at(2024, 1, 1, 23, 20)) == at(
        2024, 1, 2, 0, 15
    )
    assert CronSchedule.parse("0 0 1 * *").next_after(at(2024, 1, 31, 12)) == at(2024, 2, 1)
    assert CronSchedule.parse("@yearly").next_after(at(2024, 12, 31, 23, 59)) == at(2025, 1, 1)
    assert CronSchedule.parse("0 0 31 * *").next_after(at(2024, 4, 1)) == at(2024, 5, 31)


def test_next_after_takes_any_timezone_and_answers_in_utc() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2024, 1, 1, 5, 30, tzinfo=india)  # 00:00 UTC
    result = CronSchedule.parse("0 1 * * *").next_after(moment)
    assert result == at(2024, 1, 1, 1, 0)
    assert result.tzinfo is UTC


def test_next_after_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CronSchedule.parse("* * * * *").next_after(datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (at(2023, 6, 1), at(2024, 2, 29)),
        (at(2024, 2, 29), at(2028, 2, 29)),
        (at(2096, 2, 29, 0, 1), at(2104, 2, 29)),  # 2100 is not a leap year
        (at(2399, 3, 1), at(2400, 2, 29)),  # 2400 is
    ],
)
def test_leap_day(start: datetime, expected: datetime) -> None:
    schedule = CronSchedule.parse("0 0 29 2 *")
    began = time.perf_counter()
    assert schedule.next_after(start) == expected
    assert time.perf_counter() - began < 0.5


def test_a_schedule_that_never_fires_is_refused_when_built_directly() -> None:
    # parse() refuses "0 0 30,31 2 *"; the constructor does too, so next_after never waits
    # on a date that does not come.
    with pytest.raises(InvalidSchedule, match="never fires"):
        CronSchedule(
            minutes=frozenset({0}),
            hours=frozenset({0}),
            days_of_month=frozenset({30, 31}),
            months=frozenset({2}),
            days_of_week=ALL_WEEKDAYS,
            dom_restricted=True,
            dow_restricted=False,
        )


def test_next_after_stops_at_the_end_of_the_calendar() -> None:
    with pytest.raises(InvalidSchedule, match="9999"):
        CronSchedule.parse("0 0 1 1 *").next_after(at(9999, 6, 1))
    with pytest.raises(InvalidSchedule, match="9999"):
        CronSchedule.parse("* * * * *").next_after(datetime.max.replace(tzinfo=UTC))
    assert CronSchedule.parse("0 0 1 1 *").next_after(at(9998, 6, 1)) == at(9999, 1, 1)


def _fires(schedule: CronSchedule, start: datetime, count: int) -> Iterator[datetime]:
    moment = start
    for _ in range(count):
        moment = schedule.next_after(moment)
        yield moment


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # January 2024: the 1st is a Monday, the 5th and 12th Fridays, the 13th a Saturday.
    both = CronSchedule.parse("0 0 13 * FRI")
    assert list(_fires(both, at(2024, 1, 1), 4)) == [
        at(2024, 1, 5),
        at(2024, 1, 12),
        at(2024, 1, 13),
        at(2024, 1, 19),
    ]
    only_dom = CronSchedule.parse("0 0 13 * *")
    assert list(_fires(only_dom, at(2024, 1, 1), 2)) == [at(2024, 1, 13), at(2024, 2, 13)]
    only_dow = CronSchedule.parse("0 0 * * FRI")
    assert list(_fires(only_dow, at(2024, 1, 1), 2)) == [at(2024, 1, 5), at(2024, 1, 12)]
    # Written-out ranges count as restricted, so "1-31" with a weekday is every day.
    assert list(_fires(CronSchedule.parse("0 0 1-31 * FRI"), at(2024, 1, 1), 2)) == [
        at(2024, 1, 2),
        at(2024, 1, 3),
    ]
    # And a restricted day-of-month makes "31 Feb" fire on February's Mondays.
    assert CronSchedule.parse("0 0 31 2 MON").next_after(at(2024, 1, 1)) == at(2024, 2, 5)


# Kubernetes CronJob compatibility: where cronsim alone would read the text differently

JAN_2024 = at(2024, 1, 1)  # a Monday


@pytest.mark.parametrize(
    ("expression", "fires"),
    [
        # "*/2" restricts day-of-month (no star bit), so it ORs with a weekday; Debian cron
        # (cronsim) would AND them, since the field starts with "*": Jan 15, 29, ...
        ("0 0 */2 * MON", [at(2024, 1, 3), at(2024, 1, 5), at(2024, 1, 7), at(2024, 1, 8)]),
        # "*" anywhere in the list sets the star bit, so the day fields AND: Mondays only.
        # Debian cron looks at the first character only and would fire every day.
        ("0 0 5,* * MON", [at(2024, 1, 8), at(2024, 1, 15), at(2024, 1, 22)]),
        ("0 0 */1 * MON", [at(2024, 1, 8), at(2024, 1, 15), at(2024, 1, 22)]),
        # Written out, 1-31 is a restriction: OR with Monday is every day.
        ("0 0 1-31 * MON", [at(2024, 1, 2), at(2024, 1, 3), at(2024, 1, 4)]),
        ("0 0 */2 * *", [at(2024, 1, 3), at(2024, 1, 5), at(2024, 1, 7)]),
        # "N/step" in day-of-week ends at 6 (Saturday); cronsim would run on to 7, Sunday.
        ("0 0 * * 5/1", [at(2024, 1, 5), at(2024, 1, 6), at(2024, 1, 12)]),
        ("0 0 * * MON/2", [at(2024, 1, 3), at(2024, 1, 5), at(2024, 1, 8)]),
        # "N-N/step" is the one value N; cronsim would read it as "N/step" (5, 25, 45).
        ("5-5/20 * * * *", [at(2024, 1, 1, 0, 5), at(2024, 1, 1, 1, 5), at(2024, 1, 1, 2, 5)]),
        ("*/90 * * * *", [at(2024, 1, 1, 1), at(2024, 1, 1, 2), at(2024, 1, 1, 3)]),
        ("@weekly", [at(2024, 1, 7), at(2024, 1, 14), at(2024, 1, 21)]),
        # The CRD's one extension over robfig/cron, which refuses 7: Sunday, as in Vixie cron.
        ("0 0 * * 7", [at(2024, 1, 7), at(2024, 1, 14), at(2024, 1, 21)]),
    ],
)
def test_fires_as_a_kubernetes_cronjob_would(expression: str, fires: list[datetime]) -> None:
    assert list(_fires(CronSchedule.parse(expression), JAN_2024, len(fires))) == fires


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        # cronsim would take each of these; Kubernetes or the CRD refuses them.
        ("0 0 * * * *", "got 6"),  # cronsim: a leading seconds field
        ("TZ=UTC 0 0 * * *", "got 6"),  # Kubernetes refuses TZ= in the schedule
        ("CRON_TZ=UTC 0 0 * * *", "got 6"),
        ("0 0 L * *", "day-of-month: 'L' is not a number"),
        ("0 0 LW * *", "day-of-month: 'LW' is not a number"),
        ("0 0 15W * *", "day-of-month: '15W' is not a number"),
        ("0 0 * * 5L", "day-of-week: '5L' is not a number or a name SUN-SAT"),
        ("0 0 * * MON#1", "day-of-week: 'MON#1' is not a number"),
        # robfig takes these, the CRD's pattern does not.
        ("0 0 ? * *", "day-of-month: '?' is not a number"),
        ("0 0 * * ?", "day-of-week: '?' is not a number"),
        ("0 0 1,,15 * *", "day-of-month: empty item in list"),
        ("@midnight", "unknown macro"),
    ],
)
def test_refuses_what_kubernetes_or_the_crd_refuses(expression: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        CronSchedule.parse(expression)
    assert message in str(info.value)


# next_after against a brute-force reference

FIELD_BOUNDS = {  # low, high, high of '*' and of N/step
    "minute": (0, 59, 59),
    "hour": (0, 23, 23),
    "dom": (1, 31, 31),
    "month": (1, 12, 12),
    "dow": (0, 7, 6),
}
MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@dataclass(frozen=True)
class Item:
    """One comma item of a field, generated as data so the reference needs no parser."""

    kind: str  # "star", "value", "range", "from"
    low: int = 0
    high: int = 0
    step: int | None = None


def _render(item: Item, field: str, named: bool) -> str:
    def value(v: int) -> str:
        if named and field == "month":
            return MONTH_NAMES[v - 1]
        if named and field == "dow" and v < 7:
            return DAY_NAMES[v].lower()
        return str(v)

    step = f"/{item.step}" if item.step is not None else ""
    if item.kind == "star":
        return "*" + step
    if item.kind == "range":
        return f"{value(item.low)}-{value(item.high)}{step}"
    if item.kind == "from":
        return f"{value(item.low)}/{item.step}"
    return value(item.low)


def _expand(items: list[Item], field: str) -> tuple[set[int], bool]:
    low, _, star_high = FIELD_BOUNDS[field]
    values: set[int] = set()
    restricted = True
    for item in items:
        step = item.step or 1
        if item.kind == "star":
            values |= set(range(low, star_high + 1, step))
            restricted = restricted and step != 1
        elif item.kind == "range":
            values |= set(range(item.low, item.high + 1, step))
        elif item.kind == "from":
            values |= set(range(item.low, max(item.low, star_high) + 1, step))
        else:
            values.add(item.low)
    if field == "dow":
        values = {v % 7 for v in values}
    return values, restricted


@st.composite
def field_items(draw: st.DrawFn, field: str) -> list[Item]:
    low, high, _ = FIELD_BOUNDS[field]
    steps = st.none() | st.integers(1, high + 2)

    def item() -> Item:
        kind = draw(st.sampled_from(["star", "value", "value", "range", "from"]))
        if kind == "star":
            return Item("star", step=draw(steps))
        a = draw(st.integers(low, high))
        if kind == "value":
            return Item("value", a)
        if kind == "from":
            return Item("from", a, step=draw(st.integers(1, high + 2)))
        b = draw(st.integers(a, high))
        return Item("range", a, b, draw(steps))

    return [item() for _ in range(draw(st.integers(1, 3)))]


@st.composite
def sparse_items(draw: st.DrawFn, field: str) -> list[Item]:
    """Month ends, a month or two, and mostly no weekday: leap days and dates that never come."""
    if field == "dom":
        values = draw(st.lists(st.integers(28, 31), min_size=1, max_size=2))
    elif field == "month":
        short_months = st.sampled_from([2, 2, 2, 4, 6, 9, 11, 12])  # mostly February
        values = draw(st.lists(short_months, min_size=1, max_size=2))
    elif field == "dow":
        return draw(st.sampled_from([[Item("star")], [Item("star")], [Item("value", 1)]]))
    else:
        values = [draw(st.integers(*FIELD_BOUNDS[field][:2]))]
    return [Item("value", v) for v in values]


@st.composite
def cron_cases(
    draw: st.DrawFn, sparse: bool = False
) -> tuple[str, dict[str, tuple[set[int], bool]]]:
    parts, expected = [], {}
    for field in ("minute", "hour", "dom", "month", "dow"):
        items = draw(sparse_items(field) if sparse else field_items(field))
        named = draw(st.booleans())
        parts.append(",".join(_render(item, field, named) for item in items))
        expected[field] = _expand(items, field)
    return " ".join(parts), expected


def _reference_next(
    expected: dict[str, tuple[set[int], bool]], start: datetime, days: int
) -> datetime | None:
    """Minute by minute from ``start``; a day whose date cannot match is passed over whole."""
    minutes, _ = expected["minute"]
    hours, _ = expected["hour"]
    doms, dom_restricted = expected["dom"]
    months, _ = expected["month"]
    dows, dow_restricted = expected["dow"]
    moment = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = moment.date()
    for _ in range(days):
        dom_ok, dow_ok = day.day in doms, day.isoweekday() % 7 in dows
        either = dom_restricted and dow_restricted
        if day.month in months and ((dom_ok or dow_ok) if either else (dom_ok and dow_ok)):
            first = moment.hour * 60 + moment.minute if day == moment.date() else 0
            for minute_of_day in range(first, 24 * 60):
                hour, minute = divmod(minute_of_day, 60)
                if hour in hours and minute in minutes:
                    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
        day += timedelta(days=1)
    return None


starts = st.datetimes(
    min_value=datetime(2000, 1, 1),  # hypothesis takes naive bounds
    max_value=datetime(2099, 12, 31),
    timezones=st.just(UTC),
)


@settings(max_examples=300)
@given(case=cron_cases() | cron_cases(sparse=True), start=starts)
def test_next_after_agrees_with_brute_force(
    case: tuple[str, dict[str, tuple[set[int], bool]]], start: datetime
) -> None:
    expression, expected = case
    reference = _reference_next(expected, start, days=9 * 366)
    if reference is None:  # the reference says it never fires: parse must refuse it
        with pytest.raises(InvalidSchedule, match="never fires"):
            CronSchedule.parse(expression)
        return
    schedule = CronSchedule.parse(expression)
    assert schedule.minutes == frozenset(expected["minute"][0])
    assert schedule.days_of_week == frozenset(expected["dow"][0])
    assert (schedule.dom_restricted, schedule.dow_restricted) == (
        expected["dom"][1],
        expected["dow"][1],
    )
    assert schedule.next_after(start) == reference, expression


@given(start=starts, tz_minutes=st.integers(-14 * 60, 14 * 60))
def test_next_after_depends_only_on_the_instant(start: datetime, tz_minutes: int) -> None:
    schedule = CronSchedule.parse("*/7 3-5 * * MON")
    shifted = start.astimezone(timezone(timedelta(minutes=tz_minutes)))
    assert schedule.next_after(shifted) == schedule.next_after(start)


# shortest_gap


@pytest.mark.parametrize(
    ("expression", "gap"),
    [
        ("* * * * *", timedelta(minutes=1)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("0,50 * * * *", timedelta(minutes=10)),
        ("0 0,12 * * *", timedelta(hours=12)),
        ("0 9 * * MON-FRI", timedelta(days=1)),
        ("@weekly", timedelta(days=7)),
        ("0 0 1 * *", timedelta(days=28)),
        ("0 0 31 * *", timedelta(days=31)),
        ("0 0 13 * FRI", timedelta(days=1)),
        ("0 0 29 2 *", timedelta(days=4 * 365 + 1)),
    ],
)
def test_shortest_gap(expression: str, gap: timedelta) -> None:
    assert CronSchedule.parse(expression).shortest_gap(at(2000, 1, 1)) == gap


def test_shortest_gap_looks_at_the_requested_number_of_fires() -> None:
    # Gaps: 23h (23:00 -> 22:00 next day), then 1h. Two fires only see the first gap.
    schedule = CronSchedule.parse("0 22,23 * * *")
    assert schedule.shortest_gap(at(2024, 1, 1, 22, 30), samples=1) == timedelta(hours=23)
    assert schedule.shortest_gap(at(2024, 1, 1, 22, 30), samples=2) == timedelta(hours=1)
    with pytest.raises(ValueError, match="samples"):
        schedule.shortest_gap(at(2024, 1, 1), samples=0)


def test_shortest_gap_stops_at_the_end_of_the_calendar() -> None:
    monthly = CronSchedule.parse("0 0 1 * *")
    assert monthly.shortest_gap(at(9999, 10, 1)) == timedelta(days=30)  # Nov 1 -> Dec 1
    with pytest.raises(InvalidSchedule, match="9999"):
        CronSchedule.parse("@yearly").shortest_gap(at(9998, 6, 1))


# RotationPolicy

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("spec", "interval", "grace", "retain"),
    [
        (None, None, DEFAULT_GRACE_PERIOD, DEFAULT_RETAIN),
        ({}, None, HOUR, 3),
        ({"interval": "720h"}, timedelta(hours=720), HOUR, 3),
        ({"interval": "1h30m", "retain": 5}, timedelta(minutes=90), 45 * MINUTE, 5),
        ({"interval": "30m"}, 30 * MINUTE, 15 * MINUTE, 3),  # default: half the period
        ({"interval": "10s"}, timedelta(seconds=10), timedelta(seconds=5), 3),
        ({"interval": "1h", "gracePeriod": "59m59s"}, HOUR, HOUR - timedelta(seconds=1), 3),
        ({"interval": "1h", "gracePeriod": "0s"}, HOUR, timedelta(0), 3),
        ({"gracePeriod": "24h"}, None, timedelta(hours=24), 3),  # on demand: no period
        ({"retain": 1}, None, HOUR, 1),
        ({"retain": 100}, None, HOUR, 100),
        ({"schedule": None, "interval": None, "retain": None}, None, HOUR, 3),
    ],
)
def test_policy_from_spec(
    spec: dict[str, object] | None, interval: timedelta | None, grace: timedelta, retain: int
) -> None:
    policy = RotationPolicy.from_spec(spec)
    assert policy.schedule is None
    assert (policy.interval, policy.grace_period, policy.retain) == (interval, grace, retain)


@pytest.mark.parametrize(
    ("spec", "grace"),
    [
        ({"schedule": "0 3 * * *"}, HOUR),
        ({"schedule": "@hourly"}, 30 * MINUTE),
        ({"schedule": "*/15 * * * *"}, timedelta(minutes=7, seconds=30)),
        ({"schedule": "*/15 * * * *", "gracePeriod": "14m"}, 14 * MINUTE),
        ({"schedule": "0 0,1 * * *", "gracePeriod": "59m"}, 59 * MINUTE),
    ],
)
def test_policy_from_spec_with_a_schedule(spec: dict[str, object], grace: timedelta) -> None:
    policy = RotationPolicy.from_spec(spec)
    assert policy.schedule == CronSchedule.parse(str(spec["schedule"]))
    assert policy.interval is None
    assert policy.grace_period == grace


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": "@daily", "interval": "24h"}, "not both"),
        ({"interval": "9s"}, "rotation.interval must be at least 10s, got 9s"),
        ({"interval": "9.999s"}, "at least 10s"),
        ({"interval": "1h", "gracePeriod": "1h"}, "must be shorter than the rotation interval"),
        ({"interval": "1h", "gracePeriod": "2h"}, "rotation.gracePeriod (2h0m0s)"),
        (
            {"schedule": "*/15 * * * *", "gracePeriod": "15m"},
            "shorter than the rotation shortest gap of rotation.schedule (15m0s)",
        ),
        ({"schedule": "0 0,1 * * *", "gracePeriod": "1h"}, "shortest gap"),
        ({"retain": 0}, "rotation.retain must be 1 to 100, got 0"),
        ({"retain": 101}, "rotation.retain must be 1 to 100"),
        ({"retain": True}, "rotation.retain must be an integer"),
        ({"retain": "3"}, "rotation.retain must be an integer"),
        ({"retain": 2.0}, "rotation.retain must be an integer"),
        ({"schedule": "61 * * * *"}, "rotation.schedule: invalid cron schedule"),
        ({"schedule": "0 0 31 2 *"}, "never fires"),
        ({"schedule": 5}, "rotation.schedule must be a string"),
        ({"interval": 3600}, "rotation.interval must be a string"),
        ({"interval": "1d"}, "rotation.interval: duration '1d': unknown unit"),
        ({"gracePeriod": "-1h"}, "rotation.gracePeriod: duration '-1h'"),
        ({"gracePeriod": ""}, "rotation.gracePeriod: a duration must not be empty"),
        ({"period": "1h"}, "unknown fields ['period']"),
    ],
)
def test_policy_from_spec_rejects(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        RotationPolicy.from_spec(spec)
    assert message in str(info.value)


def test_policy_from_spec_rejects_a_non_mapping() -> None:
    with pytest.raises(InvalidSchedule, match="must be an object"):
        RotationPolicy.from_spec(["interval", "1h"])  # type: ignore[arg-type]


def test_policy_direct_construction_is_validated() -> None:
    with pytest.raises(InvalidSchedule, match="must be shorter"):
        RotationPolicy(interval=30 * MINUTE)  # the default grace period, 1h, is too long
    with pytest.raises(InvalidSchedule, match="must not be negative"):
        RotationPolicy(grace_period=timedelta(seconds=-1))
    assert RotationPolicy(interval=30 * MINUTE, grace_period=MINUTE).period == 30 * MINUTE
    assert RotationPolicy().period is None


def test_next_rotation() -> None:
    activated = at(2024, 1, 31, 10, 15, 30)
    assert RotationPolicy.from_spec(None).next_rotation(activated) is None
    by_interval = RotationPolicy.from_spec({"interval": "720h"})
    assert by_interval.next_rotation(activated) == at(2024, 3, 1, 10, 15, 30)
    by_schedule = RotationPolicy.from_spec({"schedule": "0 3 1 * *"})
    assert by_schedule.next_rotation(activated) == at(2024, 2, 1, 3, 0)


def test_next_rotation_takes_any_timezone_and_answers_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    activated = datetime(2024, 1, 1, 9, 0, tzinfo=tokyo)  # midnight UTC
    result = RotationPolicy.from_spec({"interval": "1h"}).next_rotation(activated)
    assert result == at(2024, 1, 1, 1, 0)
    assert result is not None
    assert result.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        RotationPolicy.from_spec({"interval": "1h"}).next_rotation(datetime(2024, 1, 1))


def test_next_rotation_past_the_calendar() -> None:
    policy = RotationPolicy.from_spec({"interval": "720h"})
    with pytest.raises(InvalidSchedule, match="9999"):
        policy.next_rotation(at(9999, 12, 15))


def test_every_date_helper_agrees_on_sunday() -> None:
    # The reference's weekday convention (0 = Sunday) checked against a known date.
    assert date(2024, 1, 7).isoweekday() % 7 == 0
    assert CronSchedule.parse("0 0 * * SUN").next_after(at(2024, 1, 1)) == at(2024, 1, 7)


# The period a policy checks its grace period against: computed from the fields, cheaply

# Schedules whose shortest gap the old sampling found slowest (1,000 cronsim steps across
# years), and those that make the field arithmetic walk a whole 400-year cycle.
SLOW_SCHEDULES = [
    "0 0 1 1 *",
    "@yearly",
    "0 0 29 2 *",
    "59 23 31 12 *",
    "0 0,23 29 2 *",
    "0 0 31 * *",
    "0 0 30 4,6,9,11 *",
    "@weekly",
    "0 12 * * 1,3",
    "0 0 29 2 1",
    "* * * * *",
    "0 0 28-31 2 *",
]


@pytest.mark.parametrize("expression", SLOW_SCHEDULES)
def test_policy_period_is_cheap(expression: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A guard against a return to walking fire times on the event loop (the sampling it
    # replaced took 0.1-0.3 s for these), counted rather than timed: the period comes
    # from the parsed fields, so no fire time is ever computed.
    spec = {"schedule": expression, "gracePeriod": "1m"}
    if expression == "* * * * *":
        spec["gracePeriod"] = "30s"
    _cron_period.cache_clear()  # the work, not the cache

    def no_walking(*_: object, **__: object) -> object:
        raise AssertionError(f"{expression}: fire times walked to find the period")

    monkeypatch.setattr(CronSchedule, "next_after", no_walking)
    monkeypatch.setattr(CronSchedule, "shortest_gap", no_walking)
    assert RotationPolicy.from_spec(spec).period is not None


@settings(max_examples=80, deadline=None)
@given(case=cron_cases() | cron_cases(sparse=True))
def test_policy_period_agrees_with_sampled_fire_times(
    case: tuple[str, dict[str, tuple[set[int], bool]]],
) -> None:
    expression, _ = case
    try:
        schedule = CronSchedule.parse(expression)
    except InvalidSchedule:
        return  # never fires: refused before any period is asked for
    policy = RotationPolicy(schedule=schedule, grace_period=timedelta(0))
    assert policy.period == schedule.shortest_gap(at(2000, 1, 1)), expression


@pytest.mark.parametrize(
    ("expression", "period"),
    [
        ("0 0 29 2 *", timedelta(days=4 * 365 + 1)),
        ("0 22,23 * * *", HOUR),  # 23:00 to 22:00 the next day
        ("0 0,23 29 2 *", timedelta(hours=23)),  # never two days in a row
        ("0 0,23 29 2 MON", HOUR),  # Feb 29 next to a Monday
        ("0 0 31 * *", timedelta(days=31)),
        ("0 0 1 * *", timedelta(days=28)),
    ],
)
def test_grace_period_must_be_shorter_than_the_shortest_gap(
    expression: str, period: timedelta
) -> None:
    just_under = format_duration(period - timedelta(seconds=1))
    policy = RotationPolicy.from_spec({"schedule": expression, "gracePeriod": just_under})
    assert policy.period == period
    with pytest.raises(InvalidSchedule, match="shortest gap"):
        RotationPolicy.from_spec({"schedule": expression, "gracePeriod": format_duration(period)})
