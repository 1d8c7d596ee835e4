"""Owns rotation timing: durations, cron schedules and an ApiKey's rotation policy.

Used by the controller only. Pure: no clock and no I/O. The caller passes the times in;
every datetime taken must be timezone-aware, and every datetime returned is in UTC (cron
schedules are read in UTC, as the CRD says).

- ``parse_duration`` / ``format_duration``: the Go duration syntax the CRD accepts
  (``1h30m``, ``720h``, ``1.5h``; units h, m, s, ms).
- ``CronSchedule``: a 5-field cron expression or macro, parsed once into sets;
  ``next_after`` asks cronsim for the next fire time.
- ``RotationPolicy``: ``spec.rotation`` parsed and validated into a frozen object that
  says when the next rotation is due. A schedule's period (its shortest gap, which the
  grace period must stay under) is worked out from the field sets, not by walking fire
  times, so parsing a policy on the event loop stays well under a millisecond.

Every parse or validation failure raises ``InvalidSchedule`` with a message naming the
field at fault.

Cron rules: Kubernetes CronJob's (robfig/cron v3, ``ParseStandard``) within the CRD's
pattern. Five fields or a macro; lists, ranges, steps and month and day names; ``*/2``
is a restriction, so it and another restricted day field combine with OR, while ``*``
or ``*/1`` anywhere in a day field's list makes both day fields combine with AND. Where
the CRD and robfig differ, the CRD wins: day-of-week 7 is Sunday (robfig refuses it);
``?``, ``@midnight``, ``@every``, ``TZ=`` and empty list items are refused (robfig takes
them). Kubernetes also stops looking five years ahead, so it never fires ``0 0 29 2 *``
across 2100; this finds 2104-02-29.

cronsim (maintained, typed, no dependencies) computes the fire times, but never sees the
text the user wrote. Given it, cronsim would AND the day fields whenever one *starts
with* ``*`` (Debian cron's rule: ``*/2`` and ``5,*`` would differ from Kubernetes), run
``N/step`` in day-of-week up to 7 (Sunday) where robfig stops at 6, read ``N-N/step`` as
``N/step``, and take a seconds field, ``L``, ``W`` and ``#``, which Kubernetes refuses.
So the parser here keeps the grammar and the meaning, and hands cronsim each field as
``*`` or a plain list of numbers.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise

from cronsim import CronSim

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_RETAIN",
    "MAX_DURATION",
    "MAX_RETAIN",
    "MIN_INTERVAL",
    "CronSchedule",
    "InvalidSchedule",
    "RotationPolicy",
    "format_duration",
    "parse_duration",
]


class InvalidSchedule(ValueError):
    """A duration, cron expression or rotation policy is invalid, or never fires."""


# Durations -------------------------------------------------------------------------

_MICROS = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}
_MAX_MICROS = (2**63 - 1) // 1_000
MAX_DURATION = timedelta(microseconds=_MAX_MICROS)
"""Go's largest ``time.Duration`` (2^63-1 ns, about 292 years), cut to microseconds."""
MAX_DURATION_TEXT = 32
"""The CRD's ``maxLength`` for ``interval`` and ``gracePeriod``."""

# One term: digits, an optional fraction, then whatever letters follow (checked below, so
# an unknown unit gets a message of its own rather than a generic "invalid").
_TERM = re.compile(r"([0-9]+)(?:\.([0-9]+))?([^\W\d_]*)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration such as ``"1h30m"``, ``"720h"``, ``"45s"`` or ``"1.5h"``.

    One or more ``<number><unit>`` terms, units ``h``, ``m``, ``s`` and ``ms``; a number
    may have a decimal fraction with at least one digit on each side of the point. This
    is the CRD's pattern ``^([0-9]+([.][0-9]+)?(ms|s|m|h))+$``. Unlike Go, a sign, a bare
    ``0`` and the units ``us``/``ns`` are refused, and so is a value finer than a
    microsecond (``timedelta``'s resolution) rather than silently rounded.
    """
    if not isinstance(text, str):
        raise InvalidSchedule("a duration must be a string")
    if not text:
        raise InvalidSchedule("a duration must not be empty")
    if len(text) > MAX_DURATION_TEXT:
        raise InvalidSchedule(f"duration {text[:40]!r} is longer than {MAX_DURATION_TEXT} chars")
    if text[0] in "+-":
        raise InvalidSchedule(f"duration {text!r}: a sign is not allowed (durations are >= 0)")
    if any(char.isspace() for char in text):
        raise InvalidSchedule(f"duration {text!r} must not contain spaces")
    micros = 0
    at = 0
    while at < len(text):
        term = _TERM.match(text, at)
        if term is None:
            raise InvalidSchedule(f"duration {text!r}: expected a number at position {at}")
        whole, fraction, unit = term.groups()
        if not unit and text.startswith(".", term.end()):
            raise InvalidSchedule(f"duration {text!r}: a decimal point needs digits on both sides")
        if not unit:
            raise InvalidSchedule(
                f"duration {text!r}: missing unit after {term.group(0)!r} (use h, m, s or ms)"
            )
        if unit not in _MICROS:
            raise InvalidSchedule(f"duration {text!r}: unknown unit {unit!r} (use h, m, s or ms)")
        scale = _MICROS[unit]
        micros += int(whole) * scale
        if fraction:
            part, remainder = divmod(int(fraction) * scale, 10 ** len(fraction))
            if remainder:
                raise InvalidSchedule(f"duration {text!r} is finer than a microsecond")
            micros += part
        if micros > _MAX_MICROS:
            raise InvalidSchedule(f"duration {text!r} overflows (at most {_MAX_TEXT})")
        at = term.end()
    return timedelta(microseconds=micros)


def _decimal(value: int, scale: int) -> str:
    whole, fraction = divmod(value, scale)
    if not fraction:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def format_duration(duration: timedelta) -> str:
    """Write ``duration`` the way Go's ``Duration.String`` does, e.g. ``"1h30m0s"``.

    ``"0s"``; ``"45s"``; ``"1m30s"``; ``"720h0m0s"``; ``"1.5s"``. Below one second Go
    switches to ms, µs or ns; this writes milliseconds with a fraction (``"0.5ms"``), since
    ``parse_duration`` takes no µs. ``parse_duration`` inverts it exactly.
    """
    micros = duration // timedelta(microseconds=1)
    if not 0 <= micros <= _MAX_MICROS:
        raise ValueError(f"duration {duration!r} is outside 0 to {MAX_DURATION!r}")
    if micros == 0:
        return "0s"
    if micros < _MICROS["s"]:
        return _decimal(micros, _MICROS["ms"]) + "ms"
    hours, rest = divmod(micros, _MICROS["h"])
    minutes, rest = divmod(rest, _MICROS["m"])
    seconds = _decimal(rest, _MICROS["s"]) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


_MAX_TEXT = format_duration(MAX_DURATION)


# Cron ------------------------------------------------------------------------------
#
# Two halves. The parser below is the CRD's grammar with Kubernetes CronJob meaning
# (robfig/cron v3's standard parser): it turns each field into the set of values it
# allows and records whether robfig would set its "star bit". cronsim then walks the
# calendar, fed an expression rewritten so that its own parsing quirks never apply.

_MONTH_NAMES = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MAX_EXPRESSION = 128
"""The CRD's ``maxLength`` for ``rotation.schedule``."""
_MINUTE = timedelta(minutes=1)
# The year 2000 starts a 400-year Gregorian cycle; measuring every schedule's shortest gap
# from the same instant makes policy validation independent of when it runs.
_GAP_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    star_high: int  # where ``*`` and ``N/step`` end: 6 for day-of-week, whose 7 is Sunday
    names: Mapping[str, int]
    names_hint: str = ""


_FIELDS = (
    _Field("minute", 0, 59, 59, {}),
    _Field("hour", 0, 23, 23, {}),
    _Field("day-of-month", 1, 31, 31, {}),
    _Field("month", 1, 12, 12, _MONTH_NAMES, " or a name JAN-DEC"),
    _Field("day-of-week", 0, 7, 6, _DAY_NAMES, " or a name SUN-SAT"),
)
_NUMBER = re.compile(r"[0-9]{1,9}")


class _FieldError(Exception):
    def __init__(self, spec: _Field, detail: str) -> None:
        super().__init__(f"{spec.name}: {detail}")


def _value(text: str, spec: _Field) -> int:
    named = spec.names.get(text.upper())
    if named is not None:
        return named
    if not _NUMBER.fullmatch(text):
        if not text:
            raise _FieldError(spec, "missing value")
        raise _FieldError(spec, f"{text!r} is not a number{spec.names_hint}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise _FieldError(spec, f"{value} is out of range {spec.low}-{spec.high}")
    return value


def _parse_field(text: str, spec: _Field) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it is restricted (anything but ``*``).

    As in Kubernetes CronJobs (robfig/cron): ``*`` or ``*/1`` anywhere in the list leaves
    the field unrestricted; ``*/2`` restricts it; ``N/step`` means ``N-max/step``, where
    max is 6 for day-of-week; ``N-M/step`` is exactly that range, even when N is M.
    """
    values: set[int] = set()
    restricted = True
    for item in text.split(","):
        if not item:
            raise _FieldError(spec, "empty item in list")
        range_text, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise _FieldError(spec, f"step {step_text!r} is not a number")
            step = int(step_text)
            if step == 0:
                raise _FieldError(spec, "step must be at least 1")
        if range_text == "*":
            low, high = spec.low, spec.star_high
            if step == 1:
                restricted = False
        else:
            low_text, dash, high_text = range_text.partition("-")
            low = _value(low_text, spec)
            if dash:
                high = _value(high_text, spec)
                if low > high:
                    raise _FieldError(spec, f"range {range_text!r} is reversed")
            else:
                high = max(low, spec.star_high) if slash else low
        values.update(range(low, high + 1, step))
    if spec.high == 7:  # day-of-week: 7 is Sunday, like 0
        values = {value % 7 for value in values}
    return frozenset(values), restricted


def _aware_utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return moment.astimezone(UTC)


def _cronsim_field(values: frozenset[int], star: bool) -> str:
    return "*" if star else ",".join(map(str, sorted(values)))


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron schedule: the set of allowed values of each of the five fields.

    ``dom_restricted`` and ``dow_restricted`` record whether day-of-month and day-of-week
    were written as something other than ``*``. When both are, a day matches if either
    does (as in Kubernetes CronJobs); otherwise both must match. An unrestricted
    day field holds every value, and a schedule that can never fire is refused.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool
    _cronsim: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        every: list[bool] = []  # per field: does it allow every value?
        for spec, values in zip(
            _FIELDS,
            (self.minutes, self.hours, self.days_of_month, self.months, self.days_of_week),
            strict=True,
        ):
            high = 6 if spec.high == 7 else spec.high
            if not values or not all(spec.low <= v <= high for v in values):
                raise InvalidSchedule(f"{spec.name}: values must be {spec.low}-{high}")
            every.append(values == frozenset(range(spec.low, high + 1)))
        for name, restricted, full in (
            ("day-of-month", self.dom_restricted, every[2]),
            ("day-of-week", self.dow_restricted, every[4]),
        ):
            if not restricted and not full:
                raise InvalidSchedule(f"{name}: an unrestricted field allows every value")
        if self.dom_restricted and not self.dow_restricted:
            # Only a date-only schedule can select no day at all (0 0 31 2 *).
            longest = max(calendar.monthrange(2000, month)[1] for month in self.months)
            if min(self.days_of_month) > longest:
                raise InvalidSchedule(
                    "day-of-month: never fires, no selected month has any of the selected days"
                )
        # cronsim ANDs the day fields when either one starts with "*" (Debian cron's test),
        # so a day field is "*" exactly when robfig's star bit is set, and a plain list of
        # numbers otherwise. Lists also sidestep where cronsim's parser differs from
        # robfig's: "N/step" runs to 7 in day-of-week, and "N-N/step" reads as "N/step".
        fields = (
            _cronsim_field(self.minutes, every[0]),
            _cronsim_field(self.hours, every[1]),
            _cronsim_field(self.days_of_month, not self.dom_restricted),
            _cronsim_field(self.months, every[3]),
            _cronsim_field(self.days_of_week, not self.dow_restricted),
        )
        object.__setattr__(self, "_cronsim", " ".join(fields))

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse five fields (minute hour day-of-month month day-of-week) or a macro.

        Each field is a comma list of ``*``, ``N`` or ``N-M``, each optionally followed by
        ``/step``; months may be JAN-DEC and days SUN-SAT (any case); day-of-week 7 is
        Sunday. Macros: @yearly, @annually, @monthly, @weekly, @daily, @hourly. A schedule
        that can never fire (``0 0 31 2 *``) is refused here too.
        """
        if not isinstance(expression, str):
            raise InvalidSchedule("a cron schedule must be a string")
        if len(expression) > _MAX_EXPRESSION:
            raise InvalidSchedule(f"cron schedule is longer than {_MAX_EXPRESSION} characters")
        text = expression.strip()
        if text.startswith("@"):
            if text not in _MACROS:
                raise InvalidSchedule(
                    f"invalid cron schedule {expression!r}: unknown macro "
                    f"(use {', '.join(_MACROS)})"
                )
            text = _MACROS[text]
        parts = text.split()
        if len(parts) != len(_FIELDS):
            raise InvalidSchedule(
                f"invalid cron schedule {expression!r}: expected 5 fields (minute hour "
                f"day-of-month month day-of-week), got {len(parts)}"
            )
        try:
            parsed = [_parse_field(part, spec) for part, spec in zip(parts, _FIELDS, strict=True)]
            (
                (minutes, _),
                (hours, _),
                (days, dom_restricted),
                (months, _),
                (weekdays, dow_restricted),
            ) = parsed
            return cls(minutes, hours, days, months, weekdays, dom_restricted, dow_restricted)
        except (_FieldError, InvalidSchedule) as exc:
            raise InvalidSchedule(f"invalid cron schedule {expression!r}: {exc}") from None

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment`` (its seconds are ignored), in UTC.

        Raises ``InvalidSchedule`` if there is none before the end of year 9999.
        """
        start = _aware_utc(moment, "the start time")
        try:
            # cronsim drops the microseconds, steps one second and looks for second 0.
            return next(CronSim(self._cronsim, start))
        except (OverflowError, StopIteration):
            # cronsim gives up after 50 years; every schedule that fires at all does so
            # within 8 (Feb 29 across 2100), so only the end of the calendar gets here.
            raise InvalidSchedule("no fire time before the end of year 9999") from None

    def shortest_gap(self, start: datetime, samples: int = 1000) -> timedelta:
        """The smallest gap between consecutive fire times over the next ``samples`` gaps.

        Stops early at one minute, the smallest gap there is, or at the end of year 9999.
        """
        if samples < 1:
            raise ValueError("samples must be at least 1")
        previous = self.next_after(start)
        current = self.next_after(previous)
        shortest = current - previous
        for _ in range(samples - 1):
            if shortest == _MINUTE:
                break
            previous = current
            try:
                current = self.next_after(previous)
            except InvalidSchedule:
                break  # the calendar ran out; the schedule itself does fire
            shortest = min(shortest, current - previous)
        return shortest


# The shortest gap, from the fields ----------------------------------------------------
#
# ``shortest_gap`` walks fire times one by one through cronsim: about 0.2 ms each, so 1,000
# of them cost 0.2-0.3 s for a yearly schedule. A policy is parsed on every reconcile, on
# the event loop, so its period is computed here from the sets instead, in well under a
# millisecond and over the whole calendar rather than a sample.
#
# Every firing day fires at the same times of day. With two or more of them, the shortest
# gap within a day is at most their span, and a gap across days of d days is
# d * 1440 - span minutes, so only two consecutive firing days (d = 1) can beat it. With
# one time a day, the gap is the fewest days between two firing days. The Gregorian
# calendar repeats every 400 years (146,097 days, a whole number of weeks), so looking
# at one cycle, plus the step into the next, sees every gap there is.

_DAY_MINUTES = 24 * 60
_CYCLE_YEARS = 400


def _firing_days(schedule: CronSchedule, year: int) -> tuple[int, ...]:
    """The days of ``year`` (0 = Jan 1) on which ``schedule`` fires, in order."""
    both = schedule.dom_restricted and schedule.dow_restricted
    days: list[int] = []
    offset = 0
    for month in range(1, 13):
        length = calendar.monthrange(year, month)[1]
        if month in schedule.months:
            first = (calendar.weekday(year, month, 1) + 1) % 7  # cron's weekday: 0 is Sunday
            by_date = {day for day in schedule.days_of_month if day <= length}
            by_weekday: set[int] = set()
            for weekday in schedule.days_of_week:
                by_weekday.update(range(1 + (weekday - first) % 7, length + 1, 7))
            chosen = by_date | by_weekday if both else by_date & by_weekday
            days.extend(offset + day - 1 for day in sorted(chosen))
        offset += length
    return tuple(days)


def _fewest_days_apart(schedule: CronSchedule, enough: int) -> int:
    """The fewest days between two consecutive firing days, or ``enough`` if that is
    at least as few (the caller needs no better answer)."""
    by_kind: dict[tuple[bool, int], tuple[int, ...]] = {}
    fewest: int | None = None
    last: int | None = None  # the last firing day seen, counted from the first Jan 1
    new_year = 0
    weekday = _GAP_REFERENCE.weekday()
    start = _GAP_REFERENCE.year
    for year in range(start, start + _CYCLE_YEARS + 1):
        leap = calendar.isleap(year)
        kind = (leap, weekday)
        days = by_kind.get(kind)
        if days is None:
            days = by_kind[kind] = _firing_days(schedule, year)
            for before, after in pairwise(days):
                if fewest is None or after - before < fewest:
                    fewest = after - before
        if days:
            if last is not None and (fewest is None or new_year + days[0] - last < fewest):
                fewest = new_year + days[0] - last
            last = new_year + days[-1]
        if fewest is not None and fewest <= enough:
            return enough
        length = 366 if leap else 365
        new_year += length
        weekday = (weekday + length) % 7
    if fewest is None:  # unreachable: a schedule that never fires is refused when built
        raise InvalidSchedule("never fires")
    return fewest


@lru_cache(maxsize=1024)
def _cron_period(schedule: CronSchedule) -> timedelta:
    """The shortest gap between two consecutive fire times, anywhere in the calendar."""
    times = sorted(hour * 60 + minute for hour in schedule.hours for minute in schedule.minutes)
    if len(times) == 1:
        return timedelta(days=_fewest_days_apart(schedule, 1))
    span = times[-1] - times[0]
    within = min(after - before for before, after in pairwise(times))
    across = _DAY_MINUTES - span  # from the last time of a day to the first of the next
    if across < within and _fewest_days_apart(schedule, 1) == 1:
        return timedelta(minutes=across)
    return timedelta(minutes=within)


# Rotation policy -------------------------------------------------------------------

DEFAULT_GRACE_PERIOD = timedelta(hours=1)
"""The grace period when ``gracePeriod`` is absent, cut to half the period if shorter."""
DEFAULT_RETAIN = 3
MAX_RETAIN = 100
MIN_INTERVAL = timedelta(seconds=10)
_SPEC_FIELDS = frozenset({"schedule", "interval", "gracePeriod", "retain"})


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When an ApiKey rotates and how long superseded versions stay around.

    At most one of ``schedule`` and ``interval``; with neither, the key rotates only on
    demand. ``grace_period`` is how long the previous version is still delivered after a
    rotation, and must be shorter than the rotation period (for a schedule, its shortest
    gap between fire times), so that no more than one previous version is ever served.
    ``retain`` counts the versions kept, the current one included.
    """

    schedule: CronSchedule | None = None
    interval: timedelta | None = None
    grace_period: timedelta = DEFAULT_GRACE_PERIOD
    retain: int = DEFAULT_RETAIN

    def __post_init__(self) -> None:
        if self.schedule is not None and self.interval is not None:
            raise InvalidSchedule("set rotation.schedule or rotation.interval, not both")
        if self.interval is not None and self.interval < MIN_INTERVAL:
            raise InvalidSchedule(
                f"rotation.interval must be at least {format_duration(MIN_INTERVAL)}, "
                f"got {_show(self.interval)}"
            )
        if isinstance(self.retain, bool) or not isinstance(self.retain, int):
            raise InvalidSchedule("rotation.retain must be an integer")
        if not 1 <= self.retain <= MAX_RETAIN:
            raise InvalidSchedule(f"rotation.retain must be 1 to {MAX_RETAIN}, got {self.retain}")
        if self.grace_period < timedelta(0):
            raise InvalidSchedule("rotation.gracePeriod must not be negative")
        period = self.period
        if period is not None and self.grace_period >= period:
            what = "interval" if self.interval is not None else "shortest gap of rotation.schedule"
            raise InvalidSchedule(
                f"rotation.gracePeriod ({_show(self.grace_period)}) must be shorter than the "
                f"rotation {what} ({_show(period)})"
            )

    @property
    def period(self) -> timedelta | None:
        """The shortest time between two scheduled rotations; ``None`` if on demand only."""
        if self.interval is not None:
            return self.interval
        if self.schedule is not None:
            return _cron_period(self.schedule)
        return None

    @classmethod
    def from_spec(cls, rotation: Mapping[str, object] | None) -> RotationPolicy:
        """Parse the CRD's ``spec.rotation`` (``schedule``, ``interval``, ``gracePeriod``,
        ``retain``; all optional, ``None`` meaning absent).

        An absent ``gracePeriod`` is the smaller of one hour and half the rotation period,
        so a short interval still gets a valid default; a given one that is not shorter
        than the period is refused rather than cut.
        """
        if rotation is None:
            return cls()
        if not isinstance(rotation, Mapping):
            raise InvalidSchedule("spec.rotation must be an object")
        unknown = sorted(set(rotation) - _SPEC_FIELDS)
        if unknown:
            raise InvalidSchedule(f"spec.rotation has unknown fields {unknown}")
        schedule = interval = grace = None
        raw_schedule = rotation.get("schedule")
        if raw_schedule is not None:
            text = _text(raw_schedule, "schedule")
            try:
                schedule = CronSchedule.parse(text)
            except InvalidSchedule as exc:
                raise InvalidSchedule(f"rotation.schedule: {exc}") from None
        raw_interval = rotation.get("interval")
        if raw_interval is not None:
            interval = _duration(raw_interval, "interval")
        raw_grace = rotation.get("gracePeriod")
        if raw_grace is not None:
            grace = _duration(raw_grace, "gracePeriod")
        raw_retain = rotation.get("retain")
        retain = DEFAULT_RETAIN if raw_retain is None else raw_retain
        if not isinstance(retain, int):
            raise InvalidSchedule("rotation.retain must be an integer")
        policy = cls(schedule=schedule, interval=interval, retain=retain, grace_period=timedelta(0))
        if grace is None:
            period = policy.period
            grace = (
                DEFAULT_GRACE_PERIOD if period is None else min(DEFAULT_GRACE_PERIOD, period // 2)
            )
        return cls(schedule=schedule, interval=interval, grace_period=grace, retain=retain)

    def next_rotation(self, activated_at: datetime) -> datetime | None:
        """When the version activated at ``activated_at`` is due to be replaced (UTC).

        ``None`` when the key rotates only on demand.
        """
        activated = _aware_utc(activated_at, "activated_at")
        if self.interval is not None:
            try:
                return activated + self.interval
            except OverflowError:
                raise InvalidSchedule("the next rotation is after the end of year 9999") from None
        if self.schedule is not None:
            return self.schedule.next_after(activated)
        return None


def _show(duration: timedelta) -> str:
    try:
        return format_duration(duration)
    except ValueError:
        return str(duration)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidSchedule(f"rotation.{name} must be a string")
    return value


def _duration(value: object, name: str) -> timedelta:
    text = _text(value, name)
    try:
        return parse_duration(text)
    except InvalidSchedule as exc:
        raise InvalidSchedule(f"rotation.{name}: {exc}") from None
