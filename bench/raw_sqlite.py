"""The floor: the same logical work as gateway.ingest, written with the stdlib sqlite3 module in one thread.

Per batch, in one BEGIN IMMEDIATE transaction: look up which provider ids are stored, which sender
addresses are known and the live tickets of known customers (each through a schema index); insert the
customers and addresses of new senders and the tickets of new customers, update the tickets follow-ups
thread onto, insert the messages, their events (customer.created and ticket.created: 1 per message at
a 50/50 mix) and one `ticket.inbound` job per message; one executemany per table.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from gateway.db import SQLITE_BUSY_TIMEOUT_S
from gateway.domain import LIVE_STATUSES
from gateway.ingest import INBOUND_JOB
from gateway.messages import InboundMessage
from gateway.schema import metadata
from gateway.settings import JobSettings

Sender = tuple[str, str]  # (address kind, value)
Thread = tuple[int, str]  # (customer id, channel): a customer's live ticket per channel


def create_schema(path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()


def connect(path: Path) -> sqlite3.Connection:
    """A connection with exactly the pragmas gateway/db.py sets."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    return conn


def stamp(now: dt.datetime) -> str:
    # How SQLAlchemy's SQLite dialect stores a DateTime, so rows are as large as the product's.
    return now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _sender(m: InboundMessage) -> Sender:
    return (str(m.sender.kind), m.sender.value)


def inserted_ids(conn: sqlite3.Connection, count: int) -> list[int]:
    # Under the write lock a rowid table hands out max(rowid)+1 each time: the new ids are contiguous.
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    return list(range(last - count + 1, last + 1))


class _Batch:
    """One transaction's plan and rows, mirroring Ingestor._apply."""

    def __init__(self, conn: sqlite3.Connection, msgs: Sequence[InboundMessage], max_attempts: int) -> None:
        self.conn = conn
        self.msgs = msgs
        self.max_attempts = max_attempts
        self.now = stamp(dt.datetime.now(dt.UTC))
        self.owner: dict[Sender, int] = {}
        self.live: dict[Thread, int] = {}
        self.opened: dict[Thread, InboundMessage] = {}  # new ticket -> the message that opens it
        self.events: list[tuple] = []

    def write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        fresh = self._fresh()
        if fresh:
            self._find_customers(fresh)
            self._create_customers(fresh)
            self._open_tickets(fresh)
            self._touch_tickets(fresh)
            self._store_messages(fresh)
        self.conn.execute("COMMIT")

    def _fresh(self) -> list[InboundMessage]:
        channels = sorted({str(m.channel) for m in self.msgs})
        pids = [m.provider_id for m in self.msgs]
        seen = set(self.conn.execute(
            f"SELECT channel, provider_id FROM messages WHERE channel IN ({_marks(len(channels))})"
            f" AND direction = 'in' AND provider_id IN ({_marks(len(pids))})", [*channels, *pids]))
        fresh = []
        for m in self.msgs:
            if (str(m.channel), m.provider_id) not in seen:
                seen.add((str(m.channel), m.provider_id))
                fresh.append(m)
        return fresh

    def _thread(self, m: InboundMessage) -> Thread:
        return (self.owner[_sender(m)], str(m.channel))

    def _find_customers(self, fresh: list[InboundMessage]) -> None:
        kinds = sorted({s[0] for s in map(_sender, fresh)})
        values = sorted({s[1] for s in map(_sender, fresh)})
        self.owner = {(k, v): cid for k, v, cid in self.conn.execute(
            f"SELECT kind, value, customer_id FROM addresses WHERE kind IN ({_marks(len(kinds))})"
            f" AND value IN ({_marks(len(values))})", [*kinds, *values])}
        ids = sorted(set(self.owner.values()))
        if ids:
            for tid, cid, channel in self.conn.execute(
                    f"SELECT id, customer_id, channel FROM tickets WHERE customer_id IN ({_marks(len(ids))})"
                    f" AND status IN ({_marks(len(LIVE_STATUSES))}) ORDER BY id", [*ids, *LIVE_STATUSES]):
                self.live[(cid, channel)] = tid  # newest wins, as in the product

    def _create_customers(self, fresh: list[InboundMessage]) -> None:
        new = list(dict.fromkeys(s for s in map(_sender, fresh) if s not in self.owner))
        if not new:
            return
        self.conn.executemany("INSERT INTO customers (name, language, tags, created_at) VALUES (?, NULL, '[]', ?)",
                              [(f"Customer {value[:12]}", self.now) for _, value in new])
        for sender, cid in zip(new, inserted_ids(self.conn, len(new))):
            self.owner[sender] = cid
            self.events.append((None, cid, "system", "customer.created", None, None, None,
                                json.dumps({"address": f"{sender[0]}:{sender[1]}"}), self.now))
        self.conn.executemany("INSERT INTO addresses (customer_id, kind, value, created_at) VALUES (?, ?, ?, ?)",
                              [(self.owner[s], s[0], s[1], self.now) for s in new])

    def _open_tickets(self, fresh: list[InboundMessage]) -> None:
        for m in fresh:
            if self._thread(m) not in self.live:
                self.opened.setdefault(self._thread(m), m)
        if not self.opened:
            return
        self.conn.executemany(
            "INSERT INTO tickets (customer_id, subject, status, priority, channel, reply_kind, reply_to, language,"
            " tags, created_at, updated_at, last_inbound_at) VALUES (?, ?, 'new', 'normal', ?, ?, ?, NULL, '[]', ?, ?, ?)",
            [(cid, m.subject, channel, str(m.sender.kind), m.sender.value, self.now, self.now, self.now)
             for (cid, channel), m in self.opened.items()])
        for (cid, channel), tid in zip(self.opened, inserted_ids(self.conn, len(self.opened))):
            self.live[(cid, channel)] = tid
            self.events.append((tid, cid, f"customer:{cid}", "ticket.created", "status", None, "new",
                                json.dumps({"channel": channel}), self.now))

    def _touch_tickets(self, fresh: list[InboundMessage]) -> None:
        touched = sorted({self.live[self._thread(m)] for m in fresh if self._thread(m) not in self.opened})
        if touched:
            self.conn.executemany("UPDATE tickets SET status = status, resolved_at = NULL, updated_at = ?,"
                                  " last_inbound_at = ? WHERE id = ?", [(self.now, self.now, t) for t in touched])

    def _store_messages(self, fresh: list[InboundMessage]) -> None:
        self.conn.executemany(
            "INSERT INTO messages (ticket_id, direction, channel, provider_id, thread_key, in_reply_to, sender,"
            " agent_id, subject, text, automatic, delivery_state, attempts, created_at, received_at, raw)"
            " VALUES (?, 'in', ?, ?, ?, NULL, ?, NULL, ?, ?, 0, 'received', 0, ?, ?, NULL)",
            [(self.live[self._thread(m)], str(m.channel), m.provider_id, m.thread_key or m.provider_id,
              str(m.sender), m.subject, m.text, self.now, stamp(m.received_at)) for m in fresh])
        jobs = []
        for m, mid in zip(fresh, inserted_ids(self.conn, len(fresh))):
            tid = self.live[self._thread(m)]
            payload = {"ticket_id": tid, "message_id": mid, "new_ticket": self.opened.get(self._thread(m)) is m,
                       "reopened": False}
            jobs.append((INBOUND_JOB, f"workflow:{tid}", json.dumps(payload), self.now, self.max_attempts,
                         self.now, self.now))
        self.conn.executemany("INSERT INTO events (ticket_id, customer_id, actor, kind, field, old, new, data,"
                              " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self.events)
        self.conn.executemany("INSERT INTO jobs (kind, key, payload, state, due_at, attempts, max_attempts,"
                              " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?)", jobs)


def run(path: Path, warmup: Sequence[InboundMessage], measured: Sequence[InboundMessage],
        batch_size: int) -> float:
    """Messages/s over `measured`, after writing `warmup` the same way; a fresh file at `path`."""
    create_schema(path)
    conn = connect(path)
    max_attempts = JobSettings().max_attempts
    try:
        for i in range(0, len(warmup), batch_size):
            _Batch(conn, warmup[i:i + batch_size], max_attempts).write()
        start = time.perf_counter()
        for i in range(0, len(measured), batch_size):
            _Batch(conn, measured[i:i + batch_size], max_attempts).write()
        return len(measured) / (time.perf_counter() - start)
    finally:
        conn.close()
