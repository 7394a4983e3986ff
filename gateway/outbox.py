"""The outbox: replies stored with their ticket, sent by a job on the ticket's own channel, in order.

A reply is a message row (outbound, pending) and an `outbox.send` job keyed by its ticket, written
in the agent's transaction. The job builds the OutboundMessage from the stored row, hands it to the
channel, and records the provider's receipt in the same transaction that finishes the job. A reply
that cannot be delivered is marked failed and an event tells the agents.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.addresses import Address
from gateway.attachments import AttachmentStore, StoredAttachment
from gateway.channel import Channel
from gateway.db import Database
from gateway.domain import ChannelKind, DeliveryState, Direction, ticket_ref
from gateway.events import event_row
from gateway.errors import AuthError, ChannelError, PermanentError, TransientError
from gateway.ingest import clean_text, column_key
from gateway.jobs import Job, JobQueue
from gateway.messages import OutboundAttachment, OutboundMessage, utcnow
from gateway.metrics import Metrics
from gateway.schema import attachments, events, messages, tickets
from gateway.worker import Handler

log = logging.getLogger("kartabl.outbox")

SEND_JOB = "outbox.send"
#: How many earlier thread keys a reply carries (email References).
_THREAD_KEYS = 20


class Outbox:
    def __init__(self, db: Database, queue: JobQueue, channels: Mapping[ChannelKind, Channel],
                 files: AttachmentStore, metrics: Metrics, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.queue = queue
        self.channels = channels
        self.files = files
        self.metrics = metrics
        self.clock = clock

    @property
    def handler(self) -> Handler:
        return Handler(run=self.send, on_dead=self.failed)

    async def add(self, conn: AsyncConnection, *, ticket_id: int, channel: str, text: str,
                  agent_id: int | None = None, automatic: bool = False, subject: str | None = None,
                  files: Sequence[StoredAttachment] = ()) -> int:
        """Queue a reply inside the caller's transaction; the caller wakes the queue after commit."""
        now = self.clock()
        message_id = (await conn.execute(sa.insert(messages).returning(messages.c.id), {
            "ticket_id": ticket_id, "direction": Direction.OUTBOUND, "channel": channel,
            "agent_id": agent_id, "subject": clean_text(subject, 500), "text": clean_text(text) or "",
            "automatic": automatic, "delivery_state": DeliveryState.PENDING, "created_at": now,
        })).scalar_one()
        if files:
            await conn.execute(sa.insert(attachments), [f.row(message_id, now) for f in files])
        await self.queue.enqueue(conn, SEND_JOB, {"message_id": message_id}, key=f"send:{ticket_id}")
        return message_id

    async def send(self, job: Job) -> None:
        message_id = job.payload["message_id"]
        outbound = await self._build(message_id, job.attempts)
        if outbound is None:
            return  # already sent: a crash came between the provider's receipt and our bookkeeping
        channel = self.channels.get(ChannelKind(outbound.channel))
        if channel is None:
            raise PermanentError(f"channel {outbound.channel} is not enabled in this gateway")
        try:
            receipt = await channel.send(outbound)
        except ChannelError as exc:
            kind = ("auth" if isinstance(exc, AuthError) else
                    "transient" if isinstance(exc, TransientError) else "permanent")
            self.metrics.send_failures.labels(outbound.channel, kind).inc()
            await self._note_error(message_id, job.attempts, f"{kind}: {exc}")
            raise
        now = self.clock()
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(messages)
                .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.PENDING)
                .values(delivery_state=DeliveryState.SENT, provider_id=column_key(receipt.provider_id),
                        thread_key=column_key(receipt.thread_key or receipt.provider_id),
                        sent_at=receipt.accepted_at, delivery_error=None, attempts=job.attempts)
            )
            await conn.execute(sa.insert(events), event_row(
                now, "message.sent", ticket_id=outbound.ticket_id,
                data={"message_id": message_id, "channel": str(outbound.channel),
                      "provider_id": receipt.provider_id, "attempt": job.attempts}))
            await self.queue.complete(job, conn)
        self.metrics.sent.labels(outbound.channel).inc()

    async def failed(self, conn: AsyncConnection, job: Job, error: str) -> None:
        """Mark the reply failed and put the failure on the ticket's record for the agents."""
        message_id = job.payload["message_id"]
        ticket_id = (await conn.execute(
            sa.update(messages)
            .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.PENDING)
            .values(delivery_state=DeliveryState.FAILED, delivery_error=error[:4000])
            .returning(messages.c.ticket_id)
        )).scalar()
        if ticket_id is not None:
            await conn.execute(sa.insert(events), event_row(
                self.clock(), "message.failed", ticket_id=ticket_id,
                data={"message_id": message_id, "error": error[:1000]}))

    async def _build(self, message_id: int, attempt: int) -> OutboundMessage | None:
        m, t = messages, tickets
        async with self.db.read() as conn:
            row = (await conn.execute(
                sa.select(m.c.ticket_id, m.c.text, m.c.subject, m.c.automatic, m.c.delivery_state,
                          t.c.channel, t.c.reply_kind, t.c.reply_to, t.c.subject.label("ticket_subject"),
                          t.c.language)
                .join(t, t.c.id == m.c.ticket_id).where(m.c.id == message_id)
            )).one_or_none()
            if row is None:
                raise PermanentError(f"message {message_id} no longer exists")
            if row.delivery_state in (DeliveryState.SENT, DeliveryState.DELIVERED):
                return None
            history = (await conn.execute(
                sa.select(m.c.direction, m.c.thread_key)
                .where(m.c.ticket_id == row.ticket_id, m.c.channel == row.channel,
                       m.c.thread_key.is_not(None), m.c.id < message_id)
                .order_by(m.c.id.desc()).limit(_THREAD_KEYS)
            )).all()
            files = (await conn.execute(
                sa.select(attachments.c.filename, attachments.c.content_type, attachments.c.sha256)
                .where(attachments.c.message_id == message_id, attachments.c.sha256.is_not(None))
                .order_by(attachments.c.id)
            )).all()
        if row.delivery_state == DeliveryState.FAILED:
            await self._revived(message_id, row.ticket_id)
        last_inbound = next((k for d, k in history if d == Direction.INBOUND), None)
        return OutboundMessage(
            key=f"kartabl-{message_id}", channel=ChannelKind(row.channel),
            to=Address(row.reply_kind, row.reply_to), text=row.text, ticket_id=row.ticket_id,
            ticket_ref=ticket_ref(row.ticket_id), attempt=attempt,
            subject=row.subject or row.ticket_subject, in_reply_to=last_inbound,
            thread_keys=tuple(k for _, k in reversed(history)), automatic=row.automatic,
            language=row.language,
            attachments=tuple(OutboundAttachment(name, ctype, str(self.files.path_for(sha)))
                              for name, ctype, sha in files),
        )

    async def _revived(self, message_id: int, ticket_id: int) -> None:
        """A failed reply's job runs again only when an operator revived it: show it as pending again."""
        async with self.db.write() as conn:
            await conn.execute(
                sa.update(messages)
                .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.FAILED)
                .values(delivery_state=DeliveryState.PENDING))
            await conn.execute(sa.insert(events), event_row(
                self.clock(), "message.retried", ticket_id=ticket_id, data={"message_id": message_id}))

    async def _note_error(self, message_id: int, attempt: int, error: str) -> None:
        """Show the latest failure on the reply while it is being retried (best effort)."""
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    sa.update(messages)
                    .where(messages.c.id == message_id, messages.c.delivery_state == DeliveryState.PENDING)
                    .values(delivery_error=error[:4000], attempts=attempt)
                )
        except Exception as exc:
            log.warning("could not record the send error of message %s: %s", message_id, exc)
