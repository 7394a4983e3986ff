"""The KPI report: every figure against values worked out by hand on a small desk, on SQLite and PostgreSQL.

The period is the seven Tehran days Thursday 2026-11-19 (1405/08/28) to Wednesday 2026-11-25
(1405/09/04). The calendar is Tehran's default week (Saturday to Wednesday 09:00-17:00, Thursday
09:00-13:00, Friday off) with Monday 2026-11-23 (1405/09/02) a holiday. Times below are Tehran's (UTC+03:30).

Tickets (T7, T8 and T11 lie outside the period and must count nowhere):
  T1  email    billing  Sara  customer 1  created Thu 19 11:00  answered Sat 21 10:00  resolved Sun 22 15:00  CSAT 5
  T2  sms      support  Reza  customer 2  created Sun 22 16:30  answered Tue 24 09:15  open            tag شكايت (Arabic)
  T3  telegram -        -     customer 1  created Tue 24 10:00  breached Tue 24 11:00   new
  T4  email    billing  Sara  customer 3  created Mon 16 10:00  reopened Sun 22 18:00  resolved Wed 25 14:00  CSAT 3
  T5  telegram support  Reza  customer 4  created Wed 25 22:00  new                     tag Complaint
  T6  sms      -        Sara  customer 2  created Thu 19 01:00  answered 01:20, resolved 02:00, reopened and closed Sat 21
  T9  email    billing  Reza  customer 4  created Sun 1 10:00   waiting since
  T10 sms      support  Reza  customer 3  created Tue 24 09:00  answered 09:05        resolved only on Fri 27
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.cli import main
from gateway.db import Database
from gateway.jalali import TEHRAN
from gateway.migrate import upgrade
from gateway.report_model import Report
from gateway.reports import _BusinessClock, build_report, format_seconds, parse_day, report_json, report_text
from gateway.schema import agents, customers, departments, events, messages, tickets
from workflows.calendar import BusinessCalendar

HOLIDAY = BusinessCalendar.from_mapping({"holidays": ["1405-09-02"]})  # Monday 2026-11-23


def tehran(day: int, hour: int, minute: int = 0, month: int = 11) -> dt.datetime:
    """A Tehran wall time in 2026, as the UTC moment the database stores."""
    return dt.datetime(2026, month, day, hour, minute, tzinfo=TEHRAN).astimezone(dt.UTC)


SINCE, UNTIL = tehran(19, 0), tehran(26, 0)  # Thursday 19 00:00 to Thursday 26 00:00, Tehran


def _ticket(id: int, channel: str, created: dt.datetime, *, customer: int, status: str, department: int | None = None,
            assignee: int | None = None, tags: list[str] | None = None, **moments: Any) -> dict[str, Any]:
    row = {"id": id, "customer_id": customer, "subject": f"T{id}", "status": status, "priority": "normal",
           "department_id": department, "assignee_id": assignee, "channel": channel, "reply_kind": "email",
           "reply_to": f"c{customer}@example.ir", "tags": tags or [], "created_at": created, "updated_at": created}
    for name in ("first_response_at", "first_response_due", "resolution_due", "resolved_at", "closed_at",
                 "sla_breached_at", "csat_score", "csat_at"):
        row[name] = moments.pop(name, None)
    assert not moments, moments
    return row


TICKETS = [
    _ticket(1, "email", tehran(19, 11), customer=1, status="resolved", department=1, assignee=1, tags=["complaint"],
            first_response_at=tehran(21, 10), first_response_due=tehran(21, 15), resolution_due=tehran(28, 15),
            resolved_at=tehran(22, 15), csat_score=5, csat_at=tehran(22, 16)),
    _ticket(2, "sms", tehran(22, 16, 30), customer=2, status="open", department=2, assignee=2, tags=["شكايت"],
            first_response_at=tehran(24, 9, 15), first_response_due=tehran(24, 16, 30), resolution_due=tehran(1, 12, month=12)),
    _ticket(3, "telegram", tehran(24, 10), customer=1, status="new", tags=["complaints"],
            first_response_due=tehran(24, 11), sla_breached_at=tehran(24, 11)),
    _ticket(4, "email", tehran(16, 10), customer=3, status="resolved", department=1, assignee=1, tags=["vip"],
            first_response_at=tehran(16, 11), first_response_due=tehran(16, 17), resolution_due=tehran(21, 12),
            sla_breached_at=tehran(21, 12), resolved_at=tehran(25, 14), csat_score=3, csat_at=tehran(25, 15)),
    _ticket(5, "telegram", tehran(25, 22), customer=4, status="new", department=2, assignee=2, tags=["vip", "Complaint"]),
    _ticket(6, "sms", tehran(19, 1), customer=2, status="closed", assignee=1, first_response_at=tehran(19, 1, 20),
            resolved_at=tehran(19, 2), closed_at=tehran(21, 9, 30)),
    # Resolved, scored and closed before the period.
    _ticket(7, "email", tehran(1, 9), customer=1, status="closed", department=1, first_response_at=tehran(1, 10),
            resolved_at=tehran(2, 9), closed_at=tehran(5, 9), csat_score=1, csat_at=tehran(2, 12)),
    # Resolved before the period's end, closed only after it: not open at the end.
    _ticket(8, "sms", tehran(10, 10), customer=3, status="closed", department=2, tags=["complaint"],
            first_response_at=tehran(10, 11), resolved_at=tehran(12, 10), closed_at=tehran(27, 10)),
    _ticket(9, "email", tehran(1, 10), customer=4, status="waiting", department=1, assignee=2,
            first_response_at=tehran(1, 10, 30)),
    # Resolved after the period's end: open at it.
    _ticket(10, "sms", tehran(24, 9), customer=3, status="resolved", department=2, assignee=2,
            first_response_at=tehran(24, 9, 5), resolved_at=tehran(27, 11)),
    # Created after the period.
    _ticket(11, "email", tehran(26, 10), customer=4, status="new", tags=["complaint"]),
]


def _message(id: int, ticket: int, channel: str, direction: str, state: str, at: dt.datetime) -> dict[str, Any]:
    return {"id": id, "ticket_id": ticket, "direction": direction, "channel": channel, "provider_id": f"p{id}",
            "text": f"message {id}", "delivery_state": state, "created_at": at}


MESSAGES = [
    _message(1, 1, "email", "in", "received", tehran(19, 11)),
    _message(2, 1, "email", "out", "delivered", tehran(21, 10)),
    _message(3, 1, "email", "note", "received", tehran(21, 9, 50)),  # internal: not a reply
    _message(4, 2, "sms", "in", "received", tehran(22, 16, 30)),
    _message(5, 2, "sms", "out", "failed", tehran(24, 9, 15)),
    _message(6, 2, "sms", "out", "delivered", tehran(24, 9, 30)),
    _message(7, 3, "telegram", "in", "received", tehran(24, 10)),
    _message(8, 4, "email", "in", "received", tehran(22, 18)),
    _message(9, 4, "email", "out", "held", tehran(25, 13)),  # waiting for a lead: not (yet) a reply
    _message(10, 4, "email", "out", "rejected", tehran(25, 13, 10)),  # never sent
    _message(11, 4, "email", "out", "sent", tehran(25, 13, 30)),
    _message(12, 5, "telegram", "in", "received", tehran(25, 22)),
    _message(13, 6, "sms", "in", "received", tehran(19, 1)),
    _message(14, 6, "sms", "out", "delivered", tehran(19, 1, 20)),
    _message(15, 9, "email", "in", "received", tehran(1, 10)),
    _message(16, 11, "email", "in", "received", tehran(26, 10)),
    _message(17, 10, "sms", "in", "received", tehran(24, 9)),
    _message(18, 10, "sms", "out", "failed", tehran(24, 9, 5)),
]


def _event(ticket: int, kind: str, at: dt.datetime, old: str | None = None, new: str | None = None,
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ticket_id": ticket, "customer_id": None, "actor": "system", "kind": kind, "field": "status" if old else None,
            "old": old, "new": new, "data": data, "created_at": at}


EVENTS = [
    _event(4, "ticket.status", tehran(22, 12), "open", "resolved"),
    _event(4, "ticket.status", tehran(22, 18), "resolved", "open"),  # a reopening
    _event(4, "ticket.status", tehran(25, 14), "open", "resolved"),
    _event(4, "survey.answered", tehran(25, 15), data={"score": 3, "via": "link"}),
    # T1's customer answered the survey by replying "5": ingest reopened, the score resolved it again.
    _event(1, "ticket.status", tehran(22, 16), "resolved", "open"),
    _event(1, "survey.answered", tehran(22, 16), data={"score": 5, "via": "reply"}),
    _event(6, "ticket.status", tehran(21, 9), "closed", "open"),  # an agent reopened a closed ticket
    _event(6, "ticket.status", tehran(21, 9, 30), "open", "closed"),
    _event(9, "ticket.status", tehran(24, 12), "waiting", "open"),  # not a reopening
    _event(9, "ticket.status", tehran(24, 13), "open", "waiting"),
    _event(8, "ticket.status", tehran(11, 10), "resolved", "open"),  # before the period
]


async def seed(db: Database) -> None:
    await upgrade(db)
    async with db.write() as conn:
        await conn.execute(sa.insert(customers), [{"id": i, "name": f"C{i}", "tags": [], "created_at": tehran(1, 0)}
                                                  for i in range(1, 5)])
        await conn.execute(sa.insert(departments), [{"id": 1, "name": "billing", "created_at": tehran(1, 0)},
                                                    {"id": 2, "name": "پشتیبانی", "created_at": tehran(1, 0)}])
        await conn.execute(sa.insert(agents), [{"id": 1, "name": "Sara", "created_at": tehran(1, 0)},
                                               {"id": 2, "name": "Reza", "created_at": tehran(1, 0)}])
        await conn.execute(sa.insert(tickets), TICKETS)
        await conn.execute(sa.insert(messages), MESSAGES)
        await conn.execute(sa.insert(events), EVENTS)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await seed(database)
    yield database
    await database.dispose()


async def _report(db: Database, **options: Any) -> Report:
    return await build_report(db, SINCE, UNTIL, **{"calendar": HOLIDAY, **options})


async def test_the_totals_match_the_hand_counted_desk(db: Database) -> None:
    f = (await _report(db)).total
    assert f.group == "all"
    assert f.new == 6  # T1 T2 T3 T5 T6 T10
    assert f.resolved == 3  # T1 T4 T6 (T8 before, T10 after)
    assert f.open == 5  # T2 T3 T5 T9 T10 (T8: resolved before the end, closed after)
    # Ages at Thursday 26 00:00: T5 2h; T10 39h, T3 38h; T2 79h30m; T9 24 days.
    assert f.backlog == {"<1h": 0, "1-8h": 1, "8-24h": 0, "1-3d": 2, "3-7d": 1, ">7d": 1}
    assert f.sla_breaches == 2  # T3 Tue 24, T4 Sat 21
    assert f.breach_rate == 0.5  # 2 breaches / 4 tickets due in the period (T1 T2 T3 first response, T4 resolution)
    assert f.reopened == 2  # T4 (customer), T6 (agent); T1's was its survey answer
    assert f.reopen_rate == pytest.approx(2 / 3)
    assert f.complaints == 3  # T1 "complaint", T2 "شكايت" (Arabic kaf and yeh), T5 "Complaint"; not T3 "complaints"
    assert (f.csat_average, f.csat_count) == (4.0, 2)  # (5 + 3) / 2; T7's 1 was before
    assert f.messages_in == {"email": 2, "sms": 3, "telegram": 2}
    assert f.messages_out == {"email": 2, "sms": 4}  # not the note, the held draft nor the rejected one
    assert f.delivery_failures == {"sms": 2}
    assert f.contacts_per_customer_month == pytest.approx(45 / 7)  # 6 new / 4 customers * 30 / 7 days


async def test_durations_are_wall_clock_and_business_time_across_the_weekend_and_the_holiday(db: Database) -> None:
    f = (await _report(db)).total
    # First responses in the period, wall-clock / business:
    #   T10 Tue 09:00 -> 09:05:              300 /   300
    #   T6  Thu 01:00 -> 01:20 (closed):    1200 /     0
    #   T2  Sun 16:30 -> Tue 09:15:       146700 /  2700  (40h45m; Sun 30m + Mon holiday + Tue 15m)
    #   T1  Thu 11:00 -> Sat 10:00:       169200 / 10800  (47h; Thu 11-13 2h + Friday off + Sat 9-10 1h)
    # Linear interpolation: median at rank 1.5, p90 at rank 2.7.
    assert f.first_response.count == 4
    assert f.first_response.median == 73950  # (1200 + 146700) / 2
    assert f.first_response.p90 == 162450  # 146700 + 0.7 * (169200 - 146700)
    assert f.first_response.business_median == 1500  # (300 + 2700) / 2
    assert f.first_response.business_p90 == 8370  # 2700 + 0.7 * (10800 - 2700)
    # Resolutions in the period:
    #   T6  Thu 01:00 -> 02:00:          3600 /      0
    #   T1  Thu 11:00 -> Sun 15:00:    273600 /  57600  (76h; Thu 2h + Sat 8h + Sun 6h)
    #   T4  Mon 16 10:00 -> Wed 25 14:00: 792000 / 201600  (220h; Mon 7 + Tue 8 + Wed 8 + Thu 4 + Sat 8 + Sun 8
    #                                                      + Mon 23 holiday 0 + Tue 8 + Wed 5 = 56h)
    assert f.resolution.count == 3
    assert (f.resolution.median, f.resolution.p90) == (273600, 688320)  # 273600 + 0.8 * (792000 - 273600)
    assert (f.resolution.business_median, f.resolution.business_p90) == (57600, 172800)  # 57600 + 0.8 * 144000


async def test_without_the_holiday_monday_counts_and_without_a_calendar_there_is_no_business_time(db: Database) -> None:
    plain = (await _report(db, calendar=BusinessCalendar())).total
    # T2 gains Monday's 8h: 30m + 8h + 15m = 8h45m = 31500; sorted 0, 300, 10800, 31500.
    assert plain.first_response.business_median == 5550  # (300 + 10800) / 2
    none = await _report(db, calendar=None)
    assert none.total.first_response.median == 73950
    assert none.total.first_response.business_median is None and none.total.resolution.business_p90 is None
    # Wall time then: 5m, 20m, 40h45m, 47h.
    assert none.response_histogram == {"<15m": 1, "15m-1h": 1, "1-4h": 0, "4-8h": 0, "1-2d": 0, ">2d": 2}


async def test_the_histogram_counts_first_responses_by_business_time(db: Database) -> None:
    report = await _report(db)
    # Business: 0 and 5m under 15m; 45m; 3h.
    assert report.response_histogram == {"<15m": 2, "15m-1h": 1, "1-4h": 1, "4-8h": 0, "1-2d": 0, ">2d": 0}


async def test_a_bucket_holds_its_lower_bound(db: Database) -> None:
    since, until = tehran(3, 0, month=10), tehran(4, 0, month=10)  # Saturday 3 October, Tehran
    async with db.write() as conn:
        await conn.execute(sa.insert(tickets), [
            # Answered after exactly 15 business minutes; resolved, so not in the backlog.
            _ticket(21, "email", tehran(3, 10, month=10), customer=1, status="resolved",
                    first_response_at=tehran(3, 10, 15, month=10), resolved_at=tehran(3, 12, month=10)),
            # Exactly an hour old at the period's end.
            _ticket(22, "email", tehran(3, 23, month=10), customer=1, status="new"),
        ])
    report = await build_report(db, since, until, calendar=HOLIDAY)
    assert report.response_histogram == {"<15m": 0, "15m-1h": 1, "1-4h": 0, "4-8h": 0, "1-2d": 0, ">2d": 0}
    assert report.total.backlog == {"<1h": 0, "1-8h": 1, "8-24h": 0, "1-3d": 0, "3-7d": 0, ">7d": 0}


async def test_days_are_tehran_dates(db: Database) -> None:
    days = (await _report(db)).days
    assert [d.day for d in days] == [dt.date(2026, 11, 19) + dt.timedelta(days=n) for n in range(7)]
    by_day = {d.day.day: d for d in days}
    # T6 was created Thursday 01:00 in Tehran, still Wednesday 21:30 in UTC.
    assert by_day[19].new_by_channel == {"email": 1, "sms": 1}
    assert by_day[20].new_by_channel == {} and by_day[20].csat_average is None and by_day[20].csat_count == 0
    assert by_day[21].sla_breaches == 1  # T4
    assert (by_day[22].new_by_channel, by_day[22].csat_average, by_day[22].csat_count) == ({"sms": 1}, 5.0, 1)
    assert by_day[24].new_by_channel == {"sms": 1, "telegram": 1} and by_day[24].sla_breaches == 1
    assert (by_day[25].new_by_channel, by_day[25].csat_average) == ({"telegram": 1}, 3.0)
    assert sum(d.sla_breaches for d in days) == 2


async def test_grouped_by_channel(db: Database) -> None:
    report = await _report(db, by="channel")
    assert [g.group for g in report.groups] == ["sms", "telegram", "email"]  # by new: 3, 2, 1
    sms, telegram, email = report.groups
    assert (sms.new, sms.resolved, sms.open, sms.reopened, sms.reopen_rate) == (3, 1, 2, 1, 1.0)
    assert sms.backlog == {"<1h": 0, "1-8h": 0, "8-24h": 0, "1-3d": 1, "3-7d": 1, ">7d": 0}
    assert (sms.first_response.count, sms.first_response.median) == (3, 1200)  # 300, 1200, 146700
    assert (sms.sla_breaches, sms.breach_rate, sms.complaints) == (0, 0.0, 1)  # T2 was due, in time
    assert (sms.messages_in, sms.messages_out, sms.delivery_failures) == ({"sms": 3}, {"sms": 4}, {"sms": 2})
    assert sms.contacts_per_customer_month == pytest.approx(45 / 7)  # 3 tickets / customers 2 and 3 * 30 / 7
    assert (telegram.new, telegram.open, telegram.sla_breaches, telegram.breach_rate) == (2, 2, 1, 1.0)
    assert telegram.reopen_rate is None and telegram.csat_average is None  # nothing resolved, nothing scored
    assert (email.new, email.resolved, email.open, email.reopened, email.csat_average) == (1, 2, 1, 1, 4.0)
    assert (email.resolution.median, email.resolution.business_median) == (532800, 129600)  # (T1 + T4) / 2
    assert email.messages_out == {"email": 2} and email.delivery_failures == {}


async def test_grouped_by_department_and_by_agent(db: Database) -> None:
    departments_ = (await _report(db, by="department")).groups
    assert [(g.group, g.new, g.resolved, g.open) for g in departments_] == [
        ("پشتیبانی", 3, 0, 3), ("-", 2, 1, 1), ("billing", 1, 2, 1)]
    support, none, billing = departments_
    # A department's messages are its tickets' on whatever channel they came.
    assert (support.messages_in, support.messages_out, support.delivery_failures) == (
        {"sms": 2, "telegram": 1}, {"sms": 3}, {"sms": 2})
    assert (none.messages_in, none.messages_out, none.reopened) == ({"sms": 1, "telegram": 1}, {"sms": 1}, 1)
    assert (billing.messages_in, billing.messages_out, billing.complaints) == ({"email": 2}, {"email": 2}, 1)
    agents_ = (await _report(db, by="agent")).groups
    assert [(g.group, g.new, g.resolved, g.open, g.reopened) for g in agents_] == [
        ("Reza", 3, 0, 4, 0), ("Sara", 2, 3, 0, 2), ("-", 1, 0, 1, 0)]
    reza = agents_[0]
    assert reza.backlog == {"<1h": 0, "1-8h": 1, "8-24h": 0, "1-3d": 1, "3-7d": 1, ">7d": 1}


async def test_the_text_report(db: Database) -> None:
    report = await _report(db, by="channel")
    text = report_text(report, jalali=False)
    lines = text.splitlines()
    assert lines[0] == "Kartabl report: 2026-11-19 to 2026-11-25 (7 days, by channel)"
    assert "New tickets      6  (complaints 3; 6.43 per customer per 30 days)" in lines
    assert "Open at the end  5  (<1h 0, 1-8h 1, 8-24h 0, 1-3d 2, 3-7d 1, >7d 1)" in lines
    assert ("First response   4: median 20h 32m, p90 45h 08m; business median 25m, p90 2h 20m") in lines
    assert "SLA breaches     2  (50.0% of the tickets due)" in lines
    assert "Failed replies   sms 2" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("Channel"))
    assert lines[header].split() == ["Channel", "New", "Resolved", "Open", "1st", "reply", "business", "Resolution",
                                     "business", "Breaches", "Reopened", "Complaints", "CSAT", "In", "Out", "Failed"]
    assert lines[header + 2].split() == ["sms", "3", "1", "2", "20m", "5m", "1h", "00m", "0s", "0", "1", "1", "-",
                                         "3", "4", "2"]
    assert len({len(line) for line in lines[header:header + 2]}) == 1  # the rule under the header is as wide
    jalali = report_text(report, jalali=True)
    assert jalali.splitlines()[0] == "Kartabl report: 1405/08/28 to 1405/09/04 (7 days, by channel)"


async def test_the_json_report(db: Database) -> None:
    data = json.loads(json.dumps(report_json(await _report(db, by="agent"), jalali=True)))
    assert data["since"] == "2026-11-18T20:30:00+00:00" and data["until"] == "2026-11-25T20:30:00+00:00"
    assert (data["first_day"], data["last_day"]) == ("2026-11-19", "2026-11-25")
    assert data["jalali"] == {"first_day": "1405/08/28", "last_day": "1405/09/04"}
    assert data["total"]["first_response"] == {"count": 4, "median": 73950, "p90": 162450, "business_median": 1500,
                                               "business_p90": 8370}
    assert data["days"][3] == {"day": "2026-11-22", "jalali": "1405/09/01", "new_by_channel": {"sms": 1},
                               "sla_breaches": 0, "csat_average": 5.0, "csat_count": 1}
    assert [g["group"] for g in data["groups"]] == ["Reza", "Sara", "-"]
    plain = report_json(await _report(db), jalali=False)
    assert "jalali" not in plain and "jalali" not in plain["days"][0] and plain["groups"] == []


async def test_a_period_with_nothing_in_it(db: Database) -> None:
    report = await build_report(db, tehran(1, 0, month=10), tehran(2, 0, month=10), by="channel", calendar=HOLIDAY)
    f = report.total
    assert (f.new, f.resolved, f.open, f.csat_count, f.reopened) == (0, 0, 0, 0, 0)
    assert f.first_response.median is None and f.breach_rate is None and f.contacts_per_customer_month is None
    assert report.groups == () and [d.day for d in report.days] == [dt.date(2026, 10, 1)]
    assert "Kartabl report: 2026-10-01 to 2026-10-01 (1 days, by channel)" in report_text(report, jalali=False)


async def test_the_period_must_be_aware_and_forward(db: Database) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await build_report(db, dt.datetime(2026, 11, 19), UNTIL)
    with pytest.raises(ValueError, match="before it starts"):
        await build_report(db, UNTIL, SINCE)
    with pytest.raises(ValueError, match="cannot group by 'priority'"):
        await build_report(db, SINCE, UNTIL, by="priority")  # type: ignore[arg-type]


def test_the_business_clock_agrees_with_the_calendar() -> None:
    start = tehran(10, 0).timestamp()
    moments = [start + n * 3517.3 for n in range(400)]  # every hour or so, for 16 days, at odd seconds
    clock = _BusinessClock(HOLIDAY, moments)
    for a, b in zip(moments[::7], moments[150::3]):
        expected = HOLIDAY.between(dt.datetime.fromtimestamp(a, dt.UTC), dt.datetime.fromtimestamp(b, dt.UTC))
        assert clock.between(a, b) == pytest.approx(expected, abs=1e-5)
    assert clock.between(moments[5], moments[2]) == 0  # backwards: none, as the calendar says


def test_durations_read_as_hours_and_minutes() -> None:
    assert [format_seconds(s) for s in (None, 0, 45, 720, 3900, 180000)] == ["-", "0s", "45s", "12m", "1h 05m", "50h 00m"]


@pytest.mark.parametrize(("text", "day"), [
    ("2026-11-23", dt.date(2026, 11, 23)),
    ("1405-09-02", dt.date(2026, 11, 23)),
    ("۱۴۰۵/۰۹/۰۲", dt.date(2026, 11, 23)),
    ("1405/9/2", dt.date(2026, 11, 23)),
    (" 2026/11/23 ", dt.date(2026, 11, 23)),
])
def test_days_are_gregorian_or_jalali(text: str, day: dt.date) -> None:
    assert parse_day(text) == day


@pytest.mark.parametrize(("text", "reason"), [
    ("yesterday", "write it as 2026-11-23"),
    ("23-11-2026", "write it as 2026-11-23"),
    ("2026-02-30", "day is out of range for month"),
    ("1405-12-30", "has no day 30"),  # 1405 is not a leap year
    ("1405-13-01", "month 13 is not 1..12"),
])
def test_a_bad_day_says_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_day(text)
    assert str(caught.value).startswith(f'"{text}" is not a day')


# --- The command -----------------------------------------------------------------------------------------


@pytest.fixture
async def settings_file(db_url: str, tmp_path: Path) -> Path:
    database = Database(db_url)
    try:
        await seed(database)
    finally:
        await database.dispose()
    workflow = tmp_path / "workflows.toml"
    workflow.write_text('[calendar]\nholidays = ["۱۴۰۵/۰۹/۰۲"]\n', encoding="utf-8")
    path = tmp_path / "settings.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n\n[workflows]\nfile = "{workflow}"\n\n'
                    '[reports]\njalali = true\n', encoding="utf-8")
    return path


def test_the_command_reports_local_days_with_the_workflow_calendar(settings_file: Path, capsys: Any) -> None:
    # Jalali from the settings; --until is included: the period runs to Thursday 26 00:00 Tehran.
    assert main(["--config", str(settings_file), "report", "--since", "1405/08/28", "--until", "2026-11-25",
                 "--by", "department", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["since"], data["until"]) == ("2026-11-18T20:30:00+00:00", "2026-11-25T20:30:00+00:00")
    assert data["jalali"] == {"first_day": "1405/08/28", "last_day": "1405/09/04"}
    assert data["total"]["new"] == 6 and data["total"]["complaints"] == 3
    assert data["total"]["first_response"]["business_median"] == 1500  # the workflow file's holiday counted
    assert [g["group"] for g in data["groups"]] == ["پشتیبانی", "-", "billing"]

    assert main(["--config", str(settings_file), "report", "--since", "2026-11-19", "--until", "1405-09-04",
                 "--no-jalali"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Kartabl report: 2026-11-19 to 2026-11-25 (7 days)\n")
    assert "Resolved         3  (reopened 2: 66.7%)" in out


def test_the_command_defaults_to_the_last_30_days(settings_file: Path, capsys: Any) -> None:
    assert main(["--config", str(settings_file), "report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    today = dt.datetime.now(TEHRAN).date()
    assert (data["first_day"], data["last_day"]) == ((today - dt.timedelta(days=29)).isoformat(), today.isoformat())
    assert len(data["days"]) == 30


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "1405-13-01"], 'kartabl: "1405-13-01" is not a day: Jalali month 13 is not 1..12\n'),
    (["--until", "tomorrow"], 'kartabl: "tomorrow" is not a day: write it as 2026-11-23, or in the Jalali calendar '
                              'as 1405-09-02\n'),
    (["--since", "2026-11-25", "--until", "2026-11-19"], "kartabl: --since 2026-11-25 is after --until 2026-11-19\n"),
])
def test_the_command_refuses_a_bad_day(tmp_path: Path, capsys: Any, args: list[str], message: str) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "k.db"}"\n', encoding="utf-8")
    assert main(["--config", str(config), "report", *args]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message)


def test_the_command_has_help(capsys: Any) -> None:
    with pytest.raises(SystemExit) as done:
        main(["report", "--help"])
    assert done.value.code == 0
    assert "--since DAY" in capsys.readouterr().out


def test_the_command_refuses_a_workflow_file_that_does_not_validate(tmp_path: Path, capsys: Any) -> None:
    workflow = tmp_path / "workflows.toml"
    workflow.write_text('[calendar]\nholidays = ["1405-13-01"]\n', encoding="utf-8")
    config = tmp_path / "settings.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "k.db"}"\n\n[workflows]\nfile = "{workflow}"\n',
                      encoding="utf-8")
    assert main(["--config", str(config), "report"]) == 1
    assert capsys.readouterr().err.startswith('kartabl: workflows.toml: calendar.holidays: "1405-13-01" is not a date')
