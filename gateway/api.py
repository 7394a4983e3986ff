"""The admin API under /api: tickets, customers (merge, undo, split), agents, departments, routing rules,
jobs and reports as JSON, behind a bearer token, with its OpenAPI document.

Mounted only when `http.admin_token` is set. Every call must carry `Authorization: Bearer <token>`,
compared in constant time; a refused call gets 401 and changes nothing, and the token is never logged.
Every change is written with an event whose actor is `api:admin`, in the change's own transaction.
What the API needs of the workflow engine (the rules, their validation and dry run, the business
calendar) comes in as plain callables (`RulesHooks`) from the composition root: gateway never imports
workflows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.addresses import Address, AddressError
from gateway.customers import (
    CustomerConflict, CustomerNotFound, CustomerRecord, customer_record, merge, split, undo_merge,
)
from gateway.db import Database
from gateway.domain import (
    AddressKind, ChannelKind, DeliveryState, Direction, JobState, Priority, TicketStatus, ticket_ref,
)
from gateway.errors import TicketNotFound
from gateway.events import event_row
from gateway.http import caller, secret_matches
from gateway.ingest import clean_text
from gateway.jalali import TEHRAN
from gateway.jobs import JobQueue
from gateway.messages import utcnow
from gateway.reports import GROUPINGS, build_report, parse_day, report_json
from gateway.schema import (
    addresses, agent_departments, agents, attachments, customers, departments, events, jobs, messages, tickets,
)
from gateway.settings import ReportSettings, Secret

log = logging.getLogger("kartabl.api")

#: Who the event log says made a change through the API.
ACTOR = "api:admin"
PREFIX = "/api"
MAX_LIMIT = 200
#: A report's default period, and its longest, in days.
REPORT_DAYS = 30
MAX_REPORT_DAYS = 400
#: The largest request body read (a workflow file to validate is the largest there is).
MAX_BODY = 1_048_576
_MAX_ID = 2**63 - 1
_MAX_DIGITS = len(str(_MAX_ID))
_REF_OFFSET = int(ticket_ref(0).removeprefix("T-"))  # T-1042 is ticket 42
#: A ticket as /api/tickets/{ref} names it: T-1001 and up (any case), or the id, 1 and up; to 18 digits,
#: so that every id it spells fits a 64-bit integer. The document states the same pattern.
_REF_PATTERN = (r"^([Tt]-(100[1-9]|10[1-9][0-9]|1[1-9][0-9]{2}|[2-9][0-9]{3}|[1-9][0-9]{4,17})"
                r"|[1-9][0-9]{0,17})$")
_REF_TEXT = re.compile(_REF_PATTERN)
_KINDS = frozenset(kind.value for kind in AddressKind)
#: Tickets an agent or department still has to work on.
_OPEN = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.WAITING)
#: The address kind a bare sender in a dry run is read as, by channel.
_SENDER_KIND = {"email": AddressKind.EMAIL, "sms": AddressKind.PHONE, "telegram": AddressKind.TELEGRAM}


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    """A message to dry-run through the routing rules (`POST /api/rules/dry-run`); `sender` canonical."""

    channel: str
    sender: str = ""
    subject: str = ""
    text: str = ""
    language: str | None = None
    tags: tuple[str, ...] = ()
    attachment: bool = False
    first_message: bool = True
    at: dt.datetime = dataclasses.field(default_factory=utcnow)


@dataclasses.dataclass(frozen=True, slots=True)
class RulesHooks:
    """What the API needs of the workflow engine, as callables the composition root gives it.

    `current()`: the workflow file and the rules running now, as `GET /api/rules` shows them (keys
    file, source, text, rules [{name, line}], error); `validate(text)`: the candidate file's one-line
    error (`workflows.toml:14: ...`), None when it is valid; `dry_run(probe)`: which rules fire and why,
    and the decision, as `POST /api/rules/dry-run` answers; `calendar()`: the business calendar
    reports count business time in, and whose zone the desk's days are in. The first three may block
    (they read files, parse a file): the API runs them in a thread; `calendar()` must not.
    """

    current: Callable[[], dict[str, Any]]
    validate: Callable[[str], str | None]
    dry_run: Callable[[Probe], dict[str, Any]]
    calendar: Callable[[], Any]


class _Refusal(Exception):
    """A request the API answers with an error status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _refuse(status: int, message: str) -> NoReturn:
    raise _Refusal(status, message)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, default=_plain, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json", headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


class AdminApi:
    """The /api routes over one gateway's database and job queue."""

    def __init__(self, db: Database, queue: JobQueue, token: Secret, rules: RulesHooks, *,
                 reports: ReportSettings | None = None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        if not token:
            raise ValueError("the admin API needs a token")
        self.db, self.queue, self.token, self.rules, self.clock = db, queue, token, rules, clock
        self.reports = reports or ReportSettings()

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, str, Endpoint]] = [
            ("GET", "/openapi.json", self.openapi),
            ("GET", "/tickets", self.list_tickets),
            ("GET", "/tickets/{ref}", self.ticket),
            ("GET", "/customers", self.list_customers),
            ("GET", "/customers/{id}", self.customer),
            ("POST", "/customers/{id}/merge", self.merge),
            ("POST", "/customers/{id}/split", self.split),
            ("POST", "/merges/{event_id}/undo", self.undo_merge),
            ("GET", "/agents", self.list_agents),
            ("POST", "/agents/{id}/away", self.set_away),
            ("GET", "/departments", self.list_departments),
            ("GET", "/rules", self.current_rules),
            ("POST", "/rules/validate", self.validate_rules),
            ("POST", "/rules/dry-run", self.dry_run),
            ("GET", "/jobs", self.list_jobs),
            ("POST", "/jobs/{id}/retry", self.retry_job),
            ("GET", "/reports", self.report),
        ]
        documented = _paths()
        return [Route(PREFIX + path, self._guard(endpoint, _query_names(documented[PREFIX + path][method.lower()])),
                      methods=[method], name=f"api:{endpoint.__name__}")
                for method, path, endpoint in table]

    # -- the boundary: who may call, and what a failure answers --------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secret_matches(token.strip(), self.token)

    def _guard(self, endpoint: Endpoint, query: frozenset[str]) -> Endpoint:
        """`endpoint` behind the token, its refusals answered as JSON; a query parameter the document does
        not name for it is refused (a misspelt filter must not quietly match everything)."""
        async def guarded(request: Request) -> Response:
            if not self._authorized(request):
                given = "authorization" in request.headers
                log.info("admin API: refused %s %s from %s (%s)", request.method, request.url.path, caller(request),
                         "a wrong token" if given else "no token")
                challenge = 'Bearer realm="kartabl"' + (', error="invalid_token"' if given else "")
                return _json({"error": "a valid bearer token is needed (Authorization: Bearer <token>)"}, 401,
                             {"WWW-Authenticate": challenge})
            if unknown := sorted(set(request.query_params) - query):
                known = ", ".join(sorted(query)) or "none"
                return _json({"error": f"{unknown[0]!r}: unknown query parameter (known: {known})"}, 422)
            try:
                return await endpoint(request)
            except _Refusal as exc:
                return _json({"error": exc.message}, exc.status)
            except (CustomerNotFound, TicketNotFound) as exc:
                return _json({"error": str(exc)}, 404)
            except CustomerConflict as exc:
                return _json({"error": str(exc)}, 409)
        return guarded

    # -- the document --------------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        return _json(openapi_document())

    # -- tickets -------------------------------------------------------------------------------

    async def list_tickets(self, request: Request) -> Response:
        q = request.query_params
        t = tickets
        where: list[sa.ColumnElement[bool]] = []
        if (status := _choice(q, "status", TicketStatus)) is not None:
            where.append(t.c.status == status)
        if (channel := _choice(q, "channel", ChannelKind)) is not None:
            where.append(t.c.channel == channel)
        if (priority := _choice(q, "priority", Priority)) is not None:
            where.append(t.c.priority == priority)
        if (department := _text(q, "department")) is not None:
            where.append(t.c.department_id.is_(None) if department == "none" else t.c.department_id.in_(
                sa.select(departments.c.id).where(departments.c.name == department)))
        if (assignee := q.get("assignee")) == "none":
            where.append(t.c.assignee_id.is_(None))
        elif assignee is not None:
            if not _digits(assignee) or assignee.startswith("0"):
                _refuse(422, f"assignee: an agent id or none, got {assignee[:40]!r}")
            # An id past any there can be matches no ticket, as the id of an agent who is not there does.
            fits = len(assignee) <= _MAX_DIGITS and int(assignee) <= _MAX_ID
            where.append(t.c.assignee_id == int(assignee) if fits else sa.false())
        if text := _text(q, "q"):
            where.append(sa.or_(t.c.subject.icontains(text, autoescape=True), sa.exists().where(
                messages.c.ticket_id == t.c.id, messages.c.text.icontains(text, autoescape=True))))
        if (since := _moment(q, "since", self._zone())) is not None:
            where.append(t.c.created_at >= since)
        if (until := _moment(q, "until", self._zone(), end=True)) is not None:
            where.append(t.c.created_at < until)
        limit, offset = _page(q)

        def read(conn: sa.Connection) -> dict[str, Any]:
            total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar_one()
            rows = conn.execute(
                sa.select(t.c.id, t.c.subject, t.c.status, t.c.priority, t.c.channel, t.c.reply_kind, t.c.reply_to,
                          t.c.customer_id, customers.c.name.label("customer_name"),
                          departments.c.name.label("department"), t.c.assignee_id, agents.c.name.label("assignee"),
                          t.c.tags, t.c.created_at, t.c.updated_at)
                .join(customers, customers.c.id == t.c.customer_id)
                .outerjoin(departments, departments.c.id == t.c.department_id)
                .outerjoin(agents, agents.c.id == t.c.assignee_id)
                .where(*where).order_by(t.c.id.desc()).limit(limit).offset(offset)).all()
            items = [{
                "id": r.id, "ref": ticket_ref(r.id), "subject": r.subject, "status": r.status, "priority": r.priority,
                "channel": r.channel, "reply_to": f"{r.reply_kind}:{r.reply_to}", "customer_id": r.customer_id,
                "customer_name": r.customer_name, "department": r.department, "assignee_id": r.assignee_id,
                "assignee": r.assignee, "tags": list(r.tags or ()), "created_at": r.created_at,
                "updated_at": r.updated_at} for r in rows]
            return {"items": items, "total": total, "limit": limit, "offset": offset}
        return _json(await self.db.run_read(read))

    async def ticket(self, request: Request) -> Response:
        text = request.path_params["ref"]
        if not _REF_TEXT.fullmatch(text):
            _refuse(422, f"ref: a ticket reference (T-1042) or id (42), got {text[:40]!r}")
        ticket_id = int(text[2:]) - _REF_OFFSET if text[:2].upper() == "T-" else int(text)
        return _json(await self.db.run_read(lambda conn: _ticket_detail(conn, ticket_id)))

    # -- customers -----------------------------------------------------------------------------

    async def list_customers(self, request: Request) -> Response:
        q = request.query_params
        c = customers
        where: list[sa.ColumnElement[bool]] = []
        if (address := q.get("address")) is not None:
            found = _address(address, "address")
            where.append(c.c.id.in_(sa.select(addresses.c.customer_id).where(
                addresses.c.kind == found.kind, addresses.c.value == found.value)))
        if name := _text(q, "q"):
            where.append(c.c.name.icontains(name, autoescape=True))
        limit, offset = _page(q)

        def read(conn: sa.Connection) -> dict[str, Any]:
            total = conn.execute(sa.select(sa.func.count()).select_from(c).where(*where)).scalar_one()
            rows = conn.execute(sa.select(c.c.id, c.c.name, c.c.language, c.c.tags, c.c.created_at, c.c.merged_into)
                                .where(*where).order_by(c.c.id.desc()).limit(limit).offset(offset)).all()
            known: dict[int, list[str]] = {}
            for customer_id, kind, value in conn.execute(
                    sa.select(addresses.c.customer_id, addresses.c.kind, addresses.c.value)
                    .where(addresses.c.customer_id.in_([r.id for r in rows])).order_by(addresses.c.id)):
                known.setdefault(customer_id, []).append(f"{kind}:{value}")
            items = [{"id": r.id, "name": r.name, "language": r.language, "tags": list(r.tags or ()),
                      "created_at": r.created_at, "merged_into": r.merged_into, "addresses": known.get(r.id, [])}
                     for r in rows]
            return {"items": items, "total": total, "limit": limit, "offset": offset}
        return _json(await self.db.run_read(read))

    async def customer(self, request: Request) -> Response:
        customer_id = _path_id(request, "id")
        return _json(_customer_json(await self.db.run_read(lambda conn: customer_record(conn, customer_id))))

    async def merge(self, request: Request) -> Response:
        survivor = _path_id(request, "id")
        body = await _object(request, required={"from": int})
        absorbed = _id_value(body["from"], "from")
        if absorbed == survivor:
            _refuse(422, "from: a customer cannot be merged into itself")
        now = self.clock()
        done = await self.db.run_write(lambda conn: merge(conn, survivor, absorbed, actor=ACTOR, now=now))
        return _json({"merge_event": done.event_id, "customer": done.survivor, "from": done.absorbed,
                      "addresses": list(done.addresses), "tickets": list(done.tickets), "events": list(done.events)})

    async def undo_merge(self, request: Request) -> Response:
        event_id = _path_id(request, "event_id")
        await _object(request)  # no body, or an empty object
        now = self.clock()
        done = await self.db.run_write(lambda conn: undo_merge(conn, event_id, actor=ACTOR, now=now))
        return _json({"unmerge_event": done.event_id, "merge_event": event_id, "customer": done.absorbed,
                      "survivor": done.survivor, "addresses": list(done.addresses), "tickets": list(done.tickets),
                      "events": list(done.events)})

    async def split(self, request: Request) -> Response:
        customer_id = _path_id(request, "id")
        body = await _object(request, required={"address": str}, optional={"name": str | None})
        address = _address(body["address"], "address")
        name = clean_text((body.get("name") or "").strip(), 200) or None  # as ingest stores a sender's name
        now = self.clock()
        done = await self.db.run_write(
            lambda conn: split(conn, customer_id, address, actor=ACTOR, now=now, name=name))
        return _json({"split_event": done.event_id, "customer": done.customer, "from": done.source,
                      "address": done.address, "tickets": list(done.tickets), "events": list(done.events)})

    # -- agents and departments ----------------------------------------------------------------

    async def list_agents(self, request: Request) -> Response:
        return _json({"items": await self.db.run_read(_agents)})

    async def list_departments(self, request: Request) -> Response:
        return _json({"items": await self.db.run_read(_departments)})

    async def set_away(self, request: Request) -> Response:
        agent_id = _path_id(request, "id")
        away = (await _object(request, required={"away": bool}))["away"]
        now = self.clock()

        def work(conn: sa.Connection) -> int | None:
            before = conn.execute(sa.select(agents.c.away).where(agents.c.id == agent_id).with_for_update()).first()
            if before is None:
                _refuse(404, f"no agent {agent_id}")
            if before.away == away:
                return None
            conn.execute(sa.update(agents).where(agents.c.id == agent_id).values(away=away))
            return conn.execute(sa.insert(events).returning(events.c.id), event_row(
                now, "agent.away", actor=ACTOR, field="away", old=str(before.away).lower(), new=str(away).lower(),
                data={"agent_id": agent_id})).scalar_one()
        event_id = await self.db.run_write(work)
        return _json({"id": agent_id, "away": away, "changed": event_id is not None, "event": event_id})

    # -- rules ---------------------------------------------------------------------------------

    async def current_rules(self, request: Request) -> Response:
        return _json(await asyncio.to_thread(self.rules.current))

    async def validate_rules(self, request: Request) -> Response:
        if _media_type(request) == "application/json":
            text = (await _object(request, required={"text": str}))["text"]
        else:
            raw = await _body(request)
            if not raw and "content-type" not in request.headers:
                # An empty text/plain body is an empty file (valid: no rules); no body at all is a mistake.
                _refuse(422, "a workflow file is needed: the file as text/plain, or JSON {\"text\": ...}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                _refuse(422, "the workflow file must be UTF-8 text")
        error = await asyncio.to_thread(self.rules.validate, text)
        return _json({"ok": True}) if error is None else _json({"ok": False, "error": error}, 422)

    async def dry_run(self, request: Request) -> Response:
        body = await _object(request, required={"channel": str}, optional={
            "sender": str, "subject": str, "text": str, "tags": list, "attachment": bool, "language": str | None,
            "first_message": bool, "at": str})
        channel = _enum(body["channel"], "channel", ChannelKind)
        tags = body.get("tags", [])
        if not all(isinstance(tag, str) for tag in tags):
            _refuse(422, "tags: a list of strings")
        sender = body.get("sender", "").strip()
        if sender:
            kind, colon, value = sender.partition(":")
            if not colon or kind not in _KINDS:
                if channel not in _SENDER_KIND:
                    _refuse(422, f"sender: write it as kind:value (email:, phone:, telegram:), got {sender!r}")
                kind, value = _SENDER_KIND[channel], sender
            sender = str(_address(f"{kind}:{value}", "sender"))
        at = self.clock()
        if "at" in body:
            at = _aware(body["at"], "at")
        probe = Probe(channel=channel, sender=sender, subject=body.get("subject", ""), text=body.get("text", ""),
                      language=body.get("language"), tags=tuple(tags), attachment=body.get("attachment", False),
                      first_message=body.get("first_message", True), at=at)
        try:
            return _json(await asyncio.to_thread(self.rules.dry_run, probe))
        except OverflowError:  # the due times of a message arriving at 9999-12-31T23:00Z are past the calendar
            _refuse(422, f"at: {body['at']!r} leaves no room for the due times after it")

    # -- jobs ----------------------------------------------------------------------------------

    async def list_jobs(self, request: Request) -> Response:
        q = request.query_params
        state = _choice(q, "state", JobState)
        limit = _int(q, "limit", 50, 1, MAX_LIMIT)
        rows = await self.queue.list(JobState(state) if state else None, limit=limit)
        return _json({"items": [{"id": r.id, "kind": r.kind, "key": r.key, "state": r.state, "attempts": r.attempts,
                                 "due_at": r.due_at, "last_error": r.last_error, "payload": dict(r.payload)}
                                for r in rows]})

    async def retry_job(self, request: Request) -> Response:
        job_id = _path_id(request, "id")
        await _object(request)
        now = self.clock()

        def work(conn: sa.Connection) -> int:
            job = conn.execute(sa.select(jobs.c.state, jobs.c.kind, jobs.c.payload).where(jobs.c.id == job_id)
                               .with_for_update()).first()
            if job is None:
                _refuse(404, f"no job {job_id}")
            if job.state != JobState.DEAD:
                _refuse(409, f"job {job_id} is {job.state}, not dead: only a dead job is retried")
            # As `JobQueue.revive`, with the event in the same transaction.
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                state=JobState.PENDING, attempts=0, due_at=now, updated_at=now))
            ticket_id = (job.payload or {}).get("ticket_id")
            if not isinstance(ticket_id, int) or isinstance(ticket_id, bool) or conn.execute(
                    sa.select(tickets.c.id).where(tickets.c.id == ticket_id)).first() is None:
                ticket_id = None
            return conn.execute(sa.insert(events).returning(events.c.id), event_row(
                now, "job.retried", ticket_id=ticket_id, actor=ACTOR, field="state", old=JobState.DEAD,
                new=JobState.PENDING, data={"job_id": job_id, "kind": job.kind})).scalar_one()
        event_id = await self.db.run_write(work)
        self.queue.wake()
        return _json({"id": job_id, "state": JobState.PENDING, "event": event_id})

    # -- reports -------------------------------------------------------------------------------

    async def report(self, request: Request) -> Response:
        q = request.query_params
        by = _choice(q, "by", GROUPINGS)
        jalali = _flag(q, "jalali", self.reports.jalali)
        calendar = self.rules.calendar()
        zone = self._zone()
        last = _day(q, "until") or self.clock().astimezone(zone).date()
        first = _day(q, "since") or last - dt.timedelta(days=REPORT_DAYS - 1)
        if not 0 <= (last - first).days < MAX_REPORT_DAYS:
            _refuse(422, f"since, until: the period must start before it ends and span at most {MAX_REPORT_DAYS} days")
        try:
            since, until = (dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
                            for day in (first, last + dt.timedelta(days=1)))
        except OverflowError:
            _refuse(422, "since, until: out of range")
        report = await build_report(self.db, since, until, by=by, calendar=calendar,
                                    complaint_tags=tuple(self.reports.complaint_tags), zone=zone)
        return _json(report_json(report, jalali=jalali))

    def _zone(self) -> ZoneInfo:
        """Where the desk's days begin and end: the business calendar's zone (Asia/Tehran by default)."""
        return getattr(self.rules.calendar(), "zone", TEHRAN)


# -- reading the database ----------------------------------------------------------------------

def _ticket_detail(conn: sa.Connection, ticket_id: int) -> dict[str, Any]:
    """The whole ticket: its fields, its customer, every message and every event, oldest first."""
    t = tickets
    row = conn.execute(sa.select(t).where(t.c.id == ticket_id)).first()
    if row is None:
        raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
    department_names = dict(conn.execute(sa.select(departments.c.id, departments.c.name)).all())
    people = {r.id: r for r in conn.execute(sa.select(agents.c.id, agents.c.name, agents.c.username).where(
        agents.c.id.in_(sa.select(messages.c.agent_id).where(messages.c.ticket_id == ticket_id)
                        .union(sa.select(t.c.assignee_id).where(t.c.id == ticket_id)))))}
    customer = conn.execute(sa.select(customers.c.id, customers.c.name, customers.c.language, customers.c.tags,
                                      customers.c.merged_into).where(customers.c.id == row.customer_id)).one()
    known = [f"{k}:{v}" for k, v in conn.execute(sa.select(addresses.c.kind, addresses.c.value).where(
        addresses.c.customer_id == row.customer_id).order_by(addresses.c.id))]
    m = messages
    said = conn.execute(sa.select(m.c.id, m.c.direction, m.c.channel, m.c.text, m.c.subject, m.c.sender, m.c.agent_id,
                                  m.c.automatic, m.c.delivery_state, m.c.delivery_error, m.c.attempts, m.c.created_at,
                                  m.c.received_at, m.c.sent_at, m.c.delivered_at)
                        .where(m.c.ticket_id == ticket_id).order_by(m.c.id)).all()
    files: dict[int, list[dict[str, Any]]] = {}
    for f in conn.execute(sa.select(attachments.c.message_id, attachments.c.filename, attachments.c.content_type,
                                    attachments.c.size, attachments.c.omitted)
                          .where(attachments.c.message_id.in_([s.id for s in said])).order_by(attachments.c.id)):
        files.setdefault(f.message_id, []).append(
            {"filename": f.filename, "content_type": f.content_type, "size": f.size, "omitted": f.omitted})
    history = [_event_json(e) for e in conn.execute(
        sa.select(events).where(events.c.ticket_id == ticket_id).order_by(events.c.id))]

    def agent(agent_id: int | None) -> dict[str, Any] | None:
        found = people.get(agent_id) if agent_id is not None else None
        return {"id": found.id, "name": found.name, "username": found.username} if found else None

    return {
        "id": row.id, "ref": ticket_ref(row.id), "subject": row.subject, "status": row.status,
        "priority": row.priority, "channel": row.channel, "reply_to": f"{row.reply_kind}:{row.reply_to}",
        "language": row.language, "tags": list(row.tags or ()), "review": bool(row.review),
        **{name: row._mapping[name] for name in _TICKET_TIMES}, "csat_score": row.csat_score,
        "department": ({"id": row.department_id, "name": department_names.get(row.department_id)}
                       if row.department_id is not None else None),
        "assignee": agent(row.assignee_id),
        "customer": {"id": customer.id, "name": customer.name, "language": customer.language,
                     "tags": list(customer.tags or ()), "addresses": known, "merged_into": customer.merged_into},
        "messages": [{
            "id": s.id, "direction": s.direction, "channel": s.channel, "text": s.text, "subject": s.subject,
            "sender": s.sender, "agent": agent(s.agent_id), "automatic": bool(s.automatic),
            "delivery_state": s.delivery_state, "delivery_error": s.delivery_error, "attempts": s.attempts,
            "created_at": s.created_at, "received_at": s.received_at, "sent_at": s.sent_at,
            "delivered_at": s.delivered_at, "attachments": files.get(s.id, [])} for s in said],
        "events": history,
        "referrals": _referrals(history, department_names),
    }


_TICKET_TIMES = ("created_at", "updated_at", "last_inbound_at", "first_response_at", "first_response_due",
                 "resolution_due", "resolved_at", "closed_at", "sla_breached_at", "survey_sent_at", "csat_at")


def _event_json(e: Any) -> dict[str, Any]:
    return {"id": e.id, "ticket_id": e.ticket_id, "customer_id": e.customer_id, "actor": e.actor, "kind": e.kind,
            "field": e.field, "old": e.old, "new": e.new, "data": e.data, "created_at": e.created_at}


def _referrals(history: Sequence[dict[str, Any]], names: Mapping[int, str]) -> list[dict[str, Any]]:
    """The ticket's way through the departments: where the rules sent it, then each transfer, with why."""
    def name(value: str | None) -> str | None:
        return names.get(int(value), value) if value and value.isdigit() else value

    chain = []
    for e in history:
        data = e["data"] if isinstance(e["data"], dict) else {}
        if e["kind"] == "ticket.routed" and data.get("department"):
            chain.append({"at": e["created_at"], "actor": e["actor"], "from": None, "to": data["department"],
                          "reason": None})
        elif e["kind"] == "ticket.department":
            chain.append({"at": e["created_at"], "actor": e["actor"], "from": name(e["old"]), "to": name(e["new"]),
                          "reason": data.get("reason")})
    return chain


def _customer_json(record: CustomerRecord) -> dict[str, Any]:
    return {
        "id": record.id, "name": record.name, "language": record.language, "tags": list(record.tags),
        "created_at": record.created_at, "merged_into": record.merged_into, "merge_event": record.merge_event,
        "merged_from": list(record.merged_from),
        "addresses": [{"id": a.id, "address": str(a), "kind": a.kind, "value": a.value, "created_at": a.created_at}
                      for a in record.addresses],
        "tickets": [{"id": t.id, "ref": t.ref, "subject": t.subject, "status": t.status, "channel": t.channel,
                     "created_at": t.created_at} for t in record.tickets],
    }


def _open_counts(conn: sa.Connection, column: sa.Column) -> dict[int, int]:
    return dict(conn.execute(sa.select(column, sa.func.count()).where(
        tickets.c.status.in_(_OPEN), column.is_not(None)).group_by(column)).all())


def _agents(conn: sa.Connection) -> list[dict[str, Any]]:
    member: dict[int, list[str]] = {}
    for agent_id, name in conn.execute(sa.select(agent_departments.c.agent_id, departments.c.name).join(
            departments, departments.c.id == agent_departments.c.department_id).order_by(departments.c.id)):
        member.setdefault(agent_id, []).append(name)
    busy = _open_counts(conn, tickets.c.assignee_id)
    a = agents
    return [{"id": r.id, "name": r.name, "username": r.username, "telegram_user_id": r.telegram_user_id,
             "email": r.email, "is_lead": r.is_lead, "away": r.away, "active": r.active,
             "departments": member.get(r.id, []), "open_tickets": busy.get(r.id, 0), "created_at": r.created_at}
            for r in conn.execute(sa.select(a.c.id, a.c.name, a.c.username, a.c.telegram_user_id, a.c.email,
                                            a.c.is_lead, a.c.away, a.c.active, a.c.created_at).order_by(a.c.id))]


def _departments(conn: sa.Connection) -> list[dict[str, Any]]:
    staff: dict[int, list[int]] = {}
    for agent_id, department_id in conn.execute(sa.select(agent_departments.c.agent_id,
                                                          agent_departments.c.department_id)
                                                .order_by(agent_departments.c.agent_id)):
        staff.setdefault(department_id, []).append(agent_id)
    busy = _open_counts(conn, tickets.c.department_id)
    d = departments
    return [{"id": r.id, "name": r.name, "title": r.title, "strategy": r.strategy, "review": r.review,
             "chat_id": r.chat_id, "agents": staff.get(r.id, []), "open_tickets": busy.get(r.id, 0),
             "created_at": r.created_at}
            for r in conn.execute(sa.select(d.c.id, d.c.name, d.c.title, d.c.strategy, d.c.review, d.c.chat_id,
                                            d.c.created_at).order_by(d.c.id))]


# -- reading the request -----------------------------------------------------------------------

def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY before more of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        _refuse(413, f"the request body is larger than {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            _refuse(413, f"the request body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _object(request: Request, *, required: Mapping[str, Any] | None = None,
                  optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object the request carries, its keys checked against `required` and `optional` (name:
    type). A body may be left out only when nothing is required."""
    required, optional = required or {}, optional or {}
    raw = await _body(request)
    if not raw.strip():
        if required:
            _refuse(422, f"a JSON object is needed, with {', '.join(required)}")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        _refuse(422, "the body is not valid JSON")
    if not isinstance(body, dict):
        _refuse(422, "the body must be a JSON object")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone surrogate (\ud800); it is no Unicode text
        _refuse(422, "the body has a lone surrogate (\\ud800 ...): strings must be Unicode text")
    if unknown := sorted(set(body) - set(required) - set(optional)):
        known = ", ".join([*required, *optional]) or "none"
        _refuse(422, f"{unknown[0]}: unknown field (known: {known})")
    for name, kind in {**optional, **required}.items():
        if name not in body:
            if name in required:
                _refuse(422, f"{name}: required")
            continue
        value = body[name]
        if isinstance(value, bool) and kind in (int, float):
            _refuse(422, f"{name}: a number, got {json.dumps(value)}")
        if not isinstance(value, kind):
            _refuse(422, f"{name}: {_TYPE_NAMES.get(kind, 'a value of another type')}, got {json.dumps(value)[:100]}")
    return body


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list",
               str | None: "a string or null"}


def _page(q: Mapping[str, str]) -> tuple[int, int]:
    return _int(q, "limit", 50, 1, MAX_LIMIT), _int(q, "offset", 0, 0, _MAX_ID)


def _int(q: Mapping[str, str], name: str, default: int, lowest: int, highest: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    if not _digits(text) or len(text) > _MAX_DIGITS or not lowest <= int(text) <= highest:
        _refuse(422, f"{name}: a whole number from {lowest} to {highest}, got {text!r}")
    return int(text)


def _text(q: Mapping[str, str], name: str) -> str | None:
    """A text filter as ingest stores text: a NUL, more than PostgreSQL can store, is read as U+FFFD."""
    return clean_text(q.get(name))


def _flag(q: Mapping[str, str], name: str, default: bool) -> bool:
    text = q.get(name)
    if text is None:
        return default
    if text.lower() not in ("true", "false", "1", "0"):
        _refuse(422, f"{name}: true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _choice(q: Mapping[str, str], name: str, allowed: Any) -> str | None:
    text = q.get(name)
    return None if text is None else _enum(text, name, allowed)


def _enum(text: str, name: str, allowed: Any) -> str:
    values = [str(v) for v in allowed]
    if text not in values:
        _refuse(422, f"{name}: one of {', '.join(values)}, got {text!r}")
    return text


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes ² and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def _id_text(text: str, name: str, what: str = "an id") -> int:
    # The length first: int() refuses (ValueError) a string of more than 4,300 digits.
    if not _digits(text) or len(text) > _MAX_DIGITS or not 1 <= int(text) <= _MAX_ID:
        _refuse(422, f"{name}: {what} (1 to {_MAX_ID}), got {text[:40]!r}")
    return int(text)


def _id_value(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        _refuse(422, f"{name}: a customer id (a positive integer), got {json.dumps(value)}")
    return value


def _path_id(request: Request, name: str) -> int:
    return _id_text(request.path_params[name], name)


def _address(text: str, name: str) -> Address:
    kind, colon, value = text.partition(":")
    if not colon or kind not in _KINDS:
        _refuse(422, f"{name}: kind:value with kind email, phone or telegram, got {text!r}")
    try:
        return Address.parse(kind, value)
    except AddressError as exc:
        _refuse(422, f"{name}: {exc}")


def _aware(text: str, name: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        _refuse(422, f"{name}: an ISO 8601 time with its offset (2026-11-23T09:30:00+03:30), got {text!r}")
    if moment.tzinfo is None:
        _refuse(422, f"{name}: give the time's offset (+03:30, Z), got {text!r}")
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC time there is
        _refuse(422, f"{name}: {text!r} is out of range")


def _day(q: Mapping[str, str], name: str) -> dt.date | None:
    """A day as `gateway.reports.parse_day` reads it (Gregorian, or Jalali below year 1700)."""
    text = q.get(name)
    if text is None:
        return None
    try:
        return parse_day(text)
    except ValueError as exc:
        _refuse(422, f"{name}: {exc}")


def _moment(q: Mapping[str, str], name: str, zone: ZoneInfo, *, end: bool = False) -> dt.datetime | None:
    """A `since`/`until` bound: an ISO time with its offset, or a local day (an `until` day included whole)."""
    text = q.get(name)
    if text is None:
        return None
    if "T" in text or " " in text.strip():
        return _aware(text, name)
    day = _day(q, name)
    try:
        return dt.datetime.combine(day + dt.timedelta(days=1) if end else day, dt.time(), zone).astimezone(dt.UTC)
    except OverflowError:
        _refuse(422, f"{name}: {text!r} is out of range")


# -- the OpenAPI document ------------------------------------------------------------------------

def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null (JSON Schema 2020-12, as OpenAPI 3.1 has it)."""
    if set(schema) <= {"type", "format", "enum", "description"} and isinstance(schema.get("type"), str):
        out = {**schema, "type": [schema["type"], "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: Mapping[str, Any], *, optional: Sequence[str] = (), closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": dict(properties),
                           "required": [name for name in properties if name not in optional]}
    if closed:
        out["additionalProperties"] = False
    return out


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_ID = {"type": "integer", "format": "int64", "minimum": 1, "maximum": _MAX_ID}
_TIME = {"type": "string", "format": "date-time"}
_IDS = _list(_INT)
_STRS = _list(_STR)


def _schemas() -> dict[str, Any]:
    status = {"type": "string", "enum": [str(s) for s in TicketStatus]}
    priority = {"type": "string", "enum": [str(p) for p in Priority]}
    agent_ref = _obj({"id": _INT, "name": _STR, "username": _null(_STR)})
    actions = _obj({"department": _null(_STR), "priority": _null(priority), "tags": _STRS, "assign": _null(_STR),
                    "reply_template": _null(_STR), "review": _BOOL, "stop": _BOOL})
    page = {"total": _INT, "limit": _INT, "offset": _INT}
    return {
        "Error": {"type": "object", "properties": {"error": _STR}, "required": ["error"]},
        "TicketItem": _obj({
            "id": _INT, "ref": _STR, "subject": _null(_STR), "status": status, "priority": priority, "channel": _STR,
            "reply_to": _STR, "customer_id": _INT, "customer_name": _null(_STR), "department": _null(_STR),
            "assignee_id": _null(_INT), "assignee": _null(_STR), "tags": _STRS, "created_at": _TIME,
            "updated_at": _TIME}),
        "TicketList": _obj({"items": _list(_ref("TicketItem")), **page}),
        "AgentRef": agent_ref,
        "Attachment": _obj({"filename": _STR, "content_type": _STR, "size": _null(_INT), "omitted": _null(_STR)}),
        "Message": _obj({
            "id": _INT, "direction": {"type": "string", "enum": [str(d) for d in Direction]}, "channel": _STR,
            "text": _STR, "subject": _null(_STR), "sender": _null(_STR), "agent": _null(_ref("AgentRef")),
            "automatic": _BOOL, "delivery_state": {"type": "string", "enum": [str(s) for s in DeliveryState]},
            "delivery_error": _null(_STR), "attempts": _INT, "created_at": _TIME, "received_at": _null(_TIME),
            "sent_at": _null(_TIME), "delivered_at": _null(_TIME), "attachments": _list(_ref("Attachment"))}),
        "Event": _obj({
            "id": _INT, "ticket_id": _null(_INT), "customer_id": _null(_INT), "actor": _STR, "kind": _STR,
            "field": _null(_STR), "old": _null(_STR), "new": _null(_STR),
            "data": {"description": "what the change carried, by kind (any JSON value or null)"},
            "created_at": _TIME}),
        "Referral": _obj({"at": _TIME, "actor": _STR, "from": _null(_STR), "to": _null(_STR),
                          "reason": _null(_STR)}),
        "TicketDetail": _obj({
            "id": _INT, "ref": _STR, "subject": _null(_STR), "status": status, "priority": priority,
            "channel": _STR, "reply_to": _STR, "language": _null(_STR), "tags": _STRS, "review": _BOOL,
            "created_at": _TIME, "updated_at": _TIME,
            **{name: _null(_TIME) for name in _TICKET_TIMES[2:]}, "csat_score": _null(_INT),
            "department": _null(_obj({"id": _INT, "name": _null(_STR)})),
            "assignee": _null(_ref("AgentRef")),
            "customer": _obj({"id": _INT, "name": _null(_STR), "language": _null(_STR), "tags": _STRS,
                              "addresses": _STRS, "merged_into": _null(_INT)}),
            "messages": _list(_ref("Message")), "events": _list(_ref("Event")),
            "referrals": _list(_ref("Referral"))}),
        "CustomerItem": _obj({"id": _INT, "name": _null(_STR), "language": _null(_STR), "tags": _STRS,
                              "created_at": _TIME, "merged_into": _null(_INT), "addresses": _STRS}),
        "CustomerList": _obj({"items": _list(_ref("CustomerItem")), **page}),
        "Customer": _obj({
            "id": _INT, "name": _null(_STR), "language": _null(_STR), "tags": _STRS, "created_at": _TIME,
            "merged_into": _null(_INT), "merge_event": _null(_INT), "merged_from": _IDS,
            "addresses": _list(_obj({"id": _INT, "address": _STR, "kind": _STR, "value": _STR,
                                     "created_at": _TIME})),
            "tickets": _list(_obj({"id": _INT, "ref": _STR, "subject": _null(_STR), "status": status,
                                   "channel": _STR, "created_at": _TIME}))}),
        "MergeRequest": _obj({"from": {**_ID, "description": "the customer merged into this one"}}),
        "MergeResult": _obj({"merge_event": _INT, "customer": _INT, "from": _INT, "addresses": _IDS,
                             "tickets": _IDS, "events": _IDS}),
        "UndoResult": _obj({"unmerge_event": _INT, "merge_event": _INT, "customer": _INT, "survivor": _INT,
                            "addresses": _IDS, "tickets": _IDS, "events": _IDS}),
        "SplitRequest": _obj({"address": {**_STR, "description": "kind:value, as email:sara@example.ir"},
                              "name": _null(_STR)}, optional=["name"]),
        "SplitResult": _obj({"split_event": _INT, "customer": _INT, "from": _INT, "address": _STR, "tickets": _IDS,
                             "events": _IDS}),
        "Agent": _obj({
            "id": _INT, "name": _STR, "username": _null(_STR), "telegram_user_id": _null(_INT), "email": _null(_STR),
            "is_lead": _BOOL, "away": _BOOL, "active": _BOOL, "departments": _STRS, "open_tickets": _INT,
            "created_at": _TIME}),
        "AgentList": _obj({"items": _list(_ref("Agent"))}),
        "AwayRequest": _obj({"away": _BOOL}),
        "AwayResult": _obj({"id": _INT, "away": _BOOL, "changed": _BOOL, "event": _null(_INT)}),
        "Department": _obj({
            "id": _INT, "name": _STR, "title": _null(_STR), "strategy": _STR, "review": _BOOL,
            "chat_id": _null(_STR), "agents": _IDS, "open_tickets": _INT, "created_at": _TIME}),
        "DepartmentList": _obj({"items": _list(_ref("Department"))}),
        "Rules": _obj({
            "file": _null(_STR), "source": _STR, "text": _null(_STR),
            "rules": _list(_obj({"name": _STR, "line": _null(_INT)})),
            "error": _null({**_STR, "description": "why the file on disk was refused (the rules before it run)"})}),
        "ValidateRequest": _obj({"text": _STR}),
        "ValidateOk": _obj({"ok": {"const": True}}),
        "ValidateError": _obj({"ok": {"const": False}, "error": _STR}),
        "DryRunRequest": _obj({
            "channel": {"type": "string", "enum": [str(c) for c in ChannelKind]},
            "sender": {**_STR, "description": "kind:value, or a bare address read by the channel"},
            "subject": _STR, "text": _STR, "tags": {**_STRS, "description": "the customer's tags"},
            "attachment": _BOOL, "language": _null(_STR), "first_message": _BOOL,
            "at": {**_TIME, "description": "when it arrives (business hours, SLA due times); default now"}},
            optional=["sender", "subject", "text", "tags", "attachment", "language", "first_message", "at"]),
        "Actions": actions,
        "DryRunResult": _obj({
            "business_hours": _BOOL,
            "fired": _list(_obj({"rule": _STR, "position": _INT, "line": _null(_INT), "why": _STRS,
                                 "actions": _ref("Actions")})),
            "missed": _list(_obj({"rule": _STR, "position": _INT, "line": _null(_INT), "reason": _STR})),
            "decision": _obj({"department": _null(_STR), "priority": _null(priority), "tags": _STRS,
                              "assign": _null(_STR), "reply_template": _null(_STR), "review": _BOOL}),
            "first_response_due": _TIME, "resolution_due": _TIME, "explain": _STRS}),
        "Job": _obj({"id": _INT, "kind": _STR, "key": _null(_STR),
                     "state": {"type": "string", "enum": [str(s) for s in JobState]}, "attempts": _INT,
                     "due_at": _TIME, "last_error": _null(_STR), "payload": {"type": "object"}}),
        "JobList": _obj({"items": _list(_ref("Job"))}),
        "RetryResult": _obj({"id": _INT, "state": {"const": "pending"}, "event": _INT}),
        **_report_schemas(),
    }


def _report_schemas() -> dict[str, Any]:
    """The report as `gateway.reports.report_json` writes it (`kartabl report --json`); open to new figures."""
    number = {"type": "number"}
    counts = {"type": "object", "additionalProperties": _INT}
    seconds = _null({**number, "description": "seconds"})
    durations = _obj({"count": _INT, "median": seconds, "p90": seconds, "business_median": seconds,
                      "business_p90": seconds}, closed=False)
    return {
        "Figures": _obj({
            "group": _STR, "new": _INT, "resolved": _INT, "open": _INT, "backlog": counts,
            "first_response": durations, "resolution": durations, "sla_breaches": _INT, "breach_rate": _null(number),
            "reopened": _INT, "reopen_rate": _null(number), "complaints": _INT, "csat_average": _null(number),
            "csat_count": _INT, "messages_in": counts, "messages_out": counts, "delivery_failures": counts,
            "contacts_per_customer_month": _null(number)}, closed=False),
        "Report": _obj({
            "since": {**_TIME, "description": "UTC, inclusive"}, "until": {**_TIME, "description": "UTC, exclusive"},
            "first_day": {"type": "string", "format": "date"}, "last_day": {"type": "string", "format": "date"},
            "by": _null({"type": "string", "enum": list(GROUPINGS)}), "total": _ref("Figures"),
            "groups": _list(_ref("Figures")),
            "days": _list(_obj({"day": {"type": "string", "format": "date"}, "new_by_channel": counts,
                                "sla_breaches": _INT, "csat_average": _null(number), "csat_count": _INT,
                                "jalali": _STR}, optional=["jalali"], closed=False)),
            "response_histogram": counts,
            "jalali": _obj({"first_day": _STR, "last_day": _STR})}, optional=["jalali"], closed=False),
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _responses() -> dict[str, Any]:
    return {
        "Unauthorized": {**_error("no bearer token, or a wrong one; nothing was done"),
                         "headers": {"WWW-Authenticate": {"schema": _STR, "description": 'Bearer realm="kartabl"'}}},
        "NotFound": _error("no such record"),
        "Conflict": _error("the change does not fit the record as it is now"),
        "Invalid": _error("a parameter or the body is not valid; the error says which and why"),
        "TooLarge": _error(f"the body is larger than {MAX_BODY} bytes"),
    }


def _param(name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


def _operation(op_id: str, summary: str, ok: str | dict[str, Any], *, params: Sequence[dict] = (),
               body: str | dict[str, Any] | None = None, body_required: bool = True,
               errors: Sequence[str] = ()) -> dict[str, Any]:
    content = ok if isinstance(ok, dict) else {"application/json": {"schema": _ref(ok)}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content},
                                 "401": {"$ref": "#/components/responses/Unauthorized"}}
    errors = [*errors, "422"]  # every operation refuses a query parameter it does not name
    if body is not None:
        errors = [*errors, "413"]
    for code in sorted(set(errors)):
        if code not in responses:
            responses[code] = {"$ref": "#/components/responses/" + {
                "404": "NotFound", "409": "Conflict", "413": "TooLarge", "422": "Invalid"}[code]}
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "parameters": list(params), "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": body if isinstance(body, dict) else
                             {"application/json": {"schema": _ref(body)}}}
    return op


def _paths() -> dict[str, Any]:
    limit = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                   "most items returned")
    offset = _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": _MAX_ID, "default": 0},
                    "items skipped first")
    id_ = _param("id", "path", _ID, "the record's id")
    bound = {"type": "string", "examples": ["2026-11-23", "1405-09-02", "2026-11-23T09:30:00+03:30"]}
    day = {"type": "string", "examples": ["2026-11-01", "1405-08-10"]}
    empty = {"application/json": {"schema": {"type": "object", "maxProperties": 0}}}
    return {
        "/api/openapi.json": {"get": _operation("openapi", "This document", {"application/json": {
            "schema": {"type": "object"}}})},
        "/api/tickets": {"get": _operation("listTickets", "Tickets, newest first, filtered", "TicketList", params=[
            _param("status", "query", {"type": "string", "enum": [str(s) for s in TicketStatus]}, "the ticket's status"),
            _param("channel", "query", {"type": "string", "enum": [str(c) for c in ChannelKind]}, "its channel"),
            _param("department", "query", _STR, "a department's name, or none for tickets without one"),
            _param("assignee", "query", {"type": "string", "pattern": "^([1-9][0-9]*|none)$"},
                   "an agent's id, or none for unassigned tickets"),
            _param("priority", "query", {"type": "string", "enum": [str(p) for p in Priority]}, "its priority"),
            _param("q", "query", _STR, "text found in the subject or any message (case-insensitive)"),
            _param("since", "query", bound, "created at or after: a local day (Asia/Tehran unless the calendar "
                   "says otherwise; Gregorian, or Jalali below year 1700) or an ISO 8601 time with its offset"),
            _param("until", "query", bound, "created before: an ISO 8601 time, or a local day, included whole"),
            limit, offset])},
        "/api/tickets/{ref}": {"get": _operation(
            "getTicket", "A ticket with its customer, every message and every event", "TicketDetail",
            params=[_param("ref", "path", {"type": "string", "pattern": _REF_PATTERN},
                           "the ticket's reference (T-1042) or its id (42)")], errors=["404"])},
        "/api/customers": {"get": _operation("listCustomers", "Customers, newest first", "CustomerList", params=[
            _param("address", "query", _STR, "the customer with this address (kind:value, any spelling)"),
            _param("q", "query", _STR, "text found in the name (case-insensitive)"), limit, offset])},
        "/api/customers/{id}": {"get": _operation(
            "getCustomer", "A customer with every address and ticket, and where merges left it", "Customer",
            params=[id_], errors=["404"])},
        "/api/customers/{id}/merge": {"post": _operation(
            "mergeCustomer", "Move another customer's addresses, tickets and events to this one", "MergeResult",
            params=[id_], body="MergeRequest", errors=["404", "409"])},
        "/api/customers/{id}/split": {"post": _operation(
            "splitCustomer", "Give one address, and the tickets it opened, to a new customer", "SplitResult",
            params=[id_], body="SplitRequest", errors=["404", "409"])},
        "/api/merges/{event_id}/undo": {"post": _operation(
            "undoMerge", "Move back what a merge moved, if it is still on the survivor", "UndoResult",
            params=[_param("event_id", "path", _ID, "the merge's event id (merge_event)")],
            body=empty, body_required=False, errors=["404", "409"])},
        "/api/agents": {"get": _operation("listAgents", "Every agent", "AgentList")},
        "/api/agents/{id}/away": {"post": _operation(
            "setAway", "Mark an agent away (no new tickets) or back", "AwayResult", params=[id_], body="AwayRequest",
            errors=["404"])},
        "/api/departments": {"get": _operation("listDepartments", "Every department", "DepartmentList")},
        "/api/rules": {"get": _operation("getRules", "The workflow file and the rules running now", "Rules")},
        "/api/rules/validate": {"post": _operation(
            "validateRules", "Check a candidate workflow file without using it", {"application/json": {
                "schema": _ref("ValidateOk")}},
            body={"text/plain": {"schema": _STR}, "application/json": {"schema": _ref("ValidateRequest")}})},
        "/api/rules/dry-run": {"post": _operation(
            "dryRun", "Which rules a message would fire, why, and the decision", "DryRunResult",
            body="DryRunRequest")},
        "/api/jobs": {"get": _operation("listJobs", "Jobs, oldest first", "JobList", params=[
            _param("state", "query", {"type": "string", "enum": [str(s) for s in JobState]}, "only jobs in this state"),
            limit])},
        "/api/jobs/{id}/retry": {"post": _operation(
            "retryJob", "Make a dead job pending again, with fresh attempts", "RetryResult", params=[id_],
            body=empty, body_required=False, errors=["404", "409"])},
        "/api/reports": {"get": _operation("getReport", "The desk's KPIs for a period", "Report", params=[
            _param("since", "query", day, f"first local day, Gregorian or Jalali; default {REPORT_DAYS - 1} days "
                   "before until"),
            _param("until", "query", day, f"last local day, included; default today (the period spans at most "
                   f"{MAX_REPORT_DAYS} days)"),
            _param("by", "query", {"type": "string", "enum": list(GROUPINGS)}, "group the figures by"),
            _param("jalali", "query", {"type": "boolean"}, "dates in the Jalali calendar (default: reports.jalali)"),
        ])},
    }


def _query_names(operation: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(p["name"] for p in operation["parameters"] if p["in"] == "query")


def openapi_document() -> dict[str, Any]:
    """The admin API described as OpenAPI 3.1: every route, parameter, body and response."""
    paths = _paths()
    validate = paths["/api/rules/validate"]["post"]
    validate["responses"] = {
        "200": {"description": "the file is valid", "content": {"application/json": {"schema": _ref("ValidateOk")}}},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "413": {"$ref": "#/components/responses/TooLarge"},
        "422": {"description": "the file is not valid, or the body is not a file",
                "content": {"application/json": {"schema": {"anyOf": [_ref("ValidateError"), _ref("Error")]}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kartabl admin API", "version": __version__,
                 "description": "Tickets, customers, agents, rules, jobs and reports of one Kartabl gateway. "
                                "Every change is on the event log with the actor api:admin."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the gateway's http.admin_token"}},
            "schemas": _schemas(),
            "responses": _responses(),
        },
    }
