"""Ingest: each inbound message stored exactly once, on the right customer and ticket, then confirmed.

One writer task takes every message waiting, plans the batch in memory and writes it with a few
statements in one transaction (in the database's writer thread on SQLite): the database round trip,
not Python, is the cost of a message, so a batch of 200 costs little more than a batch of one. Each
caller of `ingest()` is answered only after the commit that holds its message, so a channel
acknowledges its provider only then.

Per message: drop it if (channel, provider id) is stored; find the customer by any of the sender's
addresses (or create one); thread it onto the ticket it answers (its reply keys, then a quoted ticket
reference of the same customer, then the customer's live ticket on that channel), reopening a resolved
or waiting ticket, or open a new ticket; store message and attachments; record the changes (new
customer, new ticket, status) as events; enqueue the workflow job.

Races between processes (PostgreSQL) end in a unique-key violation or a deadlock on one side, which
rolls back and replays its batch; customer rows are locked before their tickets are read, so two
first messages of one customer never open two tickets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from gateway.addresses import Address
from gateway.attachments import AttachmentStore, StoredAttachment
from gateway.db import Database
from gateway.domain import LIVE_STATUSES, DeliveryState, Direction, Priority, TicketStatus, parse_ticket_ref
from gateway.errors import ShuttingDown, Unavailable
from gateway.events import event_row
from gateway.jobs import JobQueue
from gateway.messages import InboundMessage, IngestResult, utcnow
from gateway.metrics import Metrics
from gateway.schema import addresses, attachments, customers, events, jobs, messages, tickets

log = logging.getLogger("kartabl.ingest")

#: The job every stored inbound message starts: routing, assignment, posting to the agents.
INBOUND_JOB = "ticket.inbound"
_KEY_MAX = 500
_REPLAYS = 6

#: How long after a write the writer still counts as busy: at a steady arrival rate the next
#: message is usually this close behind.
BUSY_TAIL_S = 0.1
_STOP = object()


def column_key(value: str) -> str:
    """A provider id or thread key as stored: long ones (some Message-IDs) become their hash."""
    if len(value) <= _KEY_MAX:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def left_out_note(files: Sequence[StoredAttachment]) -> str:
    """A line for the agents naming each attachment that was not kept, and why; "" when all were."""
    omitted = [f for f in files if f.omitted]
    if not omitted:
        return ""
    names = "; ".join(f"{f.filename} ({_size(f.size)}): {f.omitted}" for f in omitted)
    return f"\n\n[not kept: {names}]"


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 1_048_576:.1f} MB" if size >= 1_048_576 else f"{max(1, round(size / 1024))} KB"


def clean_text(value: str | None, limit: int | None = None) -> str | None:
    """Text any database accepts: no NUL, no lone surrogates; cut to `limit` characters."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit else value


@dataclasses.dataclass(eq=False, slots=True)
class _Item:
    msg: InboundMessage
    files: list[StoredAttachment]
    future: asyncio.Future[IngestResult]
    offered: float

    @property
    def dedupe_key(self) -> tuple[str, str]:
        return (self.msg.channel, column_key(self.msg.provider_id))

    @property
    def reply_keys(self) -> list[str]:
        return [column_key(k) for k in self.msg.in_reply_to if k]


class _Customer:
    __slots__ = ("id", "created_by")

    def __init__(self, id: int | None = None, created_by: _Item | None = None) -> None:
        self.id = id
        self.created_by = created_by


class _Ticket:
    __slots__ = ("id", "customer", "customer_id", "channel", "status", "resolved_at", "created_by", "touched")

    def __init__(self, id: int | None, customer_id: int | None, channel: str, status: str,
                 resolved_at: dt.datetime | None = None, created_by: _Item | None = None) -> None:
        self.id = id
        self.customer_id = customer_id
        self.channel = channel
        self.status = status
        self.resolved_at = resolved_at
        self.created_by = created_by
        self.touched = False


class Ingestor:
    """The one writer of inbound messages in this process."""

    def __init__(self, db: Database, files: AttachmentStore, queue: JobQueue, metrics: Metrics,
                 *, batch_max: int = 500, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.files = files
        self.queue = queue
        self.metrics = metrics
        self.batch_max = batch_max
        self.clock = clock
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._writing_since: float | None = None
        self._wrote_at = 0.0

    def busy(self) -> bool:
        """Messages are arriving: one is waiting or being written, or the last was written a moment ago."""
        return (self._writing_since is not None or not self._inbox.empty()
                or time.monotonic() - self._wrote_at < BUSY_TAIL_S)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kartabl-ingest")

    async def stop(self) -> None:
        """Take no new messages; commit every message already offered; return."""
        self._closed = True
        if self._task is not None:
            self._inbox.put_nowait(_STOP)
            await self._task
            self._task = None

    async def ingest(self, msg: InboundMessage) -> IngestResult:
        """Store `msg` (or find it stored) and return only after the commit.

        Raises ShuttingDown when the gateway stops taking work, Unavailable (DatabaseUnavailable,
        StorageFull) while the database or the attachment disk is away, OSError when an attachment
        cannot be written otherwise, and database errors when the message could not be stored; in
        every such case nothing was confirmed and the channel must not acknowledge the message.
        """
        if self._closed or self._task is None:
            raise ShuttingDown("the gateway is not taking new messages")
        offered = time.monotonic()
        files = await self.files.keep(msg.attachments)
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Item(msg, files, future, offered))
        return await future

    # -- the writer ---------------------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._inbox.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self.batch_max and not self._inbox.empty():
                item = self._inbox.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._writing_since = time.monotonic()
            try:
                await self._commit(batch)
            except Exception as exc:  # never let the writer die; callers learn of the failure
                log.exception("ingest writer failed a batch of %d", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                self._writing_since, self._wrote_at = None, time.monotonic()

    async def _commit(self, batch: list[_Item]) -> None:
        try:
            results = await self._write_with_replay(batch)
        except Unavailable as exc:  # logged once where found; no message of the batch could be stored
            for item in batch:
                self.metrics.ingested.labels(item.msg.channel, "error").inc()
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self.metrics.ingested.labels(batch[0].msg.channel, "error").inc()
                log.error("could not store message %s from %s: %s",
                          batch[0].msg.provider_id, batch[0].msg.channel, exc)
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # Isolate the message that fails so the others are stored.
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        done = time.monotonic()
        self.metrics.ingest_batch.observe(len(batch))
        for item, result in zip(batch, results):
            self.metrics.ingest_latency.labels(item.msg.channel).observe(done - item.offered)
            outcome = "duplicate" if result.duplicate else "new_ticket" if result.new_ticket else "threaded"
            self.metrics.ingested.labels(item.msg.channel, outcome).inc()
            if not item.future.done():
                item.future.set_result(result)
        if any(not r.duplicate for r in results):
            self.queue.wake()

    async def _write_with_replay(self, batch: list[_Item]) -> list[IngestResult]:
        for attempt in range(1, _REPLAYS + 1):
            try:
                return await self.db.run_write(lambda conn: self._apply(conn, batch), first=True)
            except (sa_exc.IntegrityError, sa_exc.OperationalError, sa_exc.DBAPIError) as exc:
                if attempt == _REPLAYS or not _is_race(exc):
                    raise
                log.debug("ingest batch lost a race (%s), replaying", type(exc.orig).__name__)
                await asyncio.sleep(random.uniform(0.001, 0.02) * attempt)
        raise AssertionError("unreachable")

    # -- one batch, in one transaction ---------------------------------------------------------

    def _apply(self, conn: sa.Connection, batch: Sequence[_Item]) -> list[IngestResult]:
        now = self.clock()
        existing = self._stored(conn, batch)
        fresh: list[_Item] = []
        first_of: dict[tuple[str, str], _Item] = {}
        for item in batch:
            if item.dedupe_key not in existing and item.dedupe_key not in first_of:
                first_of[item.dedupe_key] = item
                fresh.append(item)

        owners, events_rows = self._customers(conn, fresh, now)
        placed, reopened = self._tickets(conn, fresh, owners, now, events_rows)
        message_ids = self._messages(conn, fresh, placed, now)

        attachment_rows, job_rows = [], []
        for item in fresh:
            mid, ticket = message_ids[item], placed[item]
            attachment_rows += [f.row(mid, now) for f in item.files]
            job_rows.append(self.queue.row(
                INBOUND_JOB,
                {"ticket_id": ticket.id, "message_id": mid, "new_ticket": ticket.created_by is item,
                 "reopened": item in reopened},
                key=f"workflow:{ticket.id}", now=now))
        self.db.bulk_insert(conn, attachments, attachment_rows)
        self.db.bulk_insert(conn, events, events_rows)
        self.db.bulk_insert(conn, jobs, job_rows)

        results = []
        for item in batch:
            if item in message_ids:
                ticket, owner = placed[item], owners[item]
                results.append(IngestResult(
                    message_ids[item], ticket.id, owner.id, new_ticket=ticket.created_by is item,
                    new_customer=owner.created_by is item, reopened=item in reopened))
            elif item.dedupe_key in existing:
                results.append(IngestResult(*existing[item.dedupe_key], duplicate=True))
            else:
                first = first_of[item.dedupe_key]
                results.append(IngestResult(message_ids[first], placed[first].id, owners[first].id,
                                            duplicate=True))
        return results

    def _stored(self, conn: sa.Connection, batch: Sequence[_Item]) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(channel, provider id) -> (message, ticket, customer) of messages already stored."""
        channels = {item.dedupe_key[0] for item in batch}
        ids = {item.dedupe_key[1] for item in batch}
        # Spelled so the unique index (channel, direction, provider_id) serves it.
        rows = conn.execute(
            sa.select(messages.c.channel, messages.c.provider_id, messages.c.id, messages.c.ticket_id,
                      tickets.c.customer_id)
            .join(tickets, tickets.c.id == messages.c.ticket_id)
            .where(messages.c.channel.in_(channels), messages.c.direction == Direction.INBOUND,
                   messages.c.provider_id.in_(ids))
        )
        return {(ch, pid): (mid, tid, cid) for ch, pid, mid, tid, cid in rows}

    def _customers(self, conn: sa.Connection, fresh: Sequence[_Item], now: dt.datetime):
        """The customer of each message, creating customers and linking new addresses."""
        wanted = {a for item in fresh for a in (item.msg.sender, *item.msg.also_known_as, *item.msg.claimed)}
        known, by_id = _owners_of(conn, wanted)
        if self.db.is_postgres and by_id:
            # Serialize with other processes ingesting for the same customers (ticket threading).
            lock = (sa.select(customers.c.merged_into).where(customers.c.id.in_(sorted(by_id)))
                    .order_by(customers.c.id).with_for_update())
            if any(conn.execute(lock).scalars()):
                # One was merged into another while we looked: its addresses moved. Look again, and
                # lock the survivors (a merge locks both customers, so this finds the merge whole).
                known, by_id = _owners_of(conn, wanted)
                conn.execute(sa.select(customers.c.id).where(customers.c.id.in_(sorted(by_id)))
                             .order_by(customers.c.id).with_for_update())

        owners: dict[_Item, _Customer] = {}
        created: list[tuple[_Customer, _Item]] = []
        links: list[tuple[Address, _Customer]] = []
        for item in fresh:
            aliases = (item.msg.sender, *item.msg.also_known_as)
            owner = next((known[a] for a in aliases if a in known), None)
            if owner is None:
                owner = _Customer(created_by=item)
                created.append((owner, item))
            owners[item] = owner
            for address in (*aliases, *item.msg.claimed):
                if address not in known:
                    known[address] = owner
                    links.append((address, owner))

        if created:
            new_ids = self.db.insert_many(conn, customers, [
                {"name": clean_text(item.msg.sender_name, 200), "language": clean_text(item.msg.language, 16),
                 "created_at": now} for _, item in created
            ])
            for (owner, _), new_id in zip(created, new_ids):
                owner.id = new_id
        event_rows = [
            event_row(now, "customer.created", customer_id=owner.id, data={"address": str(item.msg.sender)})
            for owner, item in created
        ]
        if links:
            self.db.bulk_insert(conn, addresses, [
                {"customer_id": owner.id, "kind": a.kind, "value": a.value, "created_at": now}
                for a, owner in links
            ])
            event_rows += [
                event_row(now, "customer.address_added", customer_id=owner.id, field="address", new=str(a))
                for a, owner in links if owner.created_by is None
            ]
        return owners, event_rows

    def _tickets(self, conn: sa.Connection, fresh: Sequence[_Item], owners: dict[_Item, _Customer],
                       now: dt.datetime, event_rows: list[dict[str, Any]]):
        """The ticket of each message: threaded, reopened, or new."""
        reply_keys = {k for item in fresh for k in item.reply_keys}
        threads: dict[tuple[str, str], int] = {}
        if reply_keys:
            rows = conn.execute(
                sa.select(messages.c.channel, messages.c.thread_key, messages.c.ticket_id)
                .where(messages.c.channel.in_({str(item.msg.channel) for item in fresh}),
                       messages.c.thread_key.in_(reply_keys))
            )
            threads = {(ch, key): tid for ch, key, tid in rows}
        refs = {item: parse_ticket_ref(item.msg.ticket_ref) for item in fresh if item.msg.ticket_ref}
        wanted_ids = set(threads.values()) | {r for r in refs.values() if r}
        customer_ids = {o.id for o in owners.values() if o.created_by is None}

        known: dict[int, _Ticket] = {}
        live: dict[tuple[int, str], _Ticket] = {}
        if wanted_ids or customer_ids:
            query = (
                sa.select(tickets.c.id, tickets.c.customer_id, tickets.c.channel, tickets.c.status,
                          tickets.c.resolved_at)
                .where(sa.or_(
                    tickets.c.id.in_(wanted_ids),
                    sa.and_(tickets.c.customer_id.in_(customer_ids), tickets.c.status.in_(LIVE_STATUSES)),
                ))
                .order_by(tickets.c.id)
            )
            if self.db.is_postgres:
                query = query.with_for_update()
            for row in conn.execute(query):
                ticket = _Ticket(*row)
                known[ticket.id] = ticket
                if ticket.status in LIVE_STATUSES:
                    live[(ticket.customer_id, ticket.channel)] = ticket  # newest wins (ordered by id)

        placed: dict[_Item, _Ticket] = {}
        reopened: set[_Item] = set()
        created: list[tuple[_Ticket, _Item]] = []
        live_new: dict[tuple[int, str], _Ticket] = {}
        for item in fresh:
            owner, channel = owners[item], str(item.msg.channel)
            ticket = self._thread(item, owner, threads, refs, known)
            if ticket is None:
                ticket = live.get((owner.id, channel)) if owner.created_by is None else None
                ticket = ticket or live_new.get((id(owner), channel))
            if ticket is None:
                ticket = _Ticket(None, None, channel, TicketStatus.NEW, created_by=item)
                ticket.customer = owner
                live_new[(id(owner), channel)] = ticket
                created.append((ticket, item))
            elif ticket.status in (TicketStatus.RESOLVED, TicketStatus.WAITING):
                if ticket.status == TicketStatus.RESOLVED:
                    reopened.add(item)
                event_rows.append(event_row(now, "ticket.status", ticket_id=ticket.id, customer_id=owner.id, actor=f"customer:{owner.id}",
                                         field="status", old=ticket.status, new=TicketStatus.OPEN))
                ticket.status, ticket.resolved_at = TicketStatus.OPEN, None
            if ticket.created_by is None:
                ticket.touched = True
            placed[item] = ticket

        if created:
            new_ids = self.db.insert_many(
                conn, tickets, [_ticket_row(item, t.customer.id, now) for t, item in created])
            for (ticket, _), new_id in zip(created, new_ids):
                ticket.id, ticket.customer_id = new_id, ticket.customer.id
                event_rows.append(event_row(now, "ticket.created", ticket_id=new_id, customer_id=ticket.customer_id,
                                         actor=f"customer:{ticket.customer_id}", field="status",
                                         new=TicketStatus.NEW, data={"channel": ticket.channel}))
        touched = [t for t in known.values() if t.touched]
        if touched:
            conn.execute(
                sa.update(tickets).where(tickets.c.id == sa.bindparam("b_id")).values(
                    status=sa.bindparam("b_status"), resolved_at=sa.bindparam("b_resolved_at"),
                    updated_at=now, last_inbound_at=now),
                [{"b_id": t.id, "b_status": t.status, "b_resolved_at": t.resolved_at} for t in touched],
            )
        return placed, reopened

    @staticmethod
    def _thread(item: _Item, owner: _Customer, threads: dict[tuple[str, str], int],
                refs: dict[_Item, int | None], known: dict[int, _Ticket]) -> _Ticket | None:
        """The ticket `item` explicitly answers, if it is not closed."""
        for key in item.reply_keys:
            ticket = known.get(threads.get((str(item.msg.channel), key), -1))
            if ticket is not None and ticket.status != TicketStatus.CLOSED:
                return ticket
        ref = refs.get(item)
        ticket = known.get(ref) if ref else None
        # A quoted reference is guessable: it threads only onto the same customer's ticket.
        if ticket is not None and ticket.customer_id == owner.id and ticket.status != TicketStatus.CLOSED:
            return ticket
        return None

    def _messages(self, conn: sa.Connection, fresh: Sequence[_Item], placed: dict[_Item, _Ticket],
                        now: dt.datetime) -> dict[_Item, int]:
        if not fresh:
            return {}
        rows = []
        for item in fresh:
            msg = item.msg
            rows.append({
                "ticket_id": placed[item].id, "direction": Direction.INBOUND, "channel": msg.channel,
                "provider_id": item.dedupe_key[1],
                "thread_key": column_key(msg.thread_key or msg.provider_id),
                "in_reply_to": item.reply_keys[0] if item.reply_keys else None,
                "sender": str(msg.sender), "agent_id": None,
                "subject": clean_text(msg.subject, 500),
                "text": clean_text(msg.text + left_out_note(item.files)) or "",
                "automatic": msg.automatic, "delivery_state": DeliveryState.RECEIVED,
                "created_at": now, "received_at": msg.received_at, "raw": dict(msg.raw) or None,
            })
        return dict(zip(fresh, self.db.insert_many(conn, messages, rows)))


def _ticket_row(item: _Item, customer_id: int, now: dt.datetime) -> dict[str, Any]:
    msg = item.msg
    return {
        "customer_id": customer_id, "subject": clean_text(msg.subject or _subject_from(msg.text), 500),
        "status": TicketStatus.NEW, "priority": Priority.NORMAL, "channel": msg.channel,
        "reply_kind": msg.sender.kind, "reply_to": msg.sender.value, "language": clean_text(msg.language, 16),
        "created_at": now, "updated_at": now, "last_inbound_at": now,
    }


def _subject_from(text: str) -> str | None:
    """The first line of a message without a subject (SMS, Telegram), shortened for the ticket list."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return (line[:77] + "…") if len(line) > 80 else (line or None)


def _is_race(exc: sa_exc.DBAPIError) -> bool:
    """A conflict with a concurrent writer, which a replay of the batch resolves."""
    if isinstance(exc, sa_exc.IntegrityError):
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01"):  # serialization failure, deadlock
        return True
    return "database is locked" in str(orig)


def _owners_of(conn: sa.Connection, wanted: set[Address]) -> tuple[dict[Address, _Customer], dict[int, _Customer]]:
    """The known customer of each wanted address, and those customers by id."""
    known: dict[Address, _Customer] = {}
    by_id: dict[int, _Customer] = {}
    if wanted:
        rows = conn.execute(
            sa.select(addresses.c.kind, addresses.c.value, addresses.c.customer_id)
            .where(addresses.c.kind.in_({a.kind for a in wanted}), addresses.c.value.in_({a.value for a in wanted}))
        )
        for kind, value, customer_id in rows:
            address = Address(kind, value)
            if address in wanted:
                known[address] = by_id.setdefault(customer_id, _Customer(customer_id))
    return known, by_id
