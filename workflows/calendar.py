"""Business time: the desk's calendar (weekly hours, Jalali and Gregorian holidays), the SLA targets
counted in it, and the escalation ladder laid over them. Pure functions of the times they are given.

Holidays, as strings (Persian and Arabic-Indic digits and `/` separators are accepted everywhere):
- `2026-04-01`: a Gregorian date (a year from 1700 on; TOML's bare dates are Gregorian too);
- `1405-01-01`, `۱۴۰۵/۰۱/۰۱`: a Jalali date (a year below 1700);
- `*-01-01`: a Jalali month and day every year (Nowruz). `*-12-30` falls only in leap years.

Durations: days, hours and minutes in that order, e.g. `30m`, `1h30m`, `40h`, `2d`. A `d` is a business
day of 8 business hours (`BUSINESS_DAY`), whatever the calendar's hours, so `2d` always means `16h`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.domain import Priority
from gateway.jalali import (  # noqa: F401  (re-exported: the calendar's Jalali dates)
    JALALI_YEARS, gregorian_to_jalali, is_jalali_leap, jalali_to_gregorian,
)

_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")

# --- Parsing helpers: each raises ValueError with the reason; from_mapping adds where it was -------

_HOLIDAY = re.compile(r"(\d{4}|\*)[-/](\d{1,2})[-/](\d{1,2})")
_SPAN = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DURATION = re.compile(r"(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?")
_FIRST_GREGORIAN_YEAR = 1700  # below it, a four-digit year is read as Jalali

#: A business day in durations ("2d"): 8 business hours, in seconds.
BUSINESS_DAY = 8 * 3600


def _show(value: Any) -> str:
    """A bad value as an error message shows it: as TOML/JSON would spell it, Persian kept readable."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _parse_holiday(value: Any) -> date | tuple[int, int]:
    """A Gregorian or Jalali date, or a yearly Jalali (month, day)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    text = value.translate(_DIGITS).strip() if isinstance(value, str) else ""
    match = _HOLIDAY.fullmatch(text)
    if not match:
        raise ValueError(f'{_show(value)} is not a date like "2026-03-21", "1405-01-01" or "*-01-01"')
    year, month, day = match[1], int(match[2]), int(match[3])
    try:
        if year == "*":
            if not 1 <= month <= 12 or not 1 <= day <= (31 if month <= 6 else 30):
                raise ValueError(f"no Jalali year has month {month} day {day}")
            return month, day
        if int(year) >= _FIRST_GREGORIAN_YEAR:
            return date(int(year), month, day)
        return jalali_to_gregorian(int(year), month, day)
    except ValueError as error:
        raise ValueError(f"{_show(value)} is not a date: {error}") from None


def _parse_span(value: Any) -> Span:
    text = value.translate(_DIGITS).strip() if isinstance(value, str) else ""
    match = _SPAN.fullmatch(text)
    if not match or int(match[2]) > 59 or int(match[4]) > 59:
        raise ValueError(f"{_show(value)} is not HH:MM-HH:MM")
    span = Span(int(match[1]) * 60 + int(match[2]), int(match[3]) * 60 + int(match[4]))
    if span.end > 24 * 60:
        raise ValueError(f"{_show(value)} is not HH:MM-HH:MM")
    if span.start >= span.end:
        raise ValueError(f"{_show(value)} ends before it starts (split a night shift at 24:00)")
    return span


def parse_duration(value: Any) -> int:
    """Business seconds in `value` ("30m", "1h30m", "2d"; a `d` is `BUSINESS_DAY`)."""
    text = value.translate(_DIGITS).strip().lower() if isinstance(value, str) else ""
    match = _DURATION.fullmatch(text)
    if not text or not match:
        raise ValueError(f'{_show(value)} is not a duration like "30m", "1h30m" or "2d"')
    days, hours, minutes = (int(part or 0) for part in match.groups())
    seconds = days * BUSINESS_DAY + hours * 3600 + minutes * 60
    if seconds == 0:
        raise ValueError(f"{_show(value)} must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Business seconds as hours and minutes: 5400 -> "1h30m", 57600 -> "16h"."""
    hours, minutes = divmod(round(seconds / 60), 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")


# --- The business calendar --------------------------------------------------------------------------

#: Weekday names in `date.weekday()` order, the order of `BusinessCalendar.hours`.
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Span(NamedTuple):
    """Opening hours within one local day, in minutes after local midnight; `end` may be 1440 (24:00)."""

    start: int
    end: int

    def __str__(self) -> str:
        return "{:02d}:{:02d}-{:02d}:{:02d}".format(*divmod(self.start, 60), *divmod(self.end, 60))


_DAY = (Span(9 * 60, 17 * 60),)
#: Tehran office hours: Saturday to Wednesday 09:00-17:00, Thursday 09:00-13:00, Friday off.
DEFAULT_HOURS: tuple[tuple[Span, ...], ...] = (_DAY, _DAY, _DAY, (Span(9 * 60, 13 * 60),), (), _DAY, _DAY)
# Longer runs of closed days than this mean a calendar that never opens (all 366 days holidays, say).
_MAX_CLOSED_DAYS = 400


@dataclass(frozen=True)
class BusinessCalendar:
    """When the desk is open: weekly hours in a time zone, less holidays.

    `hours` holds seven tuples of `Span`s, Monday first (`WEEKDAYS`); a local day's spans are placed
    with zoneinfo on that date, so a change of UTC offset never shifts the hours. A wall time the clock
    skips is read with the offset before the change (PEP 495 `fold=0`). `holidays` are Gregorian dates;
    `yearly_holidays` are Jalali (month, day) pairs closed every year.

    Every method takes timezone-aware datetimes in any zone and returns datetimes in UTC.
    """

    timezone: str = "Asia/Tehran"
    hours: tuple[tuple[Span, ...], ...] = DEFAULT_HOURS
    holidays: frozenset[date] = frozenset()
    yearly_holidays: frozenset[tuple[int, int]] = frozenset()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _week: timedelta = field(init=False, repr=False, compare=False)  # business time in a plain week

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _zone(self.timezone, "calendar.timezone"))
        if len(self.hours) != 7:
            raise ValueError(f"calendar.hours: needs seven days, Monday first, got {len(self.hours)}")
        for name, spans in zip(WEEKDAYS, self.hours):
            for before, after in pairwise(spans):
                if after.start < before.end:
                    raise ValueError(f'calendar.hours.{name}: "{after}" overlaps "{before}" or comes before it')
            if any(not 0 <= s.start < s.end <= 24 * 60 for s in spans):
                raise ValueError(f"calendar.hours.{name}: {spans} are not spans within a day")
        week = sum(s.end - s.start for spans in self.hours for s in spans)
        if not week:
            raise ValueError("calendar.hours: no day has business hours")
        object.__setattr__(self, "_week", timedelta(minutes=week))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "calendar") -> BusinessCalendar:
        """A calendar from settings: `timezone`, `hours` (weekday name -> list of "HH:MM-HH:MM"; a day
        not named is closed; the defaults when `hours` is absent) and `holidays` (see the module's
        docstring). A bad value raises ValueError naming its key, e.g.
        `calendar.hours.monday: "9-17" is not HH:MM-HH:MM`."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {_show(data)} is not a table")
        unknown = set(data) - {"timezone", "hours", "holidays"}
        if unknown:
            raise ValueError(f"{where}: unknown key {_show(min(unknown))} (timezone, hours, holidays)")
        timezone = data.get("timezone", "Asia/Tehran")
        _zone(timezone, f"{where}.timezone")
        hours = DEFAULT_HOURS if "hours" not in data else _parse_hours(data["hours"], f"{where}.hours")
        raw_holidays = data.get("holidays", [])
        if isinstance(raw_holidays, str | bytes) or not isinstance(raw_holidays, Sequence):
            raise ValueError(f"{where}.holidays: {_show(raw_holidays)} is not a list of dates")
        fixed, yearly = set(), set()
        for raw in raw_holidays:
            try:
                holiday = _parse_holiday(raw)
            except ValueError as error:
                raise ValueError(f"{where}.holidays: {error}") from None
            (yearly if isinstance(holiday, tuple) else fixed).add(holiday)
        return cls(timezone, hours, frozenset(fixed), frozenset(yearly))

    # -- questions about one moment or day

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    def is_holiday(self, day: date) -> bool:
        """Whether the local date `day` is closed as a holiday (whatever its weekday)."""
        if day in self.holidays:
            return True
        return bool(self.yearly_holidays) and gregorian_to_jalali(day)[1:] in self.yearly_holidays

    def is_open(self, at: datetime) -> bool:
        """Whether `at` is inside business hours (an opening time is inside, a closing time is not)."""
        _require_aware(at, "at")
        at = at.astimezone(UTC)
        return any(opens <= at < closes for opens, closes in self._spans(self._local_date(at)))

    def next_open(self, at: datetime) -> datetime:
        """The first business moment at or after `at` (`at` itself when the desk is open)."""
        return self.add(at, 0)

    # -- business-time arithmetic

    def add(self, start: datetime, business_seconds: float) -> datetime:
        """The moment `business_seconds` of business time have passed since `start`; outside hours
        the clock starts at the next opening. A duration that ends exactly at a closing time returns
        that closing time. Whole plain weeks are skipped in one step, so long durations are cheap."""
        _require_aware(start, "start")
        if not math.isfinite(business_seconds) or business_seconds < 0:
            raise ValueError(f"business_seconds must be a finite number >= 0, got {business_seconds!r}")
        cursor = start.astimezone(UTC)
        remaining = timedelta(seconds=business_seconds)
        day, closed_days = self._local_date(cursor), 0
        while True:
            spans = self._spans(day)
            for opens, closes in spans:
                if closes <= cursor:
                    continue
                opens = max(opens, cursor)
                if remaining <= closes - opens:
                    return opens + remaining
                remaining -= closes - opens
            closed_days = 0 if spans else closed_days + 1
            if closed_days > _MAX_CLOSED_DAYS:
                raise ValueError(f"calendar: no business hours in the {_MAX_CLOSED_DAYS} days before {day}")
            day += timedelta(days=1)
            # `>`, not `>=`: the last week is walked day by day so the end lands inside it.
            while remaining > self._week and self._plain_week(day):
                remaining -= self._week
                day += timedelta(days=7)

    def between(self, a: datetime, b: datetime) -> float:
        """Business seconds from `a` to `b`; 0 when `b` is not after `a`."""
        _require_aware(a, "a")
        _require_aware(b, "b")
        a, b = a.astimezone(UTC), b.astimezone(UTC)
        if b <= a:
            return 0.0
        day, last = self._local_date(a), self._local_date(b)
        total = timedelta()
        while day <= last:
            for opens, closes in self._spans(day):
                if closes > a and opens < b:
                    total += min(closes, b) - max(opens, a)
            day += timedelta(days=1)
            # Only weeks wholly after a's day and before b's day can be counted without looking.
            while day + timedelta(days=7) <= last and self._plain_week(day):
                total += self._week
                day += timedelta(days=7)
        return total.total_seconds()

    # -- internals

    def _local_date(self, moment: datetime) -> date:
        return moment.astimezone(self._zone).date()

    def _spans(self, day: date) -> list[tuple[datetime, datetime]]:
        """The local day's opening hours as UTC intervals, built per date (never by adding hours)."""
        if self.is_holiday(day):
            return []
        return [(self._utc(day, span.start), self._utc(day, span.end)) for span in self.hours[day.weekday()]]

    def _utc(self, day: date, minute: int) -> datetime:
        if minute == 24 * 60:
            day, minute = day + timedelta(days=1), 0
        return datetime.combine(day, time(*divmod(minute, 60)), self._zone).astimezone(UTC)

    def _plain_week(self, day: date) -> bool:
        """Whether the seven days from `day` hold exactly the nominal weekly hours: no holiday, and one
        UTC offset at all eight midnights (no zone changes its offset and back within a day)."""
        days = [day + timedelta(days=i) for i in range(8)]
        if any(self.is_holiday(d) for d in days[:7]):
            return False
        offsets = {self._zone.utcoffset(datetime.combine(d, time())) for d in days}
        return len(offsets) == 1


def _zone(name: Any, where: str) -> ZoneInfo:
    try:
        if isinstance(name, str):
            return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass  # the same answer as a name that is not a string
    raise ValueError(f"{where}: {_show(name)} is not a known time zone")


def _parse_hours(data: Any, where: str) -> tuple[tuple[Span, ...], ...]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: {_show(data)} is not a table of weekdays")
    week: list[tuple[Span, ...]] = [() for _ in WEEKDAYS]
    for name, raw in data.items():
        if name not in WEEKDAYS:
            raise ValueError(f"{where}: unknown day {_show(name)} ({', '.join(WEEKDAYS)})")
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, Sequence):
            raise ValueError(f'{where}.{name}: {_show(raw)} is not a list of "HH:MM-HH:MM"')
        try:
            spans = sorted(_parse_span(value) for value in values)
        except ValueError as error:
            raise ValueError(f"{where}.{name}: {error}") from None
        for before, after in pairwise(spans):
            if after.start < before.end:
                raise ValueError(f'{where}.{name}: "{after}" overlaps "{before}"')
        week[WEEKDAYS.index(name)] = tuple(spans)
    if not any(week):
        raise ValueError(f"{where}: no day has business hours")
    return tuple(week)


# --- SLA targets ---------------------------------------------------------------------------------------


class SlaKind(StrEnum):
    FIRST_RESPONSE = "first_response"
    RESOLUTION = "resolution"


@dataclass(frozen=True)
class SlaPolicy:
    """One priority's targets, in business seconds."""

    first_response: int
    resolution: int

    def __post_init__(self) -> None:
        problem = _policy_problem(self.first_response, self.resolution)
        if problem:
            raise ValueError(f"sla: {problem}")

    def target(self, kind: SlaKind | str) -> int:
        return self.first_response if SlaKind(kind) is SlaKind.FIRST_RESPONSE else self.resolution


def _policy_problem(first_response: int, resolution: int) -> str | None:
    if first_response <= 0 or resolution <= 0:
        return "targets must be longer than zero"
    if first_response > resolution:
        return (f"first_response {format_duration(first_response)} is longer than "
                f"resolution {format_duration(resolution)}")
    return None


_HOUR = 3600
_LOW, _NORMAL = SlaPolicy(16 * _HOUR, 80 * _HOUR), SlaPolicy(8 * _HOUR, 40 * _HOUR)
_HIGH, _URGENT = SlaPolicy(4 * _HOUR, 24 * _HOUR), SlaPolicy(1 * _HOUR, 8 * _HOUR)


@dataclass(frozen=True)
class SlaPolicies:
    """First-response and resolution targets per priority, counted in a `BusinessCalendar`."""

    low: SlaPolicy = _LOW
    normal: SlaPolicy = _NORMAL
    high: SlaPolicy = _HIGH
    urgent: SlaPolicy = _URGENT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "sla") -> SlaPolicies:
        """Policies from settings, e.g. `{"urgent": {"first_response": "1h", "resolution": "8h"}}`; a
        priority or target left out keeps its default. A bad value raises ValueError naming its key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {_show(data)} is not a table of priorities")
        names = [p.value for p in Priority]
        policies = {name: getattr(cls(), name) for name in names}
        for name, raw in data.items():
            if name not in names:
                raise ValueError(f"{where}: unknown priority {_show(name)} ({', '.join(names)})")
            if not isinstance(raw, Mapping):
                raise ValueError(f"{where}.{name}: {_show(raw)} is not a table of first_response and resolution")
            targets = {kind.value: policies[name].target(kind) for kind in SlaKind}
            for kind, value in raw.items():
                if kind not in targets:
                    raise ValueError(f"{where}.{name}: unknown key {_show(kind)} (first_response, resolution)")
                try:
                    targets[kind] = parse_duration(value)
                except ValueError as error:
                    raise ValueError(f"{where}.{name}.{kind}: {error}") from None
            problem = _policy_problem(**targets)
            if problem:
                raise ValueError(f"{where}.{name}: {problem}")
            policies[name] = SlaPolicy(**targets)
        return cls(**policies)

    def policy(self, priority: Priority | str) -> SlaPolicy:
        policy: SlaPolicy = getattr(self, Priority(priority).value)
        return policy

    def target(self, priority: Priority | str, kind: SlaKind | str) -> int:
        """The target in business seconds."""
        return self.policy(priority).target(kind)

    def due(self, priority: Priority | str, kind: SlaKind | str, start: datetime,
            calendar: BusinessCalendar) -> datetime:
        """When the `kind` target of a ticket of `priority` whose clock started at `start` falls due."""
        return calendar.add(start, self.target(priority, kind))


# --- Escalation ---------------------------------------------------------------------------------------


class EscalationStep(StrEnum):
    WARN = "warn"  # tell the assignee and the lead the deadline is near
    BREACH = "breach"  # the target is missed: notify the lead, raise the priority
    REASSIGN = "reassign"  # still untouched: give the ticket to someone else


@dataclass(frozen=True)
class Ladder:
    """When each escalation step fires, as fractions of the target's business time."""

    warn_at: float = 0.75
    breach_at: float = 1.0
    reassign_at: float = 1.5

    def __post_init__(self) -> None:
        problem = _ladder_problem(self.warn_at, self.breach_at, self.reassign_at)
        if problem:
            raise ValueError(f"ladder: {problem}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "sla.ladder") -> Ladder:
        """A ladder from settings (`warn_at`, `breach_at`, `reassign_at`; missing ones keep defaults)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {_show(data)} is not a table")
        values = {"warn_at": cls.warn_at, "breach_at": cls.breach_at, "reassign_at": cls.reassign_at}
        for key, value in data.items():
            if key not in values:
                raise ValueError(f"{where}: unknown key {_show(key)} (warn_at, breach_at, reassign_at)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where}.{key}: {_show(value)} is not a number")
            values[key] = value
        problem = _ladder_problem(**values)
        if problem:
            raise ValueError(f"{where}: {problem}")
        return cls(**values)


def _ladder_problem(warn_at: float, breach_at: float, reassign_at: float) -> str | None:
    if not 0 < warn_at < breach_at <= reassign_at:
        return f"needs 0 < warn_at < breach_at <= reassign_at, got {warn_at}, {breach_at}, {reassign_at}"
    return None


def ladder_steps(start: datetime, due: datetime, calendar: BusinessCalendar,
                 ladder: Ladder = Ladder()) -> list[tuple[EscalationStep, datetime]]:
    """The wall-clock moments (UTC) of warn, breach and reassign for a clock that started at `start`
    and falls due at `due`: each step's fraction of the business time between them, added to `start`
    in business time. No step from breach on fires before `due` itself."""
    target = calendar.between(start, due)
    due = due.astimezone(UTC)
    steps = []
    for step, fraction in ((EscalationStep.WARN, ladder.warn_at), (EscalationStep.BREACH, ladder.breach_at),
                           (EscalationStep.REASSIGN, ladder.reassign_at)):
        at = calendar.add(start, fraction * target)
        steps.append((step, max(at, due) if fraction >= 1 else at))
    return steps
