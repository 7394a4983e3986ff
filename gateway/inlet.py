"""The inlet: everything a channel may hand the core, passed to `Channel.start` as its `deliver`.

Calling it ingests one message (returning only after the commit, as `Deliver` promises). A channel
that needs more than that finds it here and nowhere else: delivery reports on what we sent, a
quarantine for payloads it cannot parse, and a small durable state (an IMAP cursor, an update offset).
A channel never touches storage itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db import Database
from gateway.domain import DeliveryState, Direction, ticket_ref
from gateway.events import event_row
from gateway.ingest import Ingestor, column_key
from gateway.messages import DeliveryReport, InboundMessage, IngestResult, utcnow
from gateway.metrics import Metrics
from gateway.outbox import NOTICE_JOB
from gateway.schema import channel_state, events, messages, quarantine

log = logging.getLogger("kartabl.inlet")

#: Delivery states a report may move a message out of: a failure can follow a "sent" or even a
#: "delivered" (a late bounce); a delivery only follows a send.
_REPORT_FROM = {
    True: (DeliveryState.SENT,),
    False: (DeliveryState.SENT, DeliveryState.DELIVERED),
}


class Inlet:
    def __init__(self, db: Database, ingestor: Ingestor, metrics: Metrics,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.ingestor = ingestor
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, message: InboundMessage) -> IngestResult:
        return await self.ingestor.ingest(message)

    def check_ready(self) -> None:
        """Raise DatabaseUnavailable while the database is known to be away. A channel whose provider
        forgets what it hands over (Kavenegar's `sms/receive` marks it read) asks before taking any."""
        if self.db.reach.down:
            raise self.db.reach.unavailable(ConnectionError("known to be away"))

    async def report(self, report: DeliveryReport) -> bool:
        """Record the provider's report on a message we sent; False if no such message was waiting for one."""
        state = DeliveryState.DELIVERED if report.delivered else DeliveryState.FAILED
        values: dict[str, Any] = {"delivery_state": state}
        if report.delivered:
            values["delivered_at"] = report.at
        else:
            values["delivery_error"] = (report.error or "the provider reported a failure")[:4000]
        m = messages

        def work(conn: sa.Connection) -> int | None:
            ticket_id = conn.execute(
                sa.update(m)
                .where(m.c.channel == str(report.channel), m.c.direction == Direction.OUTBOUND,
                       m.c.provider_id == column_key(report.provider_id),
                       m.c.delivery_state.in_(_REPORT_FROM[report.delivered]))
                .values(**values).returning(m.c.ticket_id)
            ).scalar()
            if ticket_id is not None:
                conn.execute(sa.insert(events), event_row(
                    self.clock(), "message.delivered" if report.delivered else "message.failed",
                    ticket_id=ticket_id, actor=f"provider:{report.channel}",
                    data={"provider_id": report.provider_id, "error": report.error}))
                if not report.delivered:  # the agents hear of it where they work (the ticket's topic)
                    self.ingestor.queue.enqueue(conn, NOTICE_JOB, {"ticket_id": ticket_id, "text": (
                        f"{ticket_ref(ticket_id)}: a reply was not delivered: {values['delivery_error'][:500]}")})
            return ticket_id
        ticket_id = await self.db.run_write(work)
        if ticket_id is not None:
            self.metrics.deliveries.labels(str(report.channel), "delivered" if report.delivered else "failed").inc()
        if ticket_id is not None and not report.delivered:
            self.ingestor.queue.wake()
            self.metrics.send_failures.labels(str(report.channel), "reported").inc()
        return ticket_id is not None

    async def alert(self, channel: str, text: str) -> None:
        """Tell the agents something about a whole channel (sending paused, say), where they work."""
        def work(conn: sa.Connection) -> None:
            self.ingestor.queue.enqueue(conn, NOTICE_JOB, {"ticket_id": None, "text": f"{channel}: {text}"})
        await self.db.run_write(work)
        self.ingestor.queue.wake()

    async def awaiting_report(self, channel: str, *, older_than: float, within: float = 3 * 86400,
                              limit: int = 5000) -> list[str]:
        """Provider ids of messages sent on `channel` between `within` and `older_than` seconds ago that
        no delivery report settled yet, oldest first."""
        now = self.clock()
        m = messages
        query = (sa.select(m.c.provider_id)
                 .where(m.c.channel == channel, m.c.direction == Direction.OUTBOUND,
                        m.c.delivery_state == DeliveryState.SENT,
                        m.c.sent_at <= now - dt.timedelta(seconds=older_than),
                        m.c.sent_at > now - dt.timedelta(seconds=within))
                 .order_by(m.c.sent_at).limit(limit))
        async with self.db.read() as conn:
            return [p for p in (await conn.execute(query)).scalars() if p]

    async def quarantine(self, channel: str, raw: bytes, reason: str, source: str | None = None) -> int | None:
        """Keep a payload that cannot become a message, for `kartabl quarantine`; None if already kept."""
        digest = hashlib.sha256(raw).hexdigest()
        row = {"channel": channel, "source": (source or "")[:500] or None, "reason": reason[:4000],
               "sha256": digest, "raw": raw, "created_at": self.clock()}
        statement = self._insert(quarantine).values(row).on_conflict_do_nothing().returning(quarantine.c.id)
        inserted = await self.db.run_write(lambda conn: conn.execute(statement).scalar())
        if inserted is not None:
            log.warning("%s: quarantined a payload that cannot be read (%s), id %s: %s",
                        channel, source or "unknown source", inserted, reason)
        return inserted

    async def load_state(self, name: str) -> Any:
        """A channel's stored state under `name` (JSON), or None."""
        async with self.db.read() as conn:
            return (await conn.execute(
                sa.select(channel_state.c.value).where(channel_state.c.name == name))).scalar()

    async def save_state(self, name: str, value: Any) -> None:
        now = self.clock()
        statement = self._insert(channel_state).values(name=name, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[channel_state.c.name],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at})
        await self.db.run_write(lambda conn: conn.execute(statement))

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.db.is_postgres else sqlite.insert)(table)
