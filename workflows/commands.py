"""`kartabl rules check|test|replay`: the admins' view of the workflow file before and after it runs."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from gateway.db import Database
from gateway.domain import Direction
from gateway.messages import utcnow
from gateway.schema import agents, customers, departments, messages, tickets
from gateway.settings import Settings
from workflows.config import WorkflowConfig, WorkflowError, parse_workflow
from workflows.messages import names
from workflows.rules import Decision, Facts
from workflows.calendar import SlaKind


def load(path: str) -> WorkflowConfig:
    file = Path(path)
    if not file.is_file():
        raise WorkflowError(f"{path}: no such workflow file")
    return parse_workflow(file.read_text(encoding="utf-8"), file.name, templates=names())


def check(args: argparse.Namespace, settings: Settings) -> int:
    config = load(args.file or settings.workflows.file)
    print(f"{config.source}: {len(config.rules.rules)} rules, valid")
    for rule in config.rules.rules:
        print(f"  line {rule.line}: {rule.name}")
    return 0


def test(args: argparse.Namespace, settings: Settings) -> int:
    """Which rules a message would fire, why, and what would happen to it."""
    config = load(args.file or settings.workflows.file)
    channel, sender, subject, text, language, attached = args.channel, args.sender or "", args.subject or "", \
        args.text or "", args.language, False
    if args.eml:
        from channels.email.parse import parse_email

        parsed = parse_email(Path(args.eml).read_bytes()).message
        channel, sender, subject, text = "email", str(parsed.sender), parsed.subject or "", parsed.text
        language, attached = parsed.language, bool(parsed.attachments)
    elif sender and ":" not in sender:
        sender = f"{_kind(channel)}:{sender}"
    at = dt.datetime.fromisoformat(args.at) if args.at else utcnow()
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    facts = Facts(channel=channel, sender=sender, subject=subject, text=text, language=language,
                  customer_tags=tuple(args.tag), has_attachment=attached or args.attachment,
                  business_hours=config.calendar.is_open(at), first_message=not args.follow_up)
    decision = config.rules.evaluate(facts)
    for line in decision.explain():
        print(line)
    print(_outcome(decision, config, at))
    return 0


def _kind(channel: str) -> str:
    return {"email": "email", "sms": "phone", "telegram": "telegram"}.get(channel, channel)


def _outcome(decision: Decision, config: WorkflowConfig, at: dt.datetime) -> str:
    priority = decision.priority or "normal"
    first = config.sla.due(priority, SlaKind.FIRST_RESPONSE, at, config.calendar)
    resolution = config.sla.due(priority, SlaKind.RESOLUTION, at, config.calendar)
    return (f"=> department {decision.department or '(unchanged)'}, priority {priority}, tags "
            f"{', '.join(decision.tags) or '-'}, assign {decision.assign or '(the department strategy)'}, "
            f"reply {decision.reply_template or '(the default acknowledgement, where on)'}, "
            f"review {'yes' if decision.review else 'no'}; first response by {first:%Y-%m-%d %H:%M} UTC, "
            f"resolution by {resolution:%Y-%m-%d %H:%M} UTC")


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    """What the current rules would have done to the last N tickets, beside what happened."""
    config = load(args.file or settings.workflows.file)
    db = Database(settings.database.url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(
                sa.select(tickets.c.id, tickets.c.channel, tickets.c.subject, tickets.c.priority, tickets.c.tags,
                          tickets.c.language, tickets.c.created_at, departments.c.name.label("department"),
                          agents.c.username, customers.c.tags.label("customer_tags"))
                .outerjoin(departments, departments.c.id == tickets.c.department_id)
                .outerjoin(agents, agents.c.id == tickets.c.assignee_id)
                .join(customers, customers.c.id == tickets.c.customer_id)
                .order_by(tickets.c.id.desc()).limit(args.last))).all()
            firsts = {r.ticket_id: r for r in (await conn.execute(
                sa.select(messages.c.ticket_id, messages.c.sender, messages.c.text, sa.func.min(messages.c.id))
                .where(messages.c.ticket_id.in_([r.id for r in rows]), messages.c.direction == Direction.INBOUND)
                .group_by(messages.c.ticket_id, messages.c.sender, messages.c.text))).all()}
    finally:
        await db.dispose()
    differ = 0
    for row in reversed(rows):
        first = firsts.get(row.id)
        facts = Facts(channel=row.channel, sender=first.sender if first else "", subject=row.subject or "",
                      text=first.text if first else "", language=row.language,
                      customer_tags=tuple(row.customer_tags or []),
                      business_hours=config.calendar.is_open(row.created_at), first_message=True)
        decision = config.rules.evaluate(facts)
        would = (decision.department or row.department, str(decision.priority or "normal"))
        had = (row.department, row.priority)
        mark = "  " if would == had else "≠ "
        differ += would != had
        fired = ", ".join(f.rule for f in decision.fired) or "no rule"
        print(f"{mark}T-{1000 + row.id}: had {had[0] or '-'}/{had[1]}; the rules now: {would[0] or '-'}/{would[1]} "
              f"({fired})")
    print(f"{len(rows)} tickets, {differ} would be routed differently")
    return 0
