"""The cartable's brain, step 3 of the flow: each new ticket routed by the admins' rules, assigned, given
its SLA clocks; the clocks' escalation ladder; referral; and what the customer hears back (the
acknowledgement, the resolution notice, the satisfaction survey), until a quiet resolved ticket closes.

Every step is a job in the core queue, so a crash loses none: `ticket.inbound` (ingest), `ticket.changed`
(TicketService, when a status, department or assignee changes), `sla.step` (one pending per clock, due
at its next rung of the ladder, queuing the rung after it when it fires: no scan of every ticket) and
`ticket.autoclose`. A timer that fires for a clock that has moved since (a new due time, a first
response, a resolution) does nothing, and ends that clock's chain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from starlette.routing import BaseRoute

from gateway.channel import Desk
from gateway.db import Database
from gateway.domain import ChannelKind, Direction, Priority, TicketStatus, ticket_ref
from gateway.events import event_row
from gateway.ingest import INBOUND_JOB
from gateway.jalali import spoken_moment
from gateway.jobs import Job, JobQueue
from gateway.messages import utcnow
from gateway.metrics import Metrics
from gateway.schema import agent_departments, agents, departments, events, jobs, messages, tickets
from gateway.settings import WorkflowSettings
from gateway.tickets import CHANGED_JOB, MessageView, TicketService, TicketSummary
from gateway.worker import Handler
from workflows.assignment import Candidate, Strategy, choose
from workflows.calendar import EscalationStep, SlaKind, ladder_steps
from workflows.config import WorkflowConfig, WorkflowFile
from workflows.links import SurveyLinks
from workflows.messages import render
from workflows.rules import Decision, Facts
from workflows.survey import parse_score

log = logging.getLogger("kartabl.workflows.engine")

SLA_JOB = "sla.step"
#: The window of a customer's flood limit (`workflows.flood_limit` messages in it).
FLOOD_WINDOW_S = 60
CLOSE_JOB = "ticket.autoclose"
_HIGHER = {Priority.LOW: Priority.NORMAL, Priority.NORMAL: Priority.HIGH, Priority.HIGH: Priority.URGENT,
           Priority.URGENT: Priority.URGENT}
#: Advisory lock keys of the assignments, one per department (PostgreSQL).
_ASSIGN_LOCK = 7_300_000_000
_LIVE = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.WAITING)
_DONE = (TicketStatus.RESOLVED, TicketStatus.CLOSED)


class Workflow:
    """The workflow engine's job handlers, over the current version of the admins' workflow file."""

    def __init__(self, tickets: TicketService, db: Database, queue: JobQueue, desks: Sequence[Desk],
                 settings: WorkflowSettings, *, acknowledge: Collection[str] = (), daily_cap: int = 3,
                 workflow_file: WorkflowFile | None = None, links: SurveyLinks | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.tickets, self.db, self.queue = tickets, db, queue
        self.metrics = metrics
        self.links = links
        self.desks = list(desks)
        self.settings = settings
        self.acknowledge = frozenset(acknowledge)
        self.daily_cap = daily_cap
        self.templates = Path(settings.templates_dir) if settings.templates_dir else None
        self.file = workflow_file or WorkflowFile(settings.file, self.templates)
        self.clock = clock

    @property
    def config(self) -> WorkflowConfig:
        return self.file.current

    async def watch(self) -> None:
        """Read the workflow file again whenever it changes (a broken version is refused, logged)."""
        while True:
            await asyncio.to_thread(self.file.refresh)
            await asyncio.sleep(self.settings.reload_interval)

    def reload(self) -> None:
        """SIGHUP: read the workflow file now, changed or not."""
        self.file.refresh(force=True)

    def routes(self) -> list[BaseRoute]:
        """The survey page its links open (none without `http.public_url` and `http.link_secret`)."""
        return self.links.routes(self._survey_state, self._linked_score) if self.links else []

    @property
    def handlers(self) -> dict[str, Handler]:
        # Database work on the event loop: they give way to storing customer messages (Handler.yields).
        return {INBOUND_JOB: Handler(run=self.inbound, yields=True), CHANGED_JOB: Handler(run=self.changed, yields=True),
                SLA_JOB: Handler(run=self.sla_step, yields=True), CLOSE_JOB: Handler(run=self.autoclose, yields=True)}

    # -- a customer message -------------------------------------------------------------------

    async def inbound(self, job: Job) -> None:
        ticket_id, message_id = job.payload["ticket_id"], job.payload["message_id"]
        new, reopened = job.payload.get("new_ticket"), job.payload.get("reopened")
        if not (new or reopened or self.desks):
            return  # a follow-up with no desk to show it to: nothing to do, and nothing read
        summary, message = await self.tickets.view(ticket_id, message_id)
        if new:
            decision = self.config.rules.evaluate(self.facts(summary, message, first=True))
            await self.route(summary, decision)
            if self.desks:  # the card shows where the ticket went
                summary = await self.tickets.summary(ticket_id)
            await self._acknowledge(summary, message_id, decision)
        elif reopened and await self._survey_answer(summary, message):
            return  # a score, not a new question: the ticket stays resolved
        elif reopened:
            await self._restart_resolution(ticket_id, "the customer wrote again")
        elif await self._flooding(summary, message):
            return  # stored on the ticket, but not posted one by one
        for desk in self.desks:
            await desk.show(summary, message)

    async def _flooding(self, summary: TicketSummary, message: MessageView) -> bool:
        """Whether this follow-up is past the customer's limit of messages a minute; the agents are told
        once, at the first one past it. Ranked by the message's own time, so lagging jobs agree."""
        limit = self.settings.flood_limit
        if not limit:
            return False
        since = message.created_at - dt.timedelta(seconds=FLOOD_WINDOW_S)
        live = sa.select(tickets.c.id).where(tickets.c.customer_id == summary.customer_id)
        async with self.db.read() as conn:
            rank = (await conn.execute(sa.select(sa.func.count()).select_from(messages).where(
                messages.c.ticket_id.in_(live.scalar_subquery()), messages.c.direction == Direction.INBOUND,
                messages.c.created_at >= since, messages.c.id <= message.id))).scalar_one()
        if rank <= limit:
            return False
        if rank == limit + 1:
            who = html.escape(summary.customer_name or summary.reply_to, quote=False)
            for desk in self.desks:
                await desk.say(summary.id, f"🌊 {summary.ref}: {who} sent more than {limit} messages in a minute. "
                                           "The rest of this burst is kept on the ticket (/history) and not posted "
                                           "one by one; posting resumes when it calms down.")
        return True

    def facts(self, summary: TicketSummary, message: MessageView, *, first: bool) -> Facts:
        """What the rules look at, for one message."""
        return Facts(channel=summary.channel, sender=message.sender or summary.reply_to, subject=summary.subject or "",
                     text=message.text or "", language=summary.language, customer_tags=summary.customer_tags,
                     has_attachment=bool(message.attachments),
                     business_hours=self.config.calendar.is_open(message.created_at), first_message=first)

    async def route(self, summary: TicketSummary, decision: Decision) -> None:
        """Apply a decision to a new ticket in one transaction: department, priority, tags, review,
        assignee, the SLA due times and their first timers, and each rule firing on the record. Done
        once: a retried job finds the ticket routed (its due times set). The clock arithmetic happens
        before the transaction, which is a few statements: the writer is shared by every ingest."""
        config, now, ticket_id = self.config, self.clock(), summary.id
        priority = Priority(decision.priority or summary.priority)
        start = summary.created_at
        dues = {kind: config.sla.due(priority, kind, start, config.calendar)
                for kind in (SlaKind.FIRST_RESPONSE, SlaKind.RESOLUTION)}
        timers = [self._rung_row(ticket_id, kind, start, due, config, after=None) for kind, due in dues.items()]

        def work(conn: sa.Connection) -> None:
            department = _department(conn, decision.department) if decision.department else None
            review = bool(decision.review or (department is not None and (
                department.review or department.name in config.review)))
            values: dict[str, Any] = {
                "priority": priority, "tags": sorted(decision.tags), "review": review, "updated_at": now,
                "first_response_due": dues[SlaKind.FIRST_RESPONSE], "resolution_due": dues[SlaKind.RESOLUTION]}
            if department is not None:
                values["department_id"] = department.id
            routed = conn.execute(sa.update(tickets).where(
                tickets.c.id == ticket_id, tickets.c.first_response_due.is_(None)).values(values)).rowcount
            if not routed:
                return  # routed before: this is a retried job
            assignee = self._assignee(conn, decision.assign, department, exclude=None)
            if assignee is not None:
                self._set(conn, ticket_id, "assignee_id", None, assignee, "workflow")
            rows = [event_row(now, "rule.fired", ticket_id=ticket_id, actor=f"rule:{firing.rule}",
                              data={"rule": firing.rule, "why": list(firing.why)}) for firing in decision.fired]
            rows.append(event_row(now, "ticket.routed", ticket_id=ticket_id, data={
                "department": department.name if department is not None else None, "priority": str(priority),
                "assignee": assignee, "review": review, "tags": values["tags"]}))
            conn.execute(sa.insert(events), rows)
            conn.execute(sa.insert(jobs), [t for t in timers if t is not None])
        await self.db.run_write(work)
        self.queue.wake()

    def _assignee(self, conn: sa.Connection, assign: str | None, department: Any, *,
                  exclude: int | None) -> int | None:
        """The agent a ticket goes to: the one the rule named, else by the strategy (the rule's, the
        department's in the workflow file or the database); None leaves it in the queue."""
        if assign and assign.startswith("@"):
            return conn.execute(sa.select(agents.c.id).where(
                sa.func.lower(agents.c.username) == assign[1:].lower(), agents.c.active.is_(True),
                agents.c.away.is_(False))).scalar()
        strategy = assign or (department is not None and (
            self.config.strategies.get(department.name) or department.strategy)) or Strategy.MANUAL
        if strategy == Strategy.MANUAL:
            return None
        if self.db.is_postgres:  # one assignment at a time per department, or two would pick the same turn
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ASSIGN_LOCK + (department.id if department else 0))))
        roster = sa.select(agents.c.id, agents.c.away, agents.c.active)
        if department is not None:
            roster = roster.join(agent_departments, agent_departments.c.agent_id == agents.c.id).where(
                agent_departments.c.department_id == department.id)
        people = [r for r in conn.execute(roster).all() if r.id != exclude]
        if not people:
            return None
        ids = [r.id for r in people]
        open_counts = dict(conn.execute(sa.select(tickets.c.assignee_id, sa.func.count()).where(
            tickets.c.assignee_id.in_(ids), tickets.c.status.in_(_LIVE)).group_by(tickets.c.assignee_id)).all())
        last_given = dict(conn.execute(sa.select(tickets.c.assignee_id, sa.func.max(tickets.c.created_at)).where(
            tickets.c.assignee_id.in_(ids)).group_by(tickets.c.assignee_id)).all())
        # The last one given a ticket, by the order the assignments were written (not their clocks).
        latest = conn.execute(sa.select(events.c.new).where(
            events.c.kind == "ticket.assignee", events.c.new.in_([str(i) for i in ids]))
            .order_by(events.c.id.desc()).limit(1)).scalar()
        return choose(str(strategy), [Candidate(r.id, open_counts.get(r.id, 0), away=r.away, active=r.active,
                                                last_assigned_at=last_given.get(r.id)) for r in people],
                      last_assigned=int(latest) if latest else None)

    def _timers(self, conn: sa.Connection, ticket_id: int, kind: SlaKind, start: dt.datetime,
                due: dt.datetime, config: WorkflowConfig) -> None:
        """The clock's first rung as a job, due when it falls; each rung, when it fires, queues the next
        (one pending timer per clock, not one per rung). The job carries the clock's start and due time."""
        self._rung(conn, ticket_id, kind, start, due, config, after=None)

    def _rung(self, conn: sa.Connection, ticket_id: int, kind: SlaKind, start: dt.datetime, due: dt.datetime,
              config: WorkflowConfig, *, after: EscalationStep | None) -> None:
        row = self._rung_row(ticket_id, kind, start, due, config, after=after)
        if row is not None:
            conn.execute(sa.insert(jobs), row)

    def _rung_row(self, ticket_id: int, kind: SlaKind, start: dt.datetime, due: dt.datetime,
                  config: WorkflowConfig, *, after: EscalationStep | None) -> dict[str, Any] | None:
        """The job of the rung after `after` (None: the first), or None past the last."""
        steps = ladder_steps(start, due, config.calendar, config.ladder)
        names = [step for step, _ in steps]
        index = 0 if after is None else names.index(after) + 1 if after in names else len(names)
        if index >= len(steps):
            return None
        step, at = steps[index]
        return self.queue.row(SLA_JOB, {"ticket_id": ticket_id, "kind": str(kind), "step": str(step),
                                        "start": start.isoformat(), "due": due.isoformat()}, due_at=at)

    async def _acknowledge(self, summary: TicketSummary, message_id: int, decision: Decision) -> None:
        template = decision.reply_template or ("acknowledgement" if summary.channel in self.acknowledge else None)
        if template is None:
            return
        text = self._render(template, summary)
        # Before the desks: a retried job finds the acknowledgement queued and does not repeat it.
        await self.tickets.auto_reply(summary.id, text, because_of=message_id, daily_cap=self.daily_cap,
                                      once_per_ticket=True)

    def _render(self, name: str, summary: TicketSummary, **values: Any) -> str:
        calendar = self.config.calendar
        opens = spoken_moment(calendar.next_open(self.clock()), summary.language, calendar.zone)
        return render(name, language=summary.language, channel=summary.channel, extra_dir=self.templates,
                      ref=summary.ref, name=summary.customer_name, opens=opens, **values)

    # -- what changed on a ticket ---------------------------------------------------------------

    async def changed(self, job: Job) -> None:
        field, new, actor = job.payload["field"], job.payload["new"], job.payload["actor"]
        ticket_id = job.payload["ticket_id"]
        if field == "status" and new == TicketStatus.RESOLVED:
            await self._resolved(ticket_id)
        elif field == "department_id" and new is not None:
            await self._referred(ticket_id, actor)
        elif field == "assignee_id" and new is not None and actor.startswith("agent:") and actor != f"agent:{new}":
            await self._restart_resolution(ticket_id, f"referred by {actor} to agent {new}")
        elif field == "review":
            await self._say(ticket_id, f"✋ {ticket_ref(ticket_id)}: a reply waits for a lead: "
                                       f"/approve {new} (or /reject {new} reason)")

    async def _resolved(self, ticket_id: int) -> None:
        """The resolution notice and the survey, on the ticket's channel; then the quiet period."""
        summary = await self.tickets.summary(ticket_id)
        async with self.db.read() as conn:
            last_in = (await conn.execute(sa.select(sa.func.max(messages.c.id)).where(
                messages.c.ticket_id == ticket_id, messages.c.direction == Direction.INBOUND))).scalar()
            resolved_at = (await conn.execute(sa.select(tickets.c.resolved_at).where(
                tickets.c.id == ticket_id))).scalar()
        if last_in is not None:
            url = (self.links.url(ticket_id) if self.links and self.settings.survey
                   and summary.channel == ChannelKind.EMAIL else None)
            text = self._render("resolved_survey" if self.settings.survey else "resolved", summary, url=url)

            def asked(conn: sa.Connection) -> None:
                conn.execute(sa.update(tickets).where(tickets.c.id == ticket_id).values(
                    survey_sent_at=self.clock() if self.settings.survey else None))
            # Where the channel has buttons (Telegram), the scores are buttons: a press answers as a typed digit.
            scores = [(str(n), f"reply:{summary.ref}:{n}") for n in range(1, 6)] if self.settings.survey else []
            await self.tickets.auto_reply(ticket_id, text, because_of=last_in, daily_cap=self.daily_cap, also=asked,
                                          buttons=scores)
        if resolved_at is not None:
            await self.db.run_write(lambda conn: self._close_later(conn, ticket_id, resolved_at))
            self.queue.wake()

    def _close_later(self, conn: sa.Connection, ticket_id: int, resolved_at: dt.datetime) -> None:
        """The ticket closes after the quiet period, unless it is reopened or resolved again meanwhile."""
        self.queue.enqueue(conn, CLOSE_JOB, {"ticket_id": ticket_id, "resolved_at": resolved_at.isoformat()},
                           due_at=resolved_at + dt.timedelta(days=self.settings.auto_close_days))

    async def _survey_answer(self, summary: TicketSummary, message: MessageView) -> bool:
        """A resolved ticket's customer answered the survey: the score goes on the ticket, which stays
        resolved; anything else is a new question and reopens it (ingest already did)."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(tickets.c.survey_sent_at, tickets.c.csat_score).where(
                tickets.c.id == summary.id))).one()
        score = parse_score(message.text or "") if row.survey_sent_at and row.csat_score is None else None
        if score is None:
            return False
        if await self._score(summary.id, score, via="reply", actor=f"customer:{summary.customer_id}") != "recorded":
            return False  # a score came in by the link meanwhile: this reply is a question after all
        await self.tickets.auto_reply(summary.id, self._render("survey_thanks", summary, score=score),
                                      because_of=message.id, daily_cap=self.daily_cap)
        return True

    async def _score(self, ticket_id: int, score: int, *, via: str, actor: str) -> str:
        """Record a survey score once: "recorded", "already" (an earlier one stands) or "closed" (never asked).
        A reply reopened the ticket (ingest does, for any message): a score puts it back to resolved,
        and the quiet period before it closes counts from the answer."""
        now = self.clock()

        def work(conn: sa.Connection) -> str:
            row = conn.execute(sa.select(tickets.c.survey_sent_at, tickets.c.csat_score, tickets.c.status).where(
                tickets.c.id == ticket_id)).one_or_none()
            if row is None or row.survey_sent_at is None:
                return "closed"
            if row.csat_score is not None:
                return "already"
            values: dict[str, Any] = {"csat_score": score, "csat_at": now}
            if via == "reply":
                values.update(status=TicketStatus.RESOLVED, resolved_at=now)
            conn.execute(sa.update(tickets).where(tickets.c.id == ticket_id).values(values))
            conn.execute(sa.insert(events), event_row(now, "survey.answered", ticket_id=ticket_id, actor=actor,
                                                      data={"score": score, "via": via}))
            if via == "reply" or row.status == TicketStatus.RESOLVED:
                self._close_later(conn, ticket_id, now)
            return "recorded"
        outcome = await self.db.run_write(work)
        self.queue.wake()
        return outcome

    async def _survey_state(self, ticket_id: int) -> tuple[str | None, int | None] | None:
        """For the survey page: the ticket's language and score, or None if it was never asked."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(tickets.c.language, tickets.c.csat_score, tickets.c.survey_sent_at)
                                      .where(tickets.c.id == ticket_id))).one_or_none()
        return (row.language, row.csat_score) if row is not None and row.survey_sent_at else None

    async def _linked_score(self, ticket_id: int, score: int) -> str:
        async with self.db.read() as conn:
            customer = (await conn.execute(sa.select(tickets.c.customer_id).where(tickets.c.id == ticket_id))).scalar()
        return await self._score(ticket_id, score, via="link", actor=f"customer:{customer}")

    async def _referred(self, ticket_id: int, actor: str) -> None:
        """A referral keeps the history and gives the new department its own owner and clock."""
        config = self.config

        def work(conn: sa.Connection) -> None:
            ticket = conn.execute(sa.select(tickets).where(tickets.c.id == ticket_id)).one()
            if ticket.status in _DONE:
                return
            department = conn.execute(sa.select(departments).where(departments.c.id == ticket.department_id)).one()
            owner = self._assignee(conn, None, department, exclude=None)
            if owner is not None and owner != ticket.assignee_id:
                self._set(conn, ticket_id, "assignee_id", ticket.assignee_id, owner, "system")
            self._restart(conn, ticket, config, f"referred by {actor} to {department.name}")
        await self.db.run_write(work)
        self.queue.wake()

    async def _restart_resolution(self, ticket_id: int, why: str) -> None:
        config = self.config

        def work(conn: sa.Connection) -> None:
            ticket = conn.execute(sa.select(tickets).where(tickets.c.id == ticket_id)).one()
            if ticket.status not in _DONE:
                self._restart(conn, ticket, config, why)
        await self.db.run_write(work)
        self.queue.wake()

    def _restart(self, conn: sa.Connection, ticket: Any, config: WorkflowConfig, why: str) -> None:
        """A new resolution clock from now (the new owner's), with its own timers; old timers go stale."""
        now = self.clock()
        due = config.sla.due(ticket.priority, SlaKind.RESOLUTION, now, config.calendar)
        conn.execute(sa.update(tickets).where(tickets.c.id == ticket.id).values(resolution_due=due, updated_at=now))
        conn.execute(sa.insert(events), event_row(now, "sla.restarted", ticket_id=ticket.id, data={
            "kind": "resolution", "due": due.isoformat(), "why": why}))
        self._timers(conn, ticket.id, SlaKind.RESOLUTION, now, due, config)

    def _set(self, conn: sa.Connection, ticket_id: int, field: str, old: Any, new: Any, actor: str) -> None:
        now = self.clock()
        conn.execute(sa.update(tickets).where(tickets.c.id == ticket_id).values({field: new, "updated_at": now}))
        conn.execute(sa.insert(events), event_row(now, f"ticket.{field.removesuffix('_id')}", ticket_id=ticket_id,
                                                  actor=actor, field=field, old=None if old is None else str(old),
                                                  new=None if new is None else str(new)))

    # -- clocks ---------------------------------------------------------------------------------

    async def sla_step(self, job: Job) -> None:
        """One rung of a clock's ladder: a reminder, the breach (lead told, priority up, recorded), or
        a reassignment; nothing if the clock has moved on or is satisfied."""
        ticket_id, kind, step = job.payload["ticket_id"], SlaKind(job.payload["kind"]), EscalationStep(job.payload["step"])
        config, now = self.config, self.clock()

        def work(conn: sa.Connection) -> str | None:
            t = conn.execute(sa.select(tickets).where(tickets.c.id == ticket_id)).one_or_none()
            if t is None:
                return None
            due = t.first_response_due if kind == SlaKind.FIRST_RESPONSE else t.resolution_due
            if due is None or due.isoformat() != job.payload["due"]:
                return None  # the clock was set again since: a later timer speaks for it
            met = t.first_response_at is not None if kind == SlaKind.FIRST_RESPONSE else t.status in _DONE
            if met or t.status in _DONE:
                return None
            if "start" in job.payload:  # the next rung of this clock
                self._rung(conn, ticket_id, kind, dt.datetime.fromisoformat(job.payload["start"]), due, config,
                           after=step)
            what = "first response" if kind == SlaKind.FIRST_RESPONSE else "resolution"
            ref = ticket_ref(ticket_id)
            local = due.astimezone(ZoneInfo(config.calendar.timezone))
            if step == EscalationStep.WARN:
                return f"⏰ {ref}: {what} due at {local:%Y-%m-%d %H:%M}; time is running out."
            if step == EscalationStep.BREACH:
                higher = _HIGHER[Priority(t.priority)]
                conn.execute(sa.update(tickets).where(tickets.c.id == ticket_id).values(
                    sla_breached_at=sa.func.coalesce(tickets.c.sla_breached_at, now), updated_at=now))
                conn.execute(sa.insert(events), event_row(now, "sla.breached", ticket_id=ticket_id, data={
                    "kind": str(kind), "due": due.isoformat()}))
                if higher != t.priority:
                    self._set(conn, ticket_id, "priority", t.priority, higher, "sla")
                leads = _leads(conn, config.leads)
                return (f"🚨 {ref}: the {what} SLA is breached (due {local:%Y-%m-%d %H:%M}); priority now "
                        f"{higher}. {' '.join('@' + lead for lead in leads) or 'Leads'}: please look.")
            department = conn.execute(sa.select(departments).where(departments.c.id == t.department_id)).one_or_none() \
                if t.department_id else None
            other = self._assignee(conn, None, department, exclude=t.assignee_id)
            if other is None and department is None:
                other = self._assignee(conn, Strategy.LEAST_OPEN, None, exclude=t.assignee_id)
            if other is None:
                return f"🔁 {ref}: {what} long overdue, and nobody else is free to take it."
            self._set(conn, ticket_id, "assignee_id", t.assignee_id, other, "sla")
            name = conn.execute(sa.select(agents.c.name).where(agents.c.id == other)).scalar()
            return f"🔁 {ref}: {what} long overdue; reassigned to {name}."
        breached: list[str] = []  # the ticket's channel, when this rung was the breach

        def counted(conn: sa.Connection) -> str | None:
            breached.clear()  # a work may run again (a group commit replayed): count its last run only
            said = work(conn)
            if said and step == EscalationStep.BREACH:
                breached.append(conn.execute(sa.select(tickets.c.channel).where(tickets.c.id == ticket_id)).scalar())
            return said
        said = await self.db.run_write(counted)
        if breached and self.metrics is not None:
            self.metrics.sla_breaches.labels(breached[0], str(kind)).inc()
        if said:
            await self._say(ticket_id, html.escape(said, quote=False))

    async def autoclose(self, job: Job) -> None:
        """A resolved ticket that stayed quiet for the period closes; one reopened since does not."""
        ticket_id = job.payload["ticket_id"]
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(tickets.c.status, tickets.c.resolved_at).where(
                tickets.c.id == ticket_id))).one_or_none()
        if row is None or row.status != TicketStatus.RESOLVED or row.resolved_at is None:
            return
        if row.resolved_at.isoformat() != job.payload["resolved_at"]:
            return  # resolved again since: that resolution has its own timer
        await self.tickets.set_status(ticket_id, TicketStatus.CLOSED, actor="system:autoclose")

    async def _say(self, ticket_id: int, text_html: str) -> None:
        for desk in self.desks:
            if hasattr(desk, "say"):
                await desk.say(ticket_id, text_html)


def _department(conn: sa.Connection, name: str) -> Any:
    row = conn.execute(sa.select(departments).where(sa.func.lower(departments.c.name) == name.lower())).one_or_none()
    if row is None:
        log.warning("workflows: a rule names department %r, which does not exist (kartabl departments add)", name)
    return row


def _leads(conn: sa.Connection, named: Sequence[str]) -> list[str]:
    """The leads' usernames: those named in the workflow file and the agents marked --lead."""
    marked = [u for (u,) in conn.execute(sa.select(agents.c.username).where(
        agents.c.is_lead.is_(True), agents.c.active.is_(True), agents.c.username.is_not(None))).all()]
    return list(dict.fromkeys([*named, *marked]))


