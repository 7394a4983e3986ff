"""The outbox: replies stored with their ticket, sent by a job on the ticket's own channel, in order.

A reply is a message row (outbound, pending) and an `outbox.send` job keyed by its ticket, written
in the agent's transaction. The job builds the OutboundMessage from the stored row, hands it to the
channel, and records the provider's receipt in the same transaction that finishes the job. A reply
that cannot be delivered is marked failed and an event tells the agents.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa

from gateway.addresses import Address
from gateway.attachments import AttachmentStore, StoredAttachment
from gateway.batch import Coalescer
from gateway.channel import Channel
from gateway.db import Database
from gateway.domain import ChannelKind, DeliveryState, Direction, ticket_ref
from gateway.events import event_row
from gateway.errors import AuthError, ChannelError, PermanentError, TransientError
from gateway.ingest import clean_text, column_key
from gateway.jobs import Job, JobQueue, Work
from gateway.messages import OutboundAttachment, OutboundMessage, utcnow
from gateway.metrics import Metrics
from gateway.schema import attachments, events, messages, tickets
from gateway.worker import Handler

log = logging.getLogger("kartabl.outbox")

SEND_JOB = "outbox.send"
#: A line for the agents where they work (workflows.notices handles it).
NOTICE_JOB = "desk.notice"
#: How many earlier thread keys a reply carries (email References).
_THREAD_KEYS = 20


# Built once: a statement run for every reply costs less to compile and to look up in the cache.
_MARK_SENT = (
    sa.update(messages)
    .where(messages.c.id == sa.bindparam("message_id"), messages.c.delivery_state == DeliveryState.PENDING)
    .values(delivery_state=DeliveryState.SENT, provider_id=sa.bindparam("provider_id"),
            thread_key=sa.bindparam("thread_key"), sent_at=sa.bindparam("sent_at"), delivery_error=None,
            attempts=sa.bindparam("attempts"))
)


class Outbox:
    def __init__(self, db: Database, queue: JobQueue, channels: Mapping[ChannelKind, Channel],
                 files: AttachmentStore, metrics: Metrics, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.queue = queue
        self.channels = channels
        self.files = files
        self.metrics = metrics
        self.clock = clock
        # Replies being sent at once are read together: one thread hand-off and three queries in all.
        self._stored = Coalescer(lambda ids: db.run_read(lambda conn: _stored_replies(conn, ids)))

    @property
    def handler(self) -> Handler:
        return Handler(run=self.send, on_dead=self.failed)

    def add(self, conn: sa.Connection, *, ticket_id: int, channel: str, text: str,
            agent_id: int | None = None, automatic: bool = False, subject: str | None = None,
            files: Sequence[StoredAttachment] = (), to: Address | None = None,
            full_answer_on: str | None = None, held: bool = False,
            buttons: Sequence[tuple[str, str]] = ()) -> int:
        """Queue a reply inside the caller's transaction; the caller wakes the queue after commit.

        The reply goes to the ticket's reply address, or to `to` (a copy on another channel of the
        customer's); `full_answer_on` names the channel where a shortened reply's full text went. A
        `held` reply waits for a lead's approval (`release`) and is not queued yet. `buttons` are
        (label, data) quick answers for a channel that shows them (a survey's scores on Telegram).
        """
        now = self.clock()
        raw = {k: v for k, v in (("to", str(to) if to else None), ("full_answer_on", full_answer_on),
                                 ("buttons", [list(b) for b in buttons])) if v}
        message_id = conn.execute(sa.insert(messages).returning(messages.c.id), {
            "ticket_id": ticket_id, "direction": Direction.OUTBOUND, "channel": channel,
            "agent_id": agent_id, "subject": clean_text(subject, 500), "text": clean_text(text) or "",
            "automatic": automatic, "delivery_state": DeliveryState.HELD if held else DeliveryState.PENDING,
            "created_at": now, "raw": raw or None,
        }).scalar_one()
        if files:
            conn.execute(sa.insert(attachments), [f.row(message_id, now) for f in files])
        if not held:
            self.queue.enqueue(conn, SEND_JOB, {"message_id": message_id}, key=f"send:{ticket_id}")
        return message_id

    def release(self, conn: sa.Connection, message_id: int, ticket_id: int) -> None:
        """A held reply, approved: queued now, in the ticket's order of sends."""
        self.queue.enqueue(conn, SEND_JOB, {"message_id": message_id}, key=f"send:{ticket_id}")

    async def send(self, job: Job) -> Work | None:
        """Hand the reply to its channel; returns the bookkeeping the worker commits with the job's end."""
        message_id = job.payload["message_id"]
        outbound = await self._build(message_id, job.attempts)
        if outbound is None:
            return None  # already sent: a crash came between the provider's receipt and our bookkeeping
        channel = self.channels.get(ChannelKind(outbound.channel))
        if channel is None:
            raise PermanentError(f"channel {outbound.channel} is not enabled in this gateway")
        started = time.monotonic()
        try:
            receipt = await channel.send(outbound)
        except ChannelError as exc:
            self.metrics.send_seconds.labels(outbound.channel).observe(time.monotonic() - started)
            kind = ("auth" if isinstance(exc, AuthError) else
                    "transient" if isinstance(exc, TransientError) else "permanent")
            self.metrics.send_failures.labels(outbound.channel, kind).inc()
            await self._note_error(message_id, job.attempts, f"{kind}: {exc}")
            raise
        self.metrics.send_seconds.labels(outbound.channel).observe(time.monotonic() - started)
        self.metrics.sent.labels(outbound.channel).inc()
        sent = {"message_id": message_id, "provider_id": column_key(receipt.provider_id),
                "thread_key": column_key(receipt.thread_key or receipt.provider_id),
                "sent_at": receipt.accepted_at, "attempts": job.attempts}
        event = event_row(self.clock(), "message.sent", ticket_id=outbound.ticket_id,
                          data={"message_id": message_id, "channel": str(outbound.channel),
                                "provider_id": receipt.provider_id, "attempt": job.attempts})

        def record(conn: sa.Connection) -> None:
            conn.execute(_MARK_SENT, sent)
            conn.execute(sa.insert(events), event)
        return record

    def failed(self, conn: sa.Connection, job: Job, error: str) -> None:
        """Mark the reply failed and put the failure on the ticket's record for the agents."""
        message_id = job.payload["message_id"]
        ticket_id = conn.execute(
            sa.update(messages)
            .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.PENDING)
            .values(delivery_state=DeliveryState.FAILED, delivery_error=error[:4000])
            .returning(messages.c.ticket_id)
        ).scalar()
        if ticket_id is not None:
            conn.execute(sa.insert(events), event_row(
                self.clock(), "message.failed", ticket_id=ticket_id,
                data={"message_id": message_id, "error": error[:1000]}))
            # Where the agents work (the Telegram desk), in the same commit: the failure cannot go unsaid.
            self.queue.enqueue(conn, NOTICE_JOB, {
                "ticket_id": ticket_id, "text": f"{ticket_ref(ticket_id)}: a reply could not be delivered: {error[:500]}"})

    async def _build(self, message_id: int, attempt: int) -> OutboundMessage | None:
        found = await self._stored.get(message_id)
        if found is None:
            raise PermanentError(f"message {message_id} no longer exists")
        row, history, files = found.row, found.history, found.files
        if row.delivery_state in (DeliveryState.SENT, DeliveryState.DELIVERED):
            return None
        if row.delivery_state == DeliveryState.FAILED:
            await self._revived(message_id, row.ticket_id)
        last_inbound = next((k for d, k in history if d == Direction.INBOUND), None)
        extra = row.raw or {}
        to = Address.parse(*extra["to"].split(":", 1)) if extra.get("to") else Address(row.reply_kind, row.reply_to)
        return OutboundMessage(
            key=f"kartabl-{message_id}", channel=ChannelKind(row.channel),
            to=to, text=row.text, ticket_id=row.ticket_id, full_answer_on=extra.get("full_answer_on"),
            buttons=tuple((label, data) for label, data in extra.get("buttons", ())),
            ticket_ref=ticket_ref(row.ticket_id), attempt=attempt,
            subject=row.subject or row.ticket_subject, in_reply_to=last_inbound,
            thread_keys=tuple(k for _, k in reversed(history)), automatic=row.automatic,
            language=row.language,
            attachments=tuple(OutboundAttachment(name, ctype, str(self.files.path_for(sha)))
                              for _, name, ctype, sha in files),
        )

    async def _revived(self, message_id: int, ticket_id: int) -> None:
        """A failed reply's job runs again only when an operator revived it: show it as pending again."""
        def work(conn: sa.Connection) -> None:
            conn.execute(
                sa.update(messages)
                .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.FAILED)
                .values(delivery_state=DeliveryState.PENDING))
            conn.execute(sa.insert(events), event_row(
                self.clock(), "message.retried", ticket_id=ticket_id, data={"message_id": message_id}))
        await self.db.run_write(work)

    async def _note_error(self, message_id: int, attempt: int, error: str) -> None:
        """Show the latest failure on the reply while it is being retried (best effort)."""
        stmt = (sa.update(messages)
                .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.PENDING)
                .values(delivery_error=error[:4000], attempts=attempt))
        try:
            await self.db.run_write(lambda conn: conn.execute(stmt))
        except Exception as exc:
            log.warning("could not record the send error of message %s: %s", message_id, exc)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """A reply as stored, with its ticket's reply address, the thread keys before it, and its files."""

    row: sa.Row
    history: list[tuple[str, str]]  # (direction, thread key), newest first
    files: list[sa.Row]


def _stored_replies(conn: sa.Connection, ids: list[int]) -> dict[int, _Stored]:
    """The replies `ids` that still exist, read with three queries however many there are."""
    m, t = messages, tickets
    rows = conn.execute(
        sa.select(m.c.id, m.c.ticket_id, m.c.text, m.c.subject, m.c.automatic, m.c.delivery_state, m.c.raw,
                  m.c.channel, t.c.reply_kind, t.c.reply_to, t.c.subject.label("ticket_subject"), t.c.language)
        .join(t, t.c.id == m.c.ticket_id).where(m.c.id.in_(ids))
    ).all()
    if not rows:
        return {}
    keyed: dict[int, list[sa.Row]] = {}
    for earlier in conn.execute(
        sa.select(m.c.id, m.c.ticket_id, m.c.channel, m.c.direction, m.c.thread_key)
        .where(m.c.ticket_id.in_({r.ticket_id for r in rows}), m.c.thread_key.is_not(None))
        .order_by(m.c.id.desc())
    ):
        keyed.setdefault(earlier.ticket_id, []).append(earlier)
    files: dict[int, list[sa.Row]] = {}
    for f in conn.execute(
        sa.select(attachments.c.message_id, attachments.c.filename, attachments.c.content_type, attachments.c.sha256)
        .where(attachments.c.message_id.in_(ids), attachments.c.sha256.is_not(None)).order_by(attachments.c.id)
    ):
        files.setdefault(f.message_id, []).append(f)
    return {r.id: _Stored(r, [(e.direction, e.thread_key) for e in keyed.get(r.ticket_id, [])
                              if e.id < r.id and e.channel == r.channel][:_THREAD_KEYS], files.get(r.id, []))
            for r in rows}
