"""The desk's KPIs over a period (`build_report`), and a report as terminal tables or JSON.

The period runs from `since` (inclusive) to `until` (exclusive), both UTC. A ticket's group is where it
is now: its channel, its department or its assignee (`-` for none).

- new: tickets created in the period. resolved: tickets whose `resolved_at` is in it (a ticket resolved
  twice counts at its last resolution, the one the ticket keeps).
- open: tickets created before `until` and not resolved or closed before it: live now (new, open,
  waiting), or resolved, or closed without an earlier resolution, at or after `until`.
  backlog: those by age at `until`.
- first_response: tickets first answered by a person in the period, creation to that answer.
  resolution: tickets resolved in the period, creation to resolution. Median and p90 by linear
  interpolation between the closest ranks (numpy's default), to the millisecond; wall-clock, and in
  business time by `calendar.between` (None without a calendar).
- sla_breaches: tickets whose `sla_breached_at` is in the period. breach_rate: those / the tickets with a
  first-response or a resolution due time in the period (None if none).
- reopened: status changes in the period from resolved or closed back to a live status (`ticket.status`
  events), less those a survey answered by reply undid: ingest reopens the ticket on any message, and
  the score resolves it again (`survey.answered`, `"via": "reply"`). reopen_rate: reopened / resolved.
- complaints: new tickets with one of `complaint_tags` among their tags, compared case-folded, with the
  Arabic letters ي ى ك read as the Persian ی ی ک.
- csat: the scores given in the period (`csat_at`): average and count.
- messages_in, messages_out, delivery_failures: customer messages, replies (agents' and automatic; not
  internal notes, nor drafts held for or rejected by a lead) and replies given up as failed, created in
  the period, by the message's channel. Grouped by channel, a group counts its channel's messages; by
  department or agent, the messages of its tickets.
- contacts_per_customer_month: new / the distinct customers of those tickets, scaled to 30 days
  (`new / customers * 30 / the period's days`); None without new tickets.
- days: every local date (`zone`) the period touches: its new tickets by channel, breaches and scores.
- response_histogram: the period's first responses by business time (wall time without a calendar);
  a day there is a business day of 8 hours, as in the workflow's durations.

The database does the counting where SQL can (messages, the backlog), over the indexes 0006 added; the
period's tickets (about 17,000 a month at 200,000 a year) are read once and measured here.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import datetime as dt
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from gateway.db import Database
from gateway.domain import DeliveryState, Direction, TicketStatus
from gateway.jalali import TEHRAN, jalali_to_gregorian, show_date
from gateway.report_model import (
    BACKLOG_BUCKETS, RESPONSE_BUCKETS, Day, Durations, Figures, Grouping, Report,
)
from gateway.schema import agents, departments, events, messages, tickets

NO_GROUP = "-"
GROUPINGS: tuple[Grouping, ...] = ("channel", "department", "agent")

_LIVE = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.WAITING)
_DONE = (TicketStatus.RESOLVED, TicketStatus.CLOSED)
_UNSENT = (DeliveryState.HELD, DeliveryState.REJECTED)  # replies that never left, or not yet
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
#: Upper bounds, in seconds, of every bucket but the last (a bucket holds its lower bound).
_BACKLOG_BOUNDS = (_HOUR, 8 * _HOUR, _DAY, 3 * _DAY, 7 * _DAY)
_RESPONSE_BOUNDS = (15 * _MINUTE, _HOUR, 4 * _HOUR, 8 * _HOUR, 16 * _HOUR)  # a "d" is 8 business hours


class Calendar(Protocol):
    """Business time, as `workflows.calendar.BusinessCalendar` counts it."""

    def between(self, a: dt.datetime, b: dt.datetime) -> float: ...


async def build_report(db: Database, since: dt.datetime, until: dt.datetime, *, by: Grouping | None = None,
                       calendar: Calendar | None = None,
                       complaint_tags: Sequence[str] = ("complaint", "شکایت"), zone: ZoneInfo = TEHRAN) -> Report:
    """The figures of [since, until) overall, per group when `by` is set, and per local day (see the
    module's docstring for each definition). Reads one snapshot; measures outside the event loop."""
    period = _Period(_utc(since, "since"), _utc(until, "until"), by)
    if period.until <= period.since:
        raise ValueError(f"the period ends ({until.isoformat()}) before it starts ({since.isoformat()})")
    if by is not None and by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r} ({', '.join(GROUPINGS)})")
    rows = await db.run_read(lambda conn: _read(conn, period))
    # A month of tickets takes a few hundred milliseconds of Python: not on the loop other requests share.
    return await asyncio.to_thread(_report, rows, period, calendar, complaint_tags, zone)


def _utc(moment: dt.datetime, name: str) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class _Period:
    since: dt.datetime
    until: dt.datetime
    by: Grouping | None

    def within(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.and_(column >= self.since, column < self.until)


# --- Reading: a few statements, each bounded by the period or counted by the database ----------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Rows:
    tickets: list[Sequence[Any]]  # the period's tickets (see _period_tickets), their moments as the driver gives them
    bounds: tuple[Any, Any]  # the period as the driver gives moments, to compare those with
    open: list[Sequence[Any]]  # (group key, backlog bucket index, count)
    messages: list[Sequence[Any]]  # (group key, channel, direction, delivery state, count)
    events: list[Sequence[Any]]  # (group key, ticket id, kind, created_at, data)
    names: dict[int, str]  # department or agent names by id


def _group_column(by: Grouping | None) -> sa.ColumnElement[Any]:
    """The ticket column a group is (the channel when there are no groups: a harmless extra split)."""
    return {"department": tickets.c.department_id, "agent": tickets.c.assignee_id}.get(by or "", tickets.c.channel)


def _read(conn: sa.Connection, period: _Period) -> _Rows:
    key = _group_column(period.by)
    table = {"department": departments, "agent": agents}.get(period.by or "")
    names = {} if table is None else {row[0]: row[1] for row in conn.execute(sa.select(table.c.id, table.c.name))}
    return _Rows(conn.execute(_period_tickets(period, key)).all(), _native_bounds(conn, period),
                 conn.execute(_open_tickets(period, key)).all(), _message_counts(conn, period, key),
                 conn.execute(_status_events(period, key)).all(), names)


_MOMENTS = (tickets.c.created_at, tickets.c.resolved_at, tickets.c.first_response_at, tickets.c.sla_breached_at,
            tickets.c.csat_at, tickets.c.first_response_due, tickets.c.resolution_due)


def _period_tickets(period: _Period, key: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """Every ticket with anything in the period. Most of those moments have no index: one scan of the
    table, where a query per moment would be seven.

    The moments come as the driver gives them (text on SQLite, datetimes from asyncpg), and the tags as
    text: SQLAlchemy's conversion of seven timestamps a row cost more than reading the rows, and only
    new tickets' tags are decoded (most are `[]`, not decoded at all)."""
    t = tickets.c
    raw = sa.types.NullType()
    return sa.select(key, t.channel, t.customer_id, sa.cast(t.tags, sa.Text),
                     *(sa.type_coerce(moment, raw) for moment in _MOMENTS), t.csat_score).where(
        sa.or_(*(period.within(moment) for moment in _MOMENTS)))


def _native_bounds(conn: sa.Connection, period: _Period) -> tuple[Any, Any]:
    """The period's ends as the driver returns a stored moment: asyncpg's aware datetimes, or on SQLite,
    by a round trip, exactly the text the query compares (naive UTC, as SQLAlchemy writes it)."""
    if conn.dialect.name != "sqlite":
        return period.since, period.until
    moment, raw = tickets.c.created_at.type, sa.types.NullType()
    row = conn.execute(sa.select(*(sa.type_coerce(sa.bindparam(name, value, type_=moment), raw)
                                   for name, value in (("since", period.since), ("until", period.until))))).one()
    return row[0], row[1]


def _open_tickets(period: _Period, key: sa.ColumnElement[Any]) -> sa.Select[Any]:
    t, until = tickets.c, period.until
    bucket = sa.case(*((t.created_at > until - dt.timedelta(seconds=bound), index)
                       for index, bound in enumerate(_BACKLOG_BOUNDS)), else_=len(_BACKLOG_BOUNDS)).label("bucket")
    still_open = sa.or_(
        t.status.in_(_LIVE),
        sa.and_(t.status == TicketStatus.RESOLVED, t.resolved_at >= until),
        sa.and_(t.status == TicketStatus.CLOSED, t.closed_at >= until,
                sa.or_(t.resolved_at.is_(None), t.resolved_at >= until)),
    )
    # Grouped by the label: PostgreSQL would not see the CASE's bound parameters as the same expression twice.
    return (sa.select(key, bucket, sa.func.count()).where(t.created_at < until, still_open)
            .group_by(key, sa.literal_column("bucket")))


def _message_counts(conn: sa.Connection, period: _Period, key: sa.ColumnElement[Any]) -> list[Sequence[Any]]:
    m = messages.c
    counted = (m.channel, m.direction, m.delivery_state)
    where = (period.within(m.created_at), m.direction.in_((Direction.INBOUND, Direction.OUTBOUND)))
    if period.by in ("department", "agent"):  # the group's tickets' messages
        rows = conn.execute(sa.select(key, *counted, sa.func.count())
                            .select_from(messages.join(tickets, tickets.c.id == m.ticket_id))
                            .where(*where).group_by(key, *counted)).all()
        return [tuple(row) for row in rows]
    # Overall or by channel: from the (created_at, channel, direction, delivery_state) index alone.
    rows = conn.execute(sa.select(*counted, sa.func.count()).where(*where).group_by(*counted)).all()
    return [(row[0], *row) for row in rows]


def _status_events(period: _Period, key: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """The period's reopenings, and the survey answers of the tickets reopened in it (one of those by
    reply undoes a reopening). Each with its ticket's group, looked up per row: they are few, and a join
    would have PostgreSQL hash the whole tickets table."""
    e, earlier = events.c, events.alias("reopenings").c

    def reopening(c: Any) -> sa.ColumnElement[bool]:
        return sa.and_(c.kind == "ticket.status", period.within(c.created_at), c.old.in_(_DONE), c.new.not_in(_DONE))

    group = sa.select(key).where(tickets.c.id == e.ticket_id).scalar_subquery() if period.by else sa.null()
    reopened = sa.select(earlier.ticket_id).where(reopening(earlier))
    return sa.select(group, e.ticket_id, e.kind, e.created_at, e.data).where(
        e.kind.in_(("ticket.status", "survey.answered")), period.within(e.created_at),
        sa.or_(reopening(e), sa.and_(e.kind == "survey.answered", e.ticket_id.in_(reopened))))


# --- Counting ------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Tally:
    """One group's figures while rows are counted into it (mutable until frozen into `Figures`)."""

    new: int = 0
    customers: set[int] = dataclasses.field(default_factory=set)
    complaints: int = 0
    resolved: int = 0
    open: list[int] = dataclasses.field(default_factory=lambda: [0] * len(BACKLOG_BUCKETS))
    first_response: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (from, to), epoch s
    resolution: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    breaches: int = 0
    due: int = 0
    reopened: int = 0
    scores: list[int] = dataclasses.field(default_factory=list)
    messages_in: Counter[str] = dataclasses.field(default_factory=Counter)
    messages_out: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(slots=True)
class _DayTally:
    new: Counter[str] = dataclasses.field(default_factory=Counter)
    breaches: int = 0
    scores: list[int] = dataclasses.field(default_factory=list)


class _Tallies:
    """The total and, when grouping, each group's tally, keyed by the group's label."""

    def __init__(self, by: Grouping | None, names: dict[int, str]) -> None:
        self.by, self.names = by, names
        self.total = _Tally()
        self.groups: defaultdict[str, _Tally] = defaultdict(_Tally)

    def of(self, key: Any) -> tuple[_Tally, ...]:
        if self.by is None:
            return (self.total,)
        label = NO_GROUP if key is None else str(key) if self.by == "channel" else self.names.get(key, NO_GROUP)
        return self.total, self.groups[label]


def _report(rows: _Rows, period: _Period, calendar: Calendar | None, complaint_tags: Sequence[str],
            zone: ZoneInfo) -> Report:
    tallies = _Tallies(period.by, rows.names)
    local_days = _local_days(period, zone)
    days = [_DayTally() for _ in local_days]
    # Each local day's start in epoch seconds: a moment's day is found by bisection, not by time-zone arithmetic.
    day_starts = [dt.datetime.combine(day, dt.time(), zone).timestamp() for day in local_days]
    _count_tickets(rows, tallies, days, day_starts, {_fold(tag) for tag in complaint_tags})
    for key, bucket, count in rows.open:
        for tally in tallies.of(key):
            tally.open[bucket] += count
    _count_messages(rows.messages, tallies)
    _count_reopenings(rows.events, tallies)
    total = tallies.total
    business = None if calendar is None else _business_times(calendar, (*total.first_response, *total.resolution))
    period_days = (period.until - period.since).total_seconds() / _DAY
    groups = sorted(((label, tally) for label, tally in tallies.groups.items()), key=lambda g: (-g[1].new, g[0]))
    return Report(
        since=period.since, until=period.until, by=period.by,
        total=_figures("all", total, business, period_days),
        groups=tuple(_figures(label, tally, business, period_days) for label, tally in groups),
        days=tuple(Day(day, dict(sorted(t.new.items())), t.breaches, _average(t.scores), len(t.scores))
                   for day, t in zip(local_days, days)),
        response_histogram=_histogram(total.first_response, business),
    )


def _business_times(calendar: Calendar, pairs: Sequence[tuple[float, float]]) -> dict[tuple[float, float], float]:
    """Business seconds of each (from, to), measured once for the total, the groups and the histogram."""
    clock = _BusinessClock(calendar, (moment for pair in pairs for moment in pair))
    return {pair: clock.between(*pair) for pair in pairs}


def _local_days(period: _Period, zone: ZoneInfo) -> list[dt.date]:
    first = period.since.astimezone(zone).date()
    last = (period.until - dt.timedelta(microseconds=1)).astimezone(zone).date()
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def _count_tickets(rows: _Rows, tallies: _Tallies, days: list[_DayTally], day_starts: list[float],
                   complaint_tags: set[str]) -> None:
    low, high = rows.bounds

    def holds(moment: Any) -> bool:
        return moment is not None and low <= moment < high

    def day(epoch: float) -> _DayTally:
        return days[bisect.bisect_right(day_starts, epoch) - 1]

    for (key, channel, customer_id, tags, created, resolved, responded, breached, scored_at, first_due,
         resolution_due, score) in rows.tickets:
        targets, born = tallies.of(key), _epoch(created)
        if holds(created):
            complaint = _is_complaint(tags, complaint_tags)
            day(born).new[channel] += 1
            for tally in targets:
                tally.new += 1
                tally.customers.add(customer_id)
                tally.complaints += complaint
        if holds(resolved):
            took = (born, _epoch(resolved))
            for tally in targets:
                tally.resolved += 1
                tally.resolution.append(took)
        if holds(responded):
            took = (born, _epoch(responded))
            for tally in targets:
                tally.first_response.append(took)
        if holds(breached):
            day(_epoch(breached)).breaches += 1
            for tally in targets:
                tally.breaches += 1
        if holds(first_due) or holds(resolution_due):
            for tally in targets:
                tally.due += 1
        if holds(scored_at) and score is not None:
            day(_epoch(scored_at)).scores.append(score)
            for tally in targets:
                tally.scores.append(score)


_EPOCH = dt.datetime(1970, 1, 1)


def _epoch(moment: dt.datetime | str) -> float:
    """A moment as the driver gave it (an aware datetime, or SQLite's naive UTC text) in epoch seconds."""
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    # Subtracting is four times faster than attaching a tzinfo to ask for timestamp().
    return moment.timestamp() if moment.tzinfo else (moment - _EPOCH).total_seconds()


def _count_messages(rows: Iterable[Sequence[Any]], tallies: _Tallies) -> None:
    for key, channel, direction, state, count in rows:
        for tally in tallies.of(key):
            if direction == Direction.INBOUND:
                tally.messages_in[channel] += count
            elif state not in _UNSENT:
                tally.messages_out[channel] += count
                if state == DeliveryState.FAILED:
                    tally.failures[channel] += count


def _count_reopenings(rows: Iterable[Sequence[Any]], tallies: _Tallies) -> None:
    """Reopenings, less the survey answers given by reply: each undoes its ticket's latest reopening."""
    by_ticket: defaultdict[int, list[tuple[dt.datetime, bool, Any]]] = defaultdict(list)
    for key, ticket_id, kind, at, data in rows:
        if kind == "ticket.status":
            by_ticket[ticket_id].append((at, False, key))
        elif isinstance(data, dict) and data.get("via") == "reply":
            by_ticket[ticket_id].append((at, True, key))
    for history in by_ticket.values():
        kept: list[Any] = []
        for _at, answer, key in sorted(history, key=lambda item: (item[0], item[1])):
            if not answer:
                kept.append(key)
            elif kept:
                kept.pop()
        for key in kept:
            for tally in tallies.of(key):
                tally.reopened += 1


def _fold(text: str) -> str:
    """A tag as the comparison sees it: Arabic ي ى ك as Persian ی ی ک, case-folded, trimmed."""
    return text.translate(_PERSIAN_LETTERS).casefold().strip()


_PERSIAN_LETTERS = str.maketrans({"ي": "ی", "ى": "ی", "ك": "ک"})


def _is_complaint(tags: str | None, complaint_tags: set[str]) -> bool:
    """Whether a ticket's tags (their JSON text) name a complaint."""
    if not tags or tags == "[]":  # most tickets: no need to decode
        return False
    try:
        listed = json.loads(tags)
    except ValueError:
        return False
    return isinstance(listed, list) and any(isinstance(tag, str) and _fold(tag) in complaint_tags for tag in listed)


# --- Measuring -----------------------------------------------------------------------------------------


def _figures(label: str, tally: _Tally, business: dict[tuple[float, float], float] | None,
             period_days: float) -> Figures:
    return Figures(
        group=label, new=tally.new, resolved=tally.resolved, open=sum(tally.open),
        backlog=dict(zip(BACKLOG_BUCKETS, tally.open)),
        first_response=_durations(tally.first_response, business),
        resolution=_durations(tally.resolution, business),
        sla_breaches=tally.breaches, breach_rate=_ratio(tally.breaches, tally.due),
        reopened=tally.reopened, reopen_rate=_ratio(tally.reopened, tally.resolved),
        complaints=tally.complaints, csat_average=_average(tally.scores), csat_count=len(tally.scores),
        messages_in=dict(sorted(tally.messages_in.items())), messages_out=dict(sorted(tally.messages_out.items())),
        delivery_failures=dict(sorted(tally.failures.items())),
        contacts_per_customer_month=(tally.new / len(tally.customers) * 30 / period_days) if tally.customers else None,
    )


def _durations(pairs: Sequence[tuple[float, float]], business: dict[tuple[float, float], float] | None) -> Durations:
    wall = sorted(max(0.0, end - start) for start, end in pairs)
    taken = None if business is None else sorted(business[pair] for pair in pairs)
    return Durations(len(pairs), _quantile(wall, 0.5), _quantile(wall, 0.9),
                     _quantile(taken, 0.5), _quantile(taken, 0.9))


def _quantile(ordered: Sequence[float] | None, share: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default), to the millisecond."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * share
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 3)


def _histogram(pairs: Sequence[tuple[float, float]], business: dict[tuple[float, float], float] | None) -> dict[str, int]:
    counts = [0] * len(RESPONSE_BUCKETS)
    for pair in pairs:
        taken = business[pair] if business is not None else pair[1] - pair[0]
        counts[bisect.bisect_right(_RESPONSE_BOUNDS, taken)] += 1
    return dict(zip(RESPONSE_BUCKETS, counts))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _average(scores: Sequence[int]) -> float | None:
    return sum(scores) / len(scores) if scores else None


class _BusinessClock:
    """Business time between many pairs of moments, for a few dozen `calendar.between` calls per UTC day
    they fall on rather than one per pair (15-40 us each: a month's 35,000 durations would take a second).

    From a day's start, business time is piecewise linear in the time of day, with slope 1 while the desk
    is open and 0 while it is closed. Each day is traced once: cut into hours, and an hour that is neither
    wholly open nor wholly closed is halved (on whole minutes, where opening hours and time-zone offsets
    fall) until each piece is. Business time is additive, so a duration is the difference of two
    readings since the first day, as `calendar.between` would give it. (A calendar with corners inside a
    minute would be read as evenly open through that minute.)
    """

    def __init__(self, calendar: Calendar, moments: Iterable[float]) -> None:
        self._calendar = calendar
        self._days: dict[int, tuple[float, list[float], list[float]]] = {}
        elapsed, previous_end = 0.0, None
        for day in sorted({int(moment // _DAY) for moment in moments}):
            start = float(day * _DAY)
            if previous_end is not None:
                elapsed += self._between(previous_end, start)  # the days between, in one call
            corners, readings = self._trace(start)
            self._days[day] = (elapsed, corners, readings)
            elapsed += readings[-1]
            previous_end = start + _DAY

    def between(self, start: float, end: float) -> float:
        """Business seconds from `start` to `end` (epoch seconds, each one given to the constructor)."""
        return max(0.0, round(self._reading(end) - self._reading(start), 6))

    def _reading(self, moment: float) -> float:
        elapsed, corners, readings = self._days[int(moment // _DAY)]
        i = min(bisect.bisect_right(corners, moment), len(corners) - 1) - 1
        slope = (readings[i + 1] - readings[i]) / (corners[i + 1] - corners[i])
        return elapsed + readings[i] + slope * (moment - corners[i])

    def _between(self, start: float, end: float) -> float:
        return self._calendar.between(dt.datetime.fromtimestamp(start, dt.UTC), dt.datetime.fromtimestamp(end, dt.UTC))

    def _trace(self, start: float) -> tuple[list[float], list[float]]:
        """The day's corners and the business seconds from `start` to each."""
        corners, readings = [start], [0.0]
        whole = self._between(start, start + _DAY)
        if _uniform(whole, _DAY):  # a closed day (or one open all day): no corners to find
            return [start, start + _DAY], [0.0, whole]
        pieces = [(start + h * _HOUR, start + (h + 1) * _HOUR) for h in reversed(range(24))]
        while pieces:
            a, b = pieces.pop()
            gained = self._between(a, b)
            if _uniform(gained, b - a) or b - a <= _MINUTE:
                corners.append(b)
                readings.append(readings[-1] + gained)
            else:
                middle = a + (b - a) // (2 * _MINUTE) * _MINUTE
                pieces += [(middle, b), (a, middle)]
        return corners, readings


def _uniform(gained: float, length: float) -> bool:
    return abs(gained) < 1e-6 or abs(gained - length) < 1e-6


# --- Showing -------------------------------------------------------------------------------------------

_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
_DAY_TEXT = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})")
_FIRST_GREGORIAN_YEAR = 1700  # below it, a year is Jalali (as the workflow calendar's holidays read it)


def parse_day(text: str) -> dt.date:
    """A day as a person types it: Gregorian `2026-11-23`, or Jalali `1405-09-02` or `۱۴۰۵/۰۹/۰۲`
    (a year below 1700); ValueError saying what is wrong otherwise."""
    match = _DAY_TEXT.fullmatch(text.strip().translate(_DIGITS))
    if not match:
        raise ValueError(f'"{text}" is not a day: write it as 2026-11-23, or in the Jalali calendar as 1405-09-02')
    year, month, day = (int(part) for part in match.groups())
    try:
        return jalali_to_gregorian(year, month, day) if year < _FIRST_GREGORIAN_YEAR else dt.date(year, month, day)
    except ValueError as exc:
        raise ValueError(f'"{text}" is not a day: {exc}') from None


def format_seconds(seconds: float | None) -> str:
    """A duration for a person: `45s`, `12m`, `1h 05m`, `50h 00m`; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < _MINUTE:
        return f"{round(seconds)}s"
    hours, minutes = divmod(round(seconds / _MINUTE), 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def report_text(report: Report, *, jalali: bool) -> str:
    """The report as a person reads it in a terminal: the period, the totals, then a table of the groups."""
    lines = [_title(report, jalali), ""] + _totals(report)
    if report.groups:
        lines += ["", *_table(report)]
    return "\n".join(lines)


def _title(report: Report, jalali: bool) -> str:
    first, last = report.days[0].day, report.days[-1].day
    grouped = f", by {report.by}" if report.by else ""
    return (f"Kartabl report: {show_date(first, jalali=jalali)} to {show_date(last, jalali=jalali)}"
            f" ({len(report.days)} days{grouped})")


def _totals(report: Report) -> list[str]:
    f = report.total
    rows = [
        ("New tickets", f"{f.new}  (complaints {f.complaints}; {_number(f.contacts_per_customer_month)} per customer"
                        " per 30 days)"),
        ("Resolved", f"{f.resolved}  (reopened {f.reopened}: {_percent(f.reopen_rate)})"),
        ("Open at the end", f"{f.open}  ({_buckets(f.backlog)})"),
        ("First response", _durations_text(f.first_response)),
        ("Resolution", _durations_text(f.resolution)),
        ("Response times", f"{_buckets(report.response_histogram)}  ({_clock_of(f.first_response)})"),
        ("SLA breaches", f"{f.sla_breaches}  ({_percent(f.breach_rate)} of the tickets due)"),
        ("CSAT", f"{_number(f.csat_average)}  ({f.csat_count} scores)"),
        ("Messages in", _channels(f.messages_in)),
        ("Messages out", _channels(f.messages_out)),
        ("Failed replies", _channels(f.delivery_failures)),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def _clock_of(d: Durations) -> str:
    """Which time the first-response histogram counts: business time, unless there was no calendar."""
    return "wall-clock time" if d.count and d.business_median is None else "business time"


def _durations_text(d: Durations) -> str:
    if not d.count:
        return "0"
    business = (f"; business median {format_seconds(d.business_median)}, p90 {format_seconds(d.business_p90)}"
                if d.business_median is not None else "")
    return f"{d.count}: median {format_seconds(d.median)}, p90 {format_seconds(d.p90)}{business}"


_COLUMNS: tuple[tuple[str, Callable[[Figures], str]], ...] = (
    ("New", lambda f: str(f.new)),
    ("Resolved", lambda f: str(f.resolved)),
    ("Open", lambda f: str(f.open)),
    ("1st reply", lambda f: format_seconds(f.first_response.median)),
    ("business", lambda f: format_seconds(f.first_response.business_median)),
    ("Resolution", lambda f: format_seconds(f.resolution.median)),
    ("business", lambda f: format_seconds(f.resolution.business_median)),
    ("Breaches", lambda f: str(f.sla_breaches)),
    ("Reopened", lambda f: str(f.reopened)),
    ("Complaints", lambda f: str(f.complaints)),
    ("CSAT", lambda f: _number(f.csat_average)),
    ("In", lambda f: str(sum(f.messages_in.values()))),
    ("Out", lambda f: str(sum(f.messages_out.values()))),
    ("Failed", lambda f: str(sum(f.delivery_failures.values()))),
)


def _table(report: Report) -> list[str]:
    """One row per group (medians, counts); columns as wide as their widest cell."""
    header = [(report.by or "group").capitalize(), *(name for name, _ in _COLUMNS)]
    cells = [[f.group, *(show(f) for _, show in _COLUMNS)] for f in report.groups]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()
    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in cells)]


def _buckets(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _channels(counts: dict[str, int]) -> str:
    return ", ".join(f"{channel} {count}" for channel, count in counts.items()) or "0"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_json(report: Report, *, jalali: bool) -> dict[str, Any]:
    """The report as plain JSON values: moments as ISO 8601 UTC, days as ISO dates (each with a `jalali`
    string beside it when asked), durations in seconds."""
    first, last = report.days[0].day, report.days[-1].day
    out: dict[str, Any] = {
        "since": report.since.isoformat(), "until": report.until.isoformat(),
        "first_day": first.isoformat(), "last_day": last.isoformat(), "by": report.by,
        "total": dataclasses.asdict(report.total),
        "groups": [dataclasses.asdict(group) for group in report.groups],
        "days": [_day_json(day, jalali) for day in report.days],
        "response_histogram": dict(report.response_histogram),
    }
    if jalali:
        out["jalali"] = {"first_day": show_date(first, jalali=True), "last_day": show_date(last, jalali=True)}
    return out


def _day_json(day: Day, jalali: bool) -> dict[str, Any]:
    out = dataclasses.asdict(day)
    out["day"] = day.day.isoformat()
    if jalali:
        out["jalali"] = show_date(day.day, jalali=True)
    return out
