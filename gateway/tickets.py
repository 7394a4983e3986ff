"""What agents do to tickets (reply, note, change status) and what they see of one (summary, history)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from gateway.attachments import StoredAttachment
from gateway.db import Database
from gateway.addresses import Address
from gateway.domain import AddressKind, ChannelKind, DeliveryState, Direction, Priority, TicketStatus, ticket_ref
from gateway.errors import TicketNotFound
from gateway.events import event_row
from gateway.ingest import clean_text
from gateway.jobs import JobQueue
from gateway.messages import utcnow
from gateway.outbox import Outbox
from gateway.schema import (
    addresses, agents, attachments, customers, departments, events, handled_updates, messages, tickets,
)

#: The job telling the workflow engine a ticket changed: payload ticket_id, field, old, new, actor.
CHANGED_JOB = "ticket.changed"
#: Where a long answer can go in full, by the customer's address kind, most suitable first.
_CHANNEL_OF = {"email": "email", "telegram": "telegram"}
#: Tickets of the same customer shown on a ticket's card.
EARLIER_SHOWN = 5


@dataclasses.dataclass(frozen=True, slots=True)
class EarlierTicket:
    ref: str
    subject: str | None
    status: str
    channel: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TicketSummary:
    """A ticket as its card shows it, with the customer's earlier requests."""

    id: int
    ref: str
    subject: str | None
    status: str
    priority: str
    channel: str
    reply_to: str
    customer_id: int
    customer_name: str | None
    customer_addresses: tuple[str, ...]
    created_at: dt.datetime
    earlier: tuple[EarlierTicket, ...]
    earlier_count: int
    language: str | None = None
    department: str | None = None
    assignee: str | None = None
    first_response_due: dt.datetime | None = None
    resolution_due: dt.datetime | None = None
    customer_tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class MessageView:
    id: int
    ticket_id: int
    direction: str
    channel: str
    text: str
    subject: str | None
    sender: str | None
    agent_id: int | None
    delivery_state: str
    delivery_error: str | None
    created_at: dt.datetime
    attachments: tuple[str, ...]


_STATUS_STAMPS = {TicketStatus.RESOLVED: "resolved_at", TicketStatus.CLOSED: "closed_at"}

#: (channel, key) of the provider update an agent's action came from (see `handled_updates`).
Once = tuple[str, str]


def _first_time(conn: sa.Connection, once: Once | None, now: dt.datetime) -> bool:
    """Record `once` in the caller's transaction; False if it was recorded before (a replayed update)."""
    if once is None:
        return True
    channel, key = once
    seen = conn.execute(sa.select(handled_updates.c.key).where(
        handled_updates.c.channel == channel, handled_updates.c.key == key)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(handled_updates), {"channel": channel, "key": key[:200], "created_at": now})
    return True


class TicketService:
    def __init__(self, db: Database, queue: JobQueue, outbox: Outbox,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.queue = queue
        self.outbox = outbox
        self.clock = clock
        #: Whether changes are announced to the workflow engine (`CHANGED_JOB`); set by the composition root.
        self.announce = False

    async def reply(self, ticket_id: int, text: str, *, agent_id: int | None = None,
                    automatic: bool = False, files: Sequence[StoredAttachment] = (),
                    once: Once | None = None) -> int | None:
        """Queue an answer to the customer on the ticket's own channel; returns the message id.

        An agent's first reply is the ticket's first response and opens a new ticket; an automatic
        one (acknowledgement, survey) is neither. With `once` (the provider update the reply came
        from), a second call for the same update does nothing and returns None.
        """
        now = self.clock()

        values: dict[str, object] = {"updated_at": now}
        if not automatic:
            values["first_response_at"] = sa.func.coalesce(tickets.c.first_response_at, now)
        touch = (sa.update(tickets).where(tickets.c.id == ticket_id).values(**values)
                 .returning(tickets.c.channel, tickets.c.status, tickets.c.customer_id, tickets.c.subject,
                            tickets.c.review))
        too_long = {} if automatic else self._too_long(text)

        def work(conn: sa.Connection) -> int | None:
            if not _first_time(conn, once, self.clock()):
                return None
            if not automatic and agent_id is not None and self._needs_review(conn, ticket_id, agent_id):
                return self._hold(conn, ticket_id, text, agent_id, files, now)
            ticket = conn.execute(touch).one_or_none()
            if ticket is None:
                raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
            full_on = self._elsewhere(conn, ticket.customer_id, ticket.channel) if too_long.get(ticket.channel) else None
            message_id = self.outbox.add(conn, ticket_id=ticket_id, channel=ticket.channel, text=text,
                                         agent_id=agent_id, automatic=automatic, files=files,
                                         full_answer_on=full_on.kind if full_on else None)
            if full_on is not None:  # the whole answer where it fits, beside the shortened one
                self.outbox.add(conn, ticket_id=ticket_id, channel=_CHANNEL_OF[full_on.kind], text=text,
                                agent_id=agent_id, files=files, to=full_on, subject=ticket.subject)
            if not automatic and ticket.status == TicketStatus.NEW:
                actor = f"agent:{agent_id}" if agent_id else "system"
                self._move(conn, ticket_id, TicketStatus.NEW, TicketStatus.OPEN, actor, now)
            return message_id
        message_id = await self.db.run_write(work)
        self.queue.wake()
        return message_id

    def _needs_review(self, conn: sa.Connection, ticket_id: int, agent_id: int) -> bool:
        """A reply on a ticket under review, by an agent who is not a lead."""
        row = conn.execute(sa.select(tickets.c.review, agents.c.is_lead)
                           .select_from(tickets.outerjoin(agents, agents.c.id == agent_id))
                           .where(tickets.c.id == ticket_id)).one_or_none()
        if row is None:
            raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
        return bool(row.review) and not row.is_lead

    def _hold(self, conn: sa.Connection, ticket_id: int, text: str, agent_id: int,
              files: Sequence[StoredAttachment], now: dt.datetime) -> int:
        """Keep the reply as a draft for a lead (it counts as no response yet), and say so on the record."""
        channel = self._channel_of(conn, ticket_id)
        message_id = self.outbox.add(conn, ticket_id=ticket_id, channel=channel, text=text, agent_id=agent_id,
                                     files=files, held=True)
        conn.execute(sa.insert(events), event_row(now, "reply.held", ticket_id=ticket_id, actor=f"agent:{agent_id}",
                                                  data={"message_id": message_id}))
        self._announce(conn, ticket_id, "review", None, str(message_id), f"agent:{agent_id}")
        return message_id

    async def approve(self, message_id: int, *, lead_id: int, text: str | None = None) -> int:
        """A lead lets a held reply go (edited to `text` if given); returns its ticket. It is then the
        ticket's response, as if sent now."""
        return await self._decide(message_id, lead_id, approve=True, text=text)

    async def reject(self, message_id: int, *, lead_id: int, reason: str = "") -> int:
        """A lead turns a held reply down: it is never sent; the reason is on the record."""
        return await self._decide(message_id, lead_id, approve=False, text=reason)

    async def _decide(self, message_id: int, lead_id: int, *, approve: bool, text: str | None) -> int:
        now = self.clock()

        def work(conn: sa.Connection) -> int:
            row = conn.execute(sa.select(messages.c.ticket_id, messages.c.text, messages.c.agent_id).where(
                messages.c.id == message_id, messages.c.delivery_state == DeliveryState.HELD)).one_or_none()
            if row is None:
                raise TicketNotFound(f"no reply {message_id} waiting for review")
            values: dict[str, object] = {"delivery_state": DeliveryState.PENDING if approve else DeliveryState.REJECTED}
            if approve and text:
                values["text"] = clean_text(text) or row.text
            conn.execute(sa.update(messages).where(messages.c.id == message_id).values(values))
            data = {"message_id": message_id, "author": row.agent_id}
            if approve:
                self.outbox.release(conn, message_id, row.ticket_id)
                data["edited"] = bool(text)
                conn.execute(sa.update(tickets).where(tickets.c.id == row.ticket_id).values(
                    first_response_at=sa.func.coalesce(tickets.c.first_response_at, now), updated_at=now))
                status = conn.execute(sa.select(tickets.c.status).where(tickets.c.id == row.ticket_id)).scalar()
                if status == TicketStatus.NEW:
                    self._move(conn, row.ticket_id, TicketStatus.NEW, TicketStatus.OPEN, f"agent:{lead_id}", now)
            else:
                data["reason"] = text or ""
            conn.execute(sa.insert(events), event_row(
                now, "reply.approved" if approve else "reply.rejected", ticket_id=row.ticket_id,
                actor=f"agent:{lead_id}", data=data))
            return row.ticket_id
        ticket_id = await self.db.run_write(work)
        self.queue.wake()
        return ticket_id

    def _announce(self, conn: sa.Connection, ticket_id: int, field: str, old: str | None, new: str | None,
                  actor: str) -> None:
        """Tell the workflow engine (a durable job) that the ticket changed, when it listens."""
        if self.announce:
            self.queue.enqueue(conn, CHANGED_JOB, {"ticket_id": ticket_id, "field": field, "old": old, "new": new,
                                                   "actor": actor})

    def _too_long(self, text: str) -> dict[str, bool]:
        """For each channel that limits a reply's length (SMS parts), whether `text` is too long for it."""
        return {str(kind): not channel.fits(text) for kind, channel in self.outbox.channels.items()
                if hasattr(channel, "fits")}

    def _elsewhere(self, conn: sa.Connection, customer_id: int, channel: str) -> Address | None:
        """The customer's address on another running channel that takes a long answer (email first)."""
        found = dict(conn.execute(sa.select(addresses.c.kind, addresses.c.value).where(
            addresses.c.customer_id == customer_id, addresses.c.kind.in_(list(_CHANNEL_OF)))
            .order_by(addresses.c.id)).all())
        for kind in _CHANNEL_OF:
            other = _CHANNEL_OF[kind]
            if kind in found and other != channel and ChannelKind(other) in self.outbox.channels:
                return Address(AddressKind(kind), found[kind])
        return None

    async def auto_reply(self, ticket_id: int, text: str, *, because_of: int, daily_cap: int,
                         once_per_ticket: bool = False,
                         also: Callable[[sa.Connection], None] | None = None,
                         buttons: Sequence[tuple[str, str]] = ()) -> int | None:
        """Queue an automatic message answering message `because_of`; None when loop guards forbid it.

        Never answers a message that was itself automatic (auto-replies, bounces, list mail), never
        sends a customer more than `daily_cap` automatic messages in 24 hours, and with
        `once_per_ticket` (acknowledgements) never twice on one ticket. A refusal is recorded as an
        event, so the ticket's history shows why no reply went out. `also` runs in the same
        transaction when the message is queued.
        """
        now = self.clock()
        m, t = messages, tickets

        def work(conn: sa.Connection) -> int | None:
            trigger = conn.execute(
                sa.select(m.c.automatic, t.c.customer_id, t.c.channel)
                .join(t, t.c.id == m.c.ticket_id).where(m.c.id == because_of, m.c.ticket_id == ticket_id)
            ).one_or_none()
            if trigger is None:
                raise TicketNotFound(f"no message {because_of} on ticket {ticket_ref(ticket_id)}")
            automatic_out = sa.and_(m.c.direction == Direction.OUTBOUND, m.c.automatic.is_(True))
            reason = None
            if trigger.automatic:
                reason = "the customer's message was itself automatic"
            elif once_per_ticket and conn.execute(
                    sa.select(m.c.id).where(m.c.ticket_id == ticket_id, automatic_out).limit(1)).first():
                return None  # already acknowledged: a retried job, not a loop
            elif conn.execute(
                    sa.select(sa.func.count()).select_from(m.join(t, t.c.id == m.c.ticket_id))
                    .where(t.c.customer_id == trigger.customer_id, automatic_out,
                           m.c.created_at > now - dt.timedelta(days=1))).scalar_one() >= daily_cap:
                reason = f"the customer already got {daily_cap} automatic messages in 24 hours"
            if reason is not None:
                conn.execute(sa.insert(events), event_row(
                    now, "autoreply.suppressed", ticket_id=ticket_id, data={"message_id": because_of,
                                                                             "reason": reason}))
                return None
            if also is not None:  # the caller's bookkeeping of this message (a survey asked), in its transaction
                also(conn)
            return self.outbox.add(conn, ticket_id=ticket_id, channel=trigger.channel, text=text, automatic=True,
                                   buttons=buttons)
        message_id = await self.db.run_write(work)
        if message_id is not None:
            self.queue.wake()
        return message_id

    async def note(self, ticket_id: int, text: str, *, agent_id: int | None = None,
                   once: Once | None = None) -> int | None:
        """An internal note: on the ticket's record, never sent to the customer. `once` as for `reply`."""
        def work(conn: sa.Connection) -> int | None:
            if not _first_time(conn, once, self.clock()):
                return None
            channel = self._channel_of(conn, ticket_id)
            return conn.execute(sa.insert(messages).returning(messages.c.id), {
                "ticket_id": ticket_id, "direction": Direction.NOTE, "channel": channel,
                "agent_id": agent_id, "text": clean_text(text) or "",
                "delivery_state": DeliveryState.RECEIVED, "created_at": self.clock(),
            }).scalar_one()
        return await self.db.run_write(work)

    async def set_status(self, ticket_id: int, status: TicketStatus, *, actor: str = "system") -> bool:
        """Move the ticket to `status`; False if it already was there."""
        now = self.clock()

        def work(conn: sa.Connection) -> bool:
            current = conn.execute(sa.select(tickets.c.status).where(tickets.c.id == ticket_id)).scalar()
            if current is None:
                raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
            if current == status:
                return False
            return self._move(conn, ticket_id, current, status, actor, now)
        return await self.db.run_write(work)

    async def assign(self, ticket_id: int, agent_id: int | None, *, actor: str) -> bool:
        """Give the ticket to `agent_id` (None: back to the queue); False if it already was so."""
        return await self._change(ticket_id, "assignee_id", agent_id, actor)

    async def set_priority(self, ticket_id: int, priority: Priority, *, actor: str) -> bool:
        return await self._change(ticket_id, "priority", Priority(priority), actor)

    async def transfer(self, ticket_id: int, department_id: int | None, *, actor: str, reason: str = "") -> bool:
        """Refer the ticket to another department; its history stays with it, the reason on the record."""
        return await self._change(ticket_id, "department_id", department_id, actor, {"reason": reason} if reason else None)

    async def _change(self, ticket_id: int, field: str, value: object, actor: str,
                      data: dict[str, object] | None = None) -> bool:
        """Set one field of the ticket, conditionally on its current value, with its event."""
        now = self.clock()
        column = tickets.c[field]

        def work(conn: sa.Connection) -> bool:
            old = conn.execute(sa.select(column).where(tickets.c.id == ticket_id)).one_or_none()
            if old is None:
                raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
            if old[0] == value:
                return False
            changed = conn.execute(
                sa.update(tickets).where(tickets.c.id == ticket_id, column == old[0] if old[0] is not None
                                         else column.is_(None)).values({field: value, "updated_at": now})
            ).rowcount == 1
            if changed:
                before, after = None if old[0] is None else str(old[0]), None if value is None else str(value)
                conn.execute(sa.insert(events), event_row(
                    now, f"ticket.{field.removesuffix('_id')}", ticket_id=ticket_id, actor=actor, field=field,
                    old=before, new=after, data=data))
                self._announce(conn, ticket_id, field, before, after, actor)
            return changed
        return await self.db.run_write(work)

    def _move(self, conn: sa.Connection, ticket_id: int, old: str, new: TicketStatus, actor: str,
              now: dt.datetime) -> bool:
        """Conditional status change: only from `old`, recorded as an event."""
        values: dict[str, object] = {"status": new, "updated_at": now}
        if new in _STATUS_STAMPS:
            values[_STATUS_STAMPS[new]] = now
        if new == TicketStatus.OPEN:
            values["resolved_at"] = None
        changed = conn.execute(
            sa.update(tickets).where(tickets.c.id == ticket_id, tickets.c.status == old).values(**values)
        ).rowcount == 1
        if changed:
            conn.execute(sa.insert(events), event_row(now, "ticket.status", ticket_id=ticket_id, actor=actor,
                                                  field="status", old=old, new=new))
            self._announce(conn, ticket_id, "status", old, str(new), actor)
        return changed

    def _channel_of(self, conn: sa.Connection, ticket_id: int) -> str:
        channel = conn.execute(sa.select(tickets.c.channel).where(tickets.c.id == ticket_id)).scalar()
        if channel is None:
            raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
        return channel

    async def summary(self, ticket_id: int) -> TicketSummary:
        return await self.db.run_read(lambda conn: _summary(conn, ticket_id))

    async def view(self, ticket_id: int, message_id: int) -> tuple[TicketSummary, MessageView]:
        """A ticket and one of its messages, read on one snapshot (one hand-off, not two)."""
        def work(conn: sa.Connection) -> tuple[TicketSummary, MessageView]:
            found = _messages(conn, messages.c.id == message_id)
            if not found:
                raise LookupError(f"no message {message_id}")
            return _summary(conn, ticket_id), found[0]
        return await self.db.run_read(work)

    async def conversation(self, ticket_id: int) -> list[MessageView]:
        """Every message of the ticket, oldest first."""
        return await self.db.run_read(lambda conn: _messages(conn, messages.c.ticket_id == ticket_id))

    async def message(self, message_id: int) -> MessageView:
        found = await self.db.run_read(lambda conn: _messages(conn, messages.c.id == message_id))
        if not found:
            raise LookupError(f"no message {message_id}")
        return found[0]


def _summary(conn: sa.Connection, ticket_id: int) -> TicketSummary:
    t, c, d, a = tickets, customers, departments, agents
    row = conn.execute(
        sa.select(t.c.id, t.c.subject, t.c.status, t.c.priority, t.c.channel, t.c.reply_kind,
                  t.c.reply_to, t.c.customer_id, c.c.name, c.c.tags, t.c.created_at, t.c.language,
                  d.c.name.label("department"), a.c.name.label("assignee"), t.c.first_response_due,
                  t.c.resolution_due)
        .join(c, c.c.id == t.c.customer_id)
        .outerjoin(d, d.c.id == t.c.department_id).outerjoin(a, a.c.id == t.c.assignee_id)
        .where(t.c.id == ticket_id)
    ).one_or_none()
    if row is None:
        raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
    known = conn.execute(
        sa.select(addresses.c.kind, addresses.c.value)
        .where(addresses.c.customer_id == row.customer_id).order_by(addresses.c.id)
    ).all()
    # The window counts every earlier ticket before LIMIT cuts the list: one statement, not two.
    earlier = conn.execute(
        sa.select(t.c.id, t.c.subject, t.c.status, t.c.channel, t.c.created_at, sa.func.count().over())
        .where(t.c.customer_id == row.customer_id, t.c.id != ticket_id)
        .order_by(t.c.id.desc()).limit(EARLIER_SHOWN)
    ).all()
    return TicketSummary(
        id=row.id, ref=ticket_ref(row.id), subject=row.subject, status=row.status,
        priority=row.priority, channel=row.channel, reply_to=f"{row.reply_kind}:{row.reply_to}",
        customer_id=row.customer_id, customer_name=row.name,
        customer_addresses=tuple(f"{k}:{v}" for k, v in known), created_at=row.created_at,
        earlier=tuple(EarlierTicket(ticket_ref(i), s, st, ch, at) for i, s, st, ch, at, _ in earlier),
        earlier_count=earlier[0][-1] if earlier else 0, language=row.language, department=row.department,
        assignee=row.assignee, first_response_due=row.first_response_due, resolution_due=row.resolution_due,
        customer_tags=tuple(row.tags or ()),
    )


def _messages(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[MessageView]:
    m = messages
    rows = conn.execute(
        sa.select(m.c.id, m.c.ticket_id, m.c.direction, m.c.channel, m.c.text, m.c.subject,
                  m.c.sender, m.c.agent_id, m.c.delivery_state, m.c.delivery_error, m.c.created_at)
        .where(where).order_by(m.c.id)
    ).all()
    names: dict[int, list[str]] = {}
    if rows:
        for mid, name in conn.execute(
            sa.select(attachments.c.message_id, attachments.c.filename)
            .where(attachments.c.message_id.in_([r.id for r in rows])).order_by(attachments.c.id)
        ):
            names.setdefault(mid, []).append(name)
    return [MessageView(*row, attachments=tuple(names.get(row.id, ()))) for row in rows]
