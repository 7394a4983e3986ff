"""The workflow engine on the real gateway: rules, assignment, SLA clocks and their ladder, review,
referral, resolution with its survey, auto-close, the workflow file's reloads, and `kartabl rules`."""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway import staff
from gateway.cli import main
from gateway.domain import ChannelKind, DeliveryState, TicketStatus
from gateway.ingest import INBOUND_JOB
from gateway.jalali import JALALI_MONTHS, TEHRAN, gregorian_to_jalali, persian_digits
from gateway.messages import utcnow
from gateway.schema import events, jobs, messages, tickets
from gateway.settings import WorkflowSettings
from tests.conftest import Gateway, eventually, inbound
from workflows.calendar import SlaKind
from workflows.config import WorkflowFile, parse_workflow

WORKFLOW = textwrap.dedent('''\
    [calendar]
    timezone = "Asia/Tehran"

    [sla.normal]
    first_response = "1h"
    resolution = "8h"
    [sla.high]
    first_response = "30m"
    resolution = "4h"

    [desk]
    leads = ["lead_user"]
    review = ["billing"]
    strategies = { billing = "round_robin" }

    [[rule]]
    name = "فاکتور به مالی"
    [rule.when]
    text_any = ["فاکتور"]
    [rule.then]
    department = "billing"
    priority = "high"
    tags = ["billing"]

    [[rule]]
    name = "VIP"
    [rule.when]
    customer_tags = ["vip"]
    [rule.then]
    priority = "urgent"
    stop = true
    ''')


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOW, encoding="utf-8")
    return path


@pytest.fixture
async def desk_gateway(start_gateway: Callable[..., Any], workflow_file: Path) -> Gateway:
    gw = await start_gateway(workflows=WorkflowSettings(file=str(workflow_file), reload_interval=0.5))
    await staff.add_department(gw.runtime.db, "billing")
    await staff.add_department(gw.runtime.db, "sales")
    for n in (1, 2, 3):
        await staff.add_agent(gw.runtime.db, f"Billing {n}", telegram_user_id=100 + n, username=f"b{n}",
                              department_names=("billing",))
    await staff.add_agent(gw.runtime.db, "Sales 1", telegram_user_id=201, username="s1", department_names=("sales",))
    await staff.add_agent(gw.runtime.db, "Lead", telegram_user_id=300, username="lead_user", is_lead=True)
    return gw


async def _routed(gw: Gateway, ticket_id: int) -> Any:
    await eventually(lambda: gw.count(events, events.c.ticket_id == ticket_id, events.c.kind == "ticket.routed"),
                     lambda n: n == 1)
    return (await gw.rows(sa.select(tickets).where(tickets.c.id == ticket_id)))[0]


async def _fire(gw: Gateway, job_kind: str, **payload: Any) -> None:
    """The timers of `job_kind` whose payload matches, due now (as if their time had come)."""
    def due_now(conn: sa.Connection) -> int:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.payload).where(jobs.c.kind == job_kind)).all()
        ids = [r.id for r in rows if all(r.payload.get(k) == v for k, v in payload.items())]
        conn.execute(sa.update(jobs).where(jobs.c.id.in_(ids)).values(due_at=utcnow()))
        return len(ids)
    assert await gw.runtime.db.run_write(due_now) > 0
    gw.runtime.queue.wake()


async def test_new_tickets_are_routed_by_the_rules_assigned_in_turn_and_given_their_clocks(
        desk_gateway: Gateway) -> None:
    gw = desk_gateway
    results = [await gw.channel.write(inbound(f"m{n}", f"email:c{n}@example.ir", "فاكتور خرید من اشتباه است"))
               for n in range(6)]  # Arabic kaf: the rule's «فاکتور» still matches

    routed = [await _routed(gw, r.ticket_id) for r in results]
    config = parse_workflow(WORKFLOW, "workflows.toml")
    billing = await gw.scalar(sa.select(sa.text("id")).select_from(sa.text("departments")).where(
        sa.text("name = 'billing'")))
    assert {(t.department_id, t.priority, tuple(t.tags), t.review) for t in routed} == {
        (billing, "high", ("billing",), True)}
    counts: dict[int, int] = {}
    for t in routed:
        counts[t.assignee_id] = counts.get(t.assignee_id, 0) + 1
    assert sorted(counts.values()) == [2, 2, 2]  # round robin over the three billing agents
    first = routed[0]
    assert first.first_response_due == config.sla.due("high", SlaKind.FIRST_RESPONSE, first.created_at,
                                                      config.calendar)
    assert first.resolution_due == config.sla.due("high", SlaKind.RESOLUTION, first.created_at, config.calendar)
    why = await gw.rows(sa.select(events.c.actor, events.c.data).where(
        events.c.ticket_id == first.id, events.c.kind == "rule.fired"))
    assert why[0].actor == "rule:فاکتور به مالی" and "فاکتور" in " ".join(why[0].data["why"])
    timers = [p for (p,) in await gw.rows(sa.select(jobs.c.payload).where(jobs.c.kind == "sla.step"))]
    # One pending timer per clock, at its first rung (each rung queues the next when it fires).
    assert len(timers) == 6 * 2 and {t["step"] for t in timers} == {"warn"}


async def test_the_ladder_reminds_then_breaches_then_reassigns_and_a_met_clock_stays_quiet(
        desk_gateway: Gateway) -> None:
    gw = desk_gateway
    result = await gw.channel.write(inbound("m1", "email:c1@example.ir", "فاکتور"))
    ticket = await _routed(gw, result.ticket_id)

    await _fire(gw, "sla.step", ticket_id=ticket.id, kind="first_response", step="warn")
    assert "⏰" in (await asyncio.wait_for(gw.desk.said.get(), 10))[1]
    await eventually(lambda: gw.count(jobs, jobs.c.kind == "sla.step"), lambda n: n == 2)  # the next rung queued
    await _fire(gw, "sla.step", ticket_id=ticket.id, kind="first_response", step="breach")
    breach = (await asyncio.wait_for(gw.desk.said.get(), 10))[1]
    assert "🚨" in breach and "@lead_user" in breach and "urgent" in breach
    after = (await gw.rows(sa.select(tickets).where(tickets.c.id == ticket.id)))[0]
    assert after.priority == "urgent" and after.sla_breached_at is not None
    assert await gw.count(events, events.c.kind == "sla.breached", events.c.ticket_id == ticket.id) == 1
    assert 'kartabl_sla_breaches_total{channel="loopback",kind="first_response"} 1.0' in \
        gw.runtime.metrics.render().decode()
    await eventually(lambda: gw.count(jobs, jobs.c.kind == "sla.step"), lambda n: n == 2)
    await _fire(gw, "sla.step", ticket_id=ticket.id, kind="first_response", step="reassign")
    assert "reassigned" in (await asyncio.wait_for(gw.desk.said.get(), 10))[1]
    assert await gw.scalar(sa.select(tickets.c.assignee_id).where(tickets.c.id == ticket.id)) not in (
        None, ticket.assignee_id)

    # Another ticket answered in time: its first-response rungs come and say nothing.
    answered = await _routed(gw, (await gw.channel.write(inbound("m2", "email:c2@example.ir", "فاکتور"))).ticket_id)
    lead = await gw.scalar(sa.select(sa.text("id")).select_from(sa.text("agents")).where(
        sa.text("username = 'lead_user'")))
    await gw.runtime.tickets.reply(answered.id, "پاسخ سرپرست", agent_id=lead)  # a lead's reply is not held
    await gw.channel.next_received(1)
    await _fire(gw, "sla.step", ticket_id=answered.id, kind="first_response")
    await eventually(lambda: gw.count(jobs, jobs.c.kind == "sla.step", jobs.c.due_at <= utcnow()), lambda n: n == 0)
    assert gw.desk.said.empty()
    assert await gw.scalar(sa.select(tickets.c.priority).where(tickets.c.id == answered.id)) == "high"


async def test_a_reply_in_a_review_department_waits_for_a_lead(desk_gateway: Gateway) -> None:
    gw = desk_gateway
    ticket = await _routed(gw, (await gw.channel.write(inbound("m1", "email:c1@example.ir", "فاکتور"))).ticket_id)
    held = await gw.runtime.tickets.reply(ticket.id, "پیش‌نویس پاسخ", agent_id=ticket.assignee_id)
    other = await gw.runtime.tickets.reply(ticket.id, "پاسخ نادرست", agent_id=ticket.assignee_id)

    said = (await asyncio.wait_for(gw.desk.said.get(), 10))[1]
    assert f"/approve {held}" in said
    assert {await gw.scalar(sa.select(messages.c.delivery_state).where(messages.c.id == m)) for m in (held, other)} \
        == {DeliveryState.HELD}
    await asyncio.sleep(0.3)
    assert gw.channel.received == []  # nothing went out
    lead = await gw.scalar(sa.select(sa.text("id")).select_from(sa.text("agents")).where(
        sa.text("username = 'lead_user'")))
    await gw.runtime.tickets.approve(held, lead_id=lead, text="پاسخ ویرایش‌شده")
    await gw.runtime.tickets.reject(other, lead_id=lead, reason="لحن مناسب نیست")

    (sent,) = await gw.channel.next_received(1)
    assert sent.text == "پاسخ ویرایش‌شده"
    assert await gw.scalar(sa.select(messages.c.delivery_state).where(messages.c.id == other)) == DeliveryState.REJECTED
    assert await gw.scalar(sa.select(tickets.c.first_response_at).where(tickets.c.id == ticket.id)) is not None
    kinds = [k for (k,) in await gw.rows(sa.select(events.c.kind).where(events.c.kind.like("reply.%")))]
    assert sorted(kinds) == ["reply.approved", "reply.held", "reply.held", "reply.rejected"]


async def test_a_referral_gives_the_new_department_its_owner_and_its_own_clock(desk_gateway: Gateway) -> None:
    gw = desk_gateway
    ticket = await _routed(gw, (await gw.channel.write(inbound("m1", "email:c1@example.ir", "فاکتور"))).ticket_id)
    sales = await gw.scalar(sa.select(sa.text("id")).select_from(sa.text("departments")).where(
        sa.text("name = 'sales'")))
    await gw.runtime.db.run_write(lambda conn: conn.execute(sa.text(
        "UPDATE departments SET strategy = 'least_open' WHERE name = 'sales'")))
    await gw.runtime.tickets.transfer(ticket.id, sales, actor=f"agent:{ticket.assignee_id}", reason="سؤال فروش است")

    s1 = await gw.scalar(sa.select(sa.text("id")).select_from(sa.text("agents")).where(sa.text("username = 's1'")))
    await eventually(lambda: gw.scalar(sa.select(tickets.c.assignee_id).where(tickets.c.id == ticket.id)),
                     lambda a: a == s1)
    await eventually(lambda: gw.count(events, events.c.kind == "sla.restarted"), lambda n: n == 1)
    chain = await gw.rows(sa.select(events.c.kind, events.c.actor, events.c.old, events.c.new, events.c.data).where(
        events.c.ticket_id == ticket.id, events.c.kind.in_(["ticket.department", "ticket.assignee"]))
        .order_by(events.c.id))
    # Routed to billing and one of its agents, then referred (who, why), then the new owner.
    assert [c.kind for c in chain] == ["ticket.assignee", "ticket.department", "ticket.assignee"]
    assert chain[1].actor == f"agent:{ticket.assignee_id}" and chain[1].data == {"reason": "سؤال فروش است"}
    assert chain[2].old == str(ticket.assignee_id) and chain[2].new == str(s1)
    # The new owner's clock: counted from the referral, with its own rungs on the ladder.
    due = await gw.scalar(sa.select(tickets.c.resolution_due).where(tickets.c.id == ticket.id))
    restarted = await gw.scalar(sa.select(events.c.data).where(events.c.kind == "sla.restarted"))
    assert restarted["due"] == due.isoformat() and "sales" in restarted["why"]
    rungs = [p for (p,) in await gw.rows(sa.select(jobs.c.payload).where(jobs.c.kind == "sla.step"))
             if p["kind"] == "resolution"]
    # The first clock's timer goes stale (its due time moved); the new one waits at its first rung.
    assert len(rungs) == 2 and sum(p["due"] == due.isoformat() and p["step"] == "warn" for p in rungs) >= 1


async def test_resolution_asks_for_a_score_a_score_keeps_it_resolved_and_a_quiet_ticket_closes(
        desk_gateway: Gateway) -> None:
    gw = desk_gateway
    first = await gw.channel.write(inbound("m1", "email:c1@example.ir", "سلام", language="fa"))
    await _routed(gw, first.ticket_id)
    await gw.runtime.tickets.set_status(first.ticket_id, TicketStatus.RESOLVED, actor="agent:1")
    (notice,) = await gw.channel.next_received(1)
    assert first.ticket_ref in notice.text and "۱" in notice.text and "۵" in notice.text

    answer = await gw.channel.write(inbound("m2", "email:c1@example.ir", "۴ خوب بود", in_reply_to=("m1",)))
    assert answer.ticket_id == first.ticket_id
    await eventually(lambda: gw.scalar(sa.select(tickets.c.csat_score).where(tickets.c.id == first.ticket_id)),
                     lambda s: s == 4)
    thanks = (await gw.channel.next_received(2))[-1]
    assert first.ticket_ref in thanks.text
    assert await gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == first.ticket_id)) == TicketStatus.RESOLVED

    await _fire(gw, "ticket.autoclose", ticket_id=first.ticket_id)
    await eventually(lambda: gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == first.ticket_id)),
                     lambda s: s == TicketStatus.CLOSED)


async def test_a_question_after_resolution_reopens_the_ticket_with_a_new_clock(desk_gateway: Gateway) -> None:
    gw = desk_gateway
    first = await gw.channel.write(inbound("m1", "email:c1@example.ir", "سلام"))
    await _routed(gw, first.ticket_id)
    await gw.runtime.tickets.set_status(first.ticket_id, TicketStatus.RESOLVED, actor="agent:1")
    await gw.channel.next_received(1)

    again = await gw.channel.write(inbound("m2", "email:c1@example.ir", "هنوز درست نشده، چه کنم؟", in_reply_to=("m1",)))
    assert again.reopened
    await eventually(lambda: gw.count(events, events.c.kind == "sla.restarted", events.c.ticket_id == first.ticket_id),
                     lambda n: n == 1)
    assert await gw.scalar(sa.select(tickets.c.csat_score).where(tickets.c.id == first.ticket_id)) is None
    assert await gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == first.ticket_id)) == TicketStatus.OPEN


def test_a_broken_workflow_file_is_refused_with_its_line_and_the_running_rules_stay(
        workflow_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    watched = WorkflowFile(workflow_file)
    assert watched.refresh() and len(watched.current.rules.rules) == 2
    workflow_file.write_text(WORKFLOW.replace('priority = "urgent"', 'priority = "asap"') + "\n", encoding="utf-8")

    assert not watched.refresh()
    assert len(watched.current.rules.rules) == 2  # still the old version
    assert watched.error is not None and watched.error.startswith("workflows.toml:")
    line = int(watched.error.split(":")[1])
    assert 'priority = "asap"' in workflow_file.read_text(encoding="utf-8").splitlines()[line - 1]
    assert any("refused, the running rules stay" in r.getMessage() for r in caplog.records)
    workflow_file.write_text(WORKFLOW.replace('name = "VIP"', 'name = "VIP customers"') + "\n", encoding="utf-8")
    assert watched.refresh() and watched.current.rules.rules[1].name == "VIP customers"


def test_rules_test_prints_which_rules_fire_and_why(workflow_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "test", "--file", str(workflow_file), "--channel", "sms", "--sender", "09121234567",
                 "--text", "فاكتور من", "--tag", "vip"])
    out = capsys.readouterr().out
    assert code == 0
    assert "فاکتور به مالی" in out and "VIP" in out and "=> department billing, priority urgent" in out
    assert main(["rules", "check", "--file", str(workflow_file)]) == 0
    assert "2 rules, valid" in capsys.readouterr().out
    workflow_file.write_text("[[rule]]\nname = 'x'\n[rule.then]\npriority = 'asap'\n", encoding="utf-8")
    assert main(["rules", "check", "--file", str(workflow_file)]) == 1
    assert "workflows.toml:4" in capsys.readouterr().err


async def test_rules_replay_compares_the_last_tickets_with_what_the_rules_would_do_now(
        desk_gateway: Gateway, workflow_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gw = desk_gateway
    for n, text in enumerate(["فاکتور", "سلام"]):
        await _routed(gw, (await gw.channel.write(inbound(f"m{n}", f"email:c{n}@example.ir", text))).ticket_id)
    workflow_file.write_text(WORKFLOW.replace('priority = "high"', 'priority = "low"'), encoding="utf-8")
    settings = gw.runtime.settings
    from workflows import commands

    class Args:
        file, last = str(workflow_file), 10

    assert await commands.replay(Args(), settings) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "had billing/high; the rules now: billing/low" in out and "1 would be routed differently" in out


def test_departments_take_their_strategy_and_review_from_the_cli(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f"[database]\nurl = 'sqlite+aiosqlite:///{tmp_path / 'k.db'}'\n", encoding="utf-8")
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "departments", "add", "billing", "--strategy", "round_robin",
                 "--review"]) == 0
    assert main(["--config", str(config), "departments", "add", "billing", "--no-review"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "departments", "list"]) == 0
    listed = capsys.readouterr().out
    assert "billing" in listed and "round_robin" in listed and "review" not in listed


async def test_a_message_after_hours_is_told_when_the_desk_opens_in_jalali(start_gateway: Callable[..., Any],
                                                                          tmp_path: Path) -> None:
    # Closed today and tomorrow (Tehran's dates): whatever the hour the test runs, the desk is shut now.
    today = utcnow().astimezone(TEHRAN).date()
    path = tmp_path / "workflows.toml"
    path.write_text(textwrap.dedent(f'''\
        [calendar]
        holidays = ["{today}", "{today + dt.timedelta(days=1)}"]

        [[rule]]
        name = "بیرون از ساعت کاری"
        [rule.when]
        business_hours = false
        [rule.then]
        reply_template = "after_hours"
        '''), encoding="utf-8")
    gw = await start_gateway(workflows=WorkflowSettings(file=str(path)))
    written = await gw.channel.write(inbound("m1", "email:c1@example.ir", "سلام، سفارشم نرسیده", language="fa"))

    (told,) = await gw.channel.next_received(1)
    calendar = parse_workflow(path.read_text(encoding="utf-8"), "workflows.toml").calendar
    opens = calendar.next_open(utcnow())
    jy, jm, jd = gregorian_to_jalali(opens.astimezone(TEHRAN).date())
    assert written.ticket_ref in told.text
    assert persian_digits(f"{jd} {JALALI_MONTHS[jm - 1]} {jy}") in told.text  # e.g. «۹ آذر ۱۴۰۵»
    assert "ساعت ۹:۰۰" in told.text


async def test_a_flood_from_one_customer_is_kept_whole_and_the_agents_are_told_once(
        start_gateway: Callable[..., Any]) -> None:
    gw = await start_gateway(workflows=WorkflowSettings(file="", flood_limit=5))
    results = [await gw.channel.write(inbound(f"f{n}", "phone:09121234567", f"پیام {n}", channel=ChannelKind.SMS))
               for n in range(12)]
    ticket_id = results[0].ticket_id

    shown = [await gw.desk.next() for _ in range(5)]  # the first five, one by one
    (said_ticket, notice) = await asyncio.wait_for(gw.desk.said.get(), 10)
    assert said_ticket == ticket_id and "🌊" in notice and "5" in notice
    await eventually(lambda: gw.count(jobs, jobs.c.kind == INBOUND_JOB), lambda n: n == 0)
    await asyncio.sleep(0.2)
    assert gw.desk.shown.empty() and gw.desk.said.empty()  # the other seven: not posted, no second notice
    assert [m.text for _, m in shown] == [f"پیام {n}" for n in range(5)]
    assert {r.ticket_id for r in results} == {ticket_id}
    assert await gw.count(messages, messages.c.ticket_id == ticket_id, messages.c.direction == "in") == 12
