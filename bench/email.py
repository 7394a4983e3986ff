"""Email benchmark: the real gateway reading a Dovecot mailbox by IMAP IDLE and answering through SMTP.

One gateway (`gateway.compose.build_runtime`, the email channel only, SQLite in a temp dir, HTTP off,
jobs and SMTP pool at the product's defaults) reads a private Dovecot 2.3 (tests/servers/dovecot.py)
and sends to an aiosmtpd sink in a process of its own (`python -m tests.servers.smtp_sink`), so the
sink never competes for our event loop. The figures run in the order 2, 1, 3 on that one gateway: the
push latency is measured on a mailbox that already holds the drained mail, and the replies answer the
tickets the drain opened. Figures, each printed with its target and PASS/MISS:

1. Push latency: messages land one at a time, open loop, a random 0.2-1 s apart. Each runs from the
   moment `Dovecot.deliver()` renamed it into Maildir/new (the call returns right after the rename)
   to the moment the gateway's inlet call for it returned, which the inlet promises happens only
   after the message's transaction committed. aioimaplib's debug log, on for this figure only, shows
   when the gateway's connection was told (`* N EXISTS`): Dovecot's part of the latency, and ours.
                                                                                        [p95 <= 1 s]
2. Draining a full mailbox: the mail is put into the Maildir before the gateway starts (Dovecot has
   not indexed it yet, as after a plain-Maildir MDA); timed from `runtime.start()` until every
   message is committed and flagged \\Seen on the server. The channel saves its IMAP cursor only after
   the server confirmed the flags, so the cursor reaching the last UID marks that moment; the flags
   and the rows are counted again afterwards. Printed with `parse_email` alone on the same mail, in
   one thread, before any server started: the most the channel's parse step allows.
                                                                                 [>= 1,000 emails/s]
3. Sending replies: the gateway is stopped, one agent reply per ticket is queued with
   `runtime.tickets.reply()` by AGENTS concurrent callers (the outbox after an SMTP outage, or a
   restart), and a new gateway is started on it; timed from `runtime.start()` until the last reply
   is marked sent (the transaction that records the SMTP server's 250 and ends the job committed).
   Then as many again while it runs, agents queueing and the outbox sending at once, timed from the
   first queued to the last sent (printed, no target). The sink's count and the database's
   `delivery_state = 'sent'` rows are checked afterwards. Printed with composing a reply
   (`build_email`, which returns the bytes) alone, in one thread.                       [>= 800/s]

Figures 2 and 3 also say how many SQLite write transactions ran and how long each waited for the
write lock (BEGIN IMMEDIATE), from SQLAlchemy's statement events on every engine of the process.
The mail comes from bench/email_workload.py: Persian and English, plain text and HTML alternatives,
a few attachments, new customers and follow-ups, some answering earlier mail by In-Reply-To.

Usage: python bench/email.py [--quick] [--json]
--quick shrinks every count for a smoke run (its figures are not comparable with the targets).
Exit status: 0 every target met, 1 a target missed, 2 the benchmark could not run.
"""

from __future__ import annotations

import os
import sys

# `python bench/email.py` puts bench/ first on sys.path, where this very file would stand in for the
# standard library's `email` package. The repository root goes there instead; helpers are `bench.*`.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy import Engine, event  # noqa: E402

from bench.email_workload import SUPPORT_ADDRESS, inbox, message_id  # noqa: E402
from bench.harness import Latencies, fsync_commit_ms, migrate, thread_handoff_us  # noqa: E402
from bench.ingest import Figure, log, publish  # noqa: E402
from channels.email.compose import build_email  # noqa: E402
from channels.email.parse import parse_email  # noqa: E402
from channels.email.settings import EmailSettings  # noqa: E402
from gateway.addresses import Address  # noqa: E402
from gateway.compose import build_runtime  # noqa: E402
from gateway.domain import ChannelKind, DeliveryState, Direction, JobState, ticket_ref  # noqa: E402
from gateway.inlet import Inlet  # noqa: E402
from gateway.jobs import Job, Work  # noqa: E402
from gateway.messages import InboundMessage, IngestResult, OutboundMessage  # noqa: E402
from gateway.outbox import SEND_JOB  # noqa: E402
from gateway.runtime import Runtime  # noqa: E402
from gateway.schema import messages, tickets  # noqa: E402
from gateway.settings import (  # noqa: E402
    AttachmentSettings, DatabaseSettings, HttpSettings, Secret, Settings, WorkflowSettings,
)
from tests.servers.dovecot import DOVECOT, NOT_INSTALLED, Dovecot, DovecotError  # noqa: E402

ROOT = Path(_BENCH).parent
#: Dovecot 2.3 gathers mailbox changes for this long before it tells IDLE clients (NOTIFY_DELAY_MSECS).
DOVECOT_NOTIFY_DELAY_MS = 500
#: Callers queueing replies at once: agents answering from their desks.
AGENTS = 8
#: Emails parsed, and replies composed, alone for the reference lines.
SAMPLE = 500
_REPLY = {
    "fa": "سلام، وقت بخیر. سفارش شما بررسی شد و امروز با پست پیشتاز ارسال می‌شود؛ کد رهگیری تا عصر پیامک "
          "خواهد شد. اگر تا سه روز کاری به دستتان نرسید همین ایمیل را پاسخ دهید.\n\nبا احترام،\nپشتیبانی فروشگاه",
    "en": "Hello, thanks for writing. We checked your order: it ships today by express post and you will get "
          "the tracking number by text this evening. If it has not arrived in three working days, just reply "
          "to this email.\n\nKind regards,\nCustomer support",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    pushes: int = 100
    push_gap: tuple[float, float] = (0.2, 1.0)  # seconds between two arrivals, uniform
    drained: int = 2_000
    replies: int = 1_000


FULL = Sizes()
QUICK = Sizes(pushes=30, drained=500, replies=300)


class BenchError(Exception):
    """The benchmark could not measure a figure (a server did not start, a wait ran out)."""


# -- what the gateway did, and when ---------------------------------------------------------------


class Milestones:
    """When the gateway reached each point measured here, noted by thin wrappers, without polling.

    `committed`: provider id -> time.perf_counter() when the inlet call for it returned (after its
    commit). `cursor_uid`: the highest IMAP UID the channel has saved as handled, which it does only
    after the server confirmed those messages' \\Seen flags. `sent`: message id -> when the
    transaction that marks the reply sent and ends its job committed.
    """

    def __init__(self) -> None:
        self.committed: dict[str, float] = {}
        self.cursor_uid = 0
        self.cursor_at = 0.0
        self.sent: dict[int, float] = {}
        self._news = asyncio.Condition()

    def install(self, runtime: Runtime) -> None:
        """Wrap the runtime's inlet and its send handler; before `runtime.start()`."""
        runtime.inlet = _TimedInlet(runtime, self)
        complete = runtime.queue.complete

        async def timed_complete(job: Job, also: Work | None = None) -> bool:
            # A reply counts as sent once the transaction recording the SMTP server's 250 committed.
            finished = await complete(job, also)
            if job.kind == SEND_JOB:
                self.sent.setdefault(job.payload["message_id"], time.perf_counter())
                await self.notify()
            return finished

        runtime.queue.complete = timed_complete  # type: ignore[method-assign]

    async def until(self, done: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
        """Wait until `done()` holds; BenchError saying `what()` was reached after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout), self._news:
                await self._news.wait_for(done)
        except TimeoutError:
            raise BenchError(f"timed out after {timeout:.0f}s: {what()}") from None

    async def notify(self) -> None:
        async with self._news:
            self._news.notify_all()


class _TimedInlet(Inlet):
    def __init__(self, runtime: Runtime, milestones: Milestones) -> None:
        super().__init__(runtime.db, runtime.ingestor, runtime.metrics, runtime.clock)
        self.milestones = milestones

    async def __call__(self, message: InboundMessage) -> IngestResult:
        result = await super().__call__(message)
        self.milestones.committed.setdefault(message.provider_id, time.perf_counter())
        await self.milestones.notify()
        return result

    async def save_state(self, name: str, value: Any) -> None:
        await super().save_state(name, value)
        if isinstance(value, dict) and value.get("last_uid", 0) > self.milestones.cursor_uid:
            self.milestones.cursor_uid, self.milestones.cursor_at = value["last_uid"], time.perf_counter()
            await self.milestones.notify()


class Announcements(logging.Handler):
    """When the gateway's own IMAP connection was told of each new message (`* N EXISTS`).

    aioimaplib logs every chunk it receives at DEBUG level; with that log on during figure 1 only (a
    few short lines a second), this handler notes when an announcement reached the gateway's
    connection. A second client idling on the folder cannot stand in for it: each Dovecot session
    runs its own notify timer, and in trials a second session heard of new mail at other times (p50
    ~270 ms after the rename where the gateway's heard at ~500 ms). `seen` maps a message's sequence
    number to the time.perf_counter() of the first EXISTS that counted it (one EXISTS may announce
    two quick arrivals).
    """

    LOGGER = "aioimaplib.aioimaplib"

    def __init__(self, known: int) -> None:
        super().__init__(logging.DEBUG)
        self.highest = known  # messages in the folder before the first announcement awaited
        self.seen: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.perf_counter()
        for found in re.finditer(r"\* (\d+) EXISTS", record.getMessage()):
            count = int(found.group(1))
            self.seen.update({seq: now for seq in range(self.highest + 1, count + 1)})
            self.highest = max(self.highest, count)

    @contextlib.contextmanager
    def listening(self) -> Iterator[Announcements]:
        logger = logging.getLogger(self.LOGGER)
        saved = logger.level, logger.propagate
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # these lines are for this handler, not for stderr
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]


class WriteLock:
    """SQLite write transactions begun (BEGIN IMMEDIATE) and how long each waited for the write lock.

    Listens on the Engine class, so both engines count: the writer thread's (blocking pysqlite, where
    `Database.run_write` groups the writes queued meanwhile into one transaction) and the async one
    (aiosqlite) that `Database.write()` blocks still use.
    A wait runs from the statement's start to its return as the caller sees it: SQLite's busy handler
    sleeping until the lock is free, plus, on aiosqlite, the hand-off to its thread and back.
    """

    _KEY = "kartabl_bench_begin"

    def __init__(self) -> None:
        self.waits: dict[str, list[float]] = {"writer thread": [], "aiosqlite": []}

    def _before(self, conn: sa.Connection, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            conn.info[self._KEY] = time.perf_counter()

    def _after(self, conn: sa.Connection, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and self._KEY in conn.info:
            side = "aiosqlite" if conn.dialect.is_async else "writer thread"
            self.waits[side].append(time.perf_counter() - conn.info.pop(self._KEY))

    @contextlib.contextmanager
    def watching(self) -> Iterator[WriteLock]:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            event.remove(Engine, "before_cursor_execute", self._before)
            event.remove(Engine, "after_cursor_execute", self._after)

    @property
    def count(self) -> int:
        return sum(map(len, self.waits.values()))

    def describe(self) -> str:
        parts = []
        for side, waits in self.waits.items():
            if waits:
                w = Latencies(waits, 0.0)
                parts.append(f"{side} {len(waits):,}, waited p50 {w.pct(50) * 1000:.1f} ms, p95"
                             f" {w.pct(95) * 1000:.0f} ms, max {w.max * 1000:,.0f} ms ({sum(waits):.1f}s in all)")
        return "SQLite write transactions and their wait for the write lock: " + "; ".join(parts or ["none"])


# -- the servers ----------------------------------------------------------------------------------


class SinkProcess:
    """tests/servers/smtp_sink.py in its own process: accepts everything, says how many at the end."""

    def __init__(self) -> None:
        self.host, self.port = "", 0
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.servers.smtp_sink", "--port", "0", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE)
        try:
            line = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode()
        except TimeoutError:
            line = ""
        found = re.match(r"listening on ([\d.]+):(\d+)", line)
        if found is None:
            raise BenchError(f"the SMTP sink did not start (it said {line!r})")
        self.host, self.port = found.group(1), int(found.group(2))

    async def stop(self) -> int | None:
        """Stop the sink; the number of messages it accepted, None if it did not say."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            said = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
        except TimeoutError:
            process.kill()
            said = ""
        await process.wait()
        found = re.search(r"received (\d+)", said)
        return int(found.group(1)) if found else None


def gateway_settings(workdir: Path, dovecot: Dovecot, sink: SinkProcess) -> Settings:
    """The real gateway with the email channel only; jobs and SMTP pool at the product's defaults."""
    channel = EmailSettings(
        enabled=True, address=SUPPORT_ADDRESS, imap_host="127.0.0.1", imap_port=dovecot.port,
        imap_security="none", imap_user=dovecot.user, imap_password=Secret(dovecot.password),
        smtp_host=sink.host, smtp_port=sink.port, smtp_security="none", acknowledge=False)
    return Settings(workflows=WorkflowSettings(file=""), database=DatabaseSettings(url=f"sqlite+aiosqlite:///{workdir / 'kartabl.db'}"),
                    http=HttpSettings(enabled=False), attachments=AttachmentSettings(dir=workdir / "files"),
                    channels={"email": channel})


def _metric(runtime: Runtime, name: str, **labels: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def _mean(runtime: Runtime, histogram: str, **labels: str) -> float:
    return _metric(runtime, f"{histogram}_sum", **labels) / max(1.0, _metric(runtime, f"{histogram}_count", **labels))


async def _count(runtime: Runtime, *where: sa.ColumnElement[bool]) -> int:
    async with runtime.db.read() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(messages).where(*where))).scalar_one()


async def settle(runtime: Runtime, timeout: float = 120) -> float:
    """Wait until no job is due or running (the workflow jobs of the stored mail; SLA timers due days
    later stay pending); the seconds it took."""
    began = time.perf_counter()
    while (await runtime.queue.stats()).due or await runtime.queue.list(JobState.RUNNING, limit=1):
        if time.perf_counter() - began > timeout:
            raise BenchError(f"jobs were still due or running {timeout:.0f}s after the drain")
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


# -- figure 1 -----------------------------------------------------------------------------------------


async def push(runtime: Runtime, marks: Milestones, dovecot: Dovecot, mail: list[bytes], known: int,
               gap: tuple[float, float]) -> list[Figure]:
    """Deliver `mail` one by one into a folder already holding `known` messages."""
    rng = random.Random(7)
    landed: dict[str, float] = {}
    with Announcements(known).listening() as told:
        due = time.perf_counter()
        for raw in mail:  # open loop: an arrival never waits for the one before it to be stored
            due += rng.uniform(*gap)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            dovecot.deliver(raw)  # the rename into new/ is its last step: this is the landing time
            landed[message_id(raw)] = time.perf_counter()
        await marks.until(lambda: landed.keys() <= marks.committed.keys(), 30,
                          lambda: f"{len(landed.keys() & marks.committed.keys())} of {len(landed)} committed")
    ids = [message_id(raw) for raw in mail]
    total = Latencies([marks.committed[pid] - landed[pid] for pid in ids], 0.0)
    pairs = [(pid, told.seen[known + n + 1]) for n, pid in enumerate(ids) if known + n + 1 in told.seen]
    dovecot_part = Latencies([at - landed[pid] for pid, at in pairs], 0.0)
    ours = Latencies([marks.committed[pid] - at for pid, at in pairs], 0.0)
    p95 = total.pct(95) * 1000
    fig = Figure("1. Push: landed in Maildir -> committed, p95", p95, "ms", "<= 1,000 ms", p95 <= 1_000)
    fig.notes += [
        f"{len(ids)} messages, one every {gap[0]:.1f}-{gap[1]:.1f} s (uniform, open loop);"
        f" p50 {total.pct(50) * 1000:.0f} ms, p95 {p95:.0f} ms, max {total.max * 1000:.0f} ms;"
        f" the channel counted {runtime.channels[ChannelKind.EMAIL].mailbox.pushes} IDLE pushes",
        f"Dovecot itself waits ~{DOVECOT_NOTIFY_DELAY_MS} ms after a change before telling an IDLE client:"
        f" the gateway's connection was told of {len(pairs)} of the messages p50"
        f" {dovecot_part.pct(50) * 1000:.0f} ms, max {dovecot_part.max * 1000:.0f} ms after they landed",
        f"from that announcement to our commit (IDLE DONE, UID SEARCH, two UID FETCHes, parse, ingest):"
        f" p50 {ours.pct(50) * 1000:.0f} ms, p95 {ours.pct(95) * 1000:.0f} ms, max {ours.max * 1000:.0f} ms",
    ]
    extra = [Figure(f"   {name}", value * 1000, "ms", "") for name, value in
             (("p50", total.pct(50)), ("max", total.max), ("announced to the gateway, p50", dovecot_part.pct(50)),
              ("announcement -> commit, p50", ours.pct(50)))]
    return [fig, *extra]


# -- figure 2 -----------------------------------------------------------------------------------------


async def drain(runtime: Runtime, marks: Milestones, dovecot: Dovecot, mail: list[bytes]) -> list[Figure]:
    """Start the gateway on a mailbox holding `mail` (UIDs 1..n) and wait until all of it is handled."""
    count = len(mail)
    with WriteLock().watching() as lock:
        started = time.perf_counter()
        await runtime.start()
        await marks.until(lambda: len(marks.committed) >= count and marks.cursor_uid >= count, 10 + count / 50,
                          lambda: f"{len(marks.committed):,} of {count:,} committed, cursor at UID {marks.cursor_uid}")
    commits = sorted(marks.committed.values())
    ended = max(commits[-1], marks.cursor_at)
    rate = count / (ended - started)
    fig = Figure(f"2. Drain a {count:,}-message mailbox", rate, "emails/s", ">= 1,000/s", rate >= 1_000)

    flags = await asyncio.to_thread(dovecot.messages)
    seen = sum("\\Seen" in f for f in flags.values())
    stored = await _count(runtime, messages.c.direction == Direction.INBOUND)
    fig.passed = fig.passed and seen == count and stored == count
    first_batch = sum(1 for t in commits if t - commits[0] < 0.001)
    batches = _metric(runtime, "kartabl_ingest_batch_size_count")
    outcomes = {o: int(_metric(runtime, "kartabl_ingest_messages_total", channel="email", outcome=o))
                for o in ("new_ticket", "threaded", "duplicate", "error")}
    fig.notes += [
        f"{count:,} emails ({sum(map(len, mail)) / 2**20:.1f} MB, median {statistics.median(map(len, mail)) / 1024:.1f}"
        f" KB) committed and \\Seen {ended - started:.2f}s after runtime.start(); first commit after"
        f" {(commits[0] - started) * 1000:,.0f} ms, then {(count - first_batch) / (ended - commits[0]):,.0f}"
        f" emails/s; last commit to cursor saved {(marks.cursor_at - commits[-1]) * 1000:.0f} ms",
        f"checked afterwards: {seen:,} of {count:,} flagged \\Seen on the server, {stored:,} inbound rows in"
        " messages; " + ", ".join(f"{k} {v:,}" for k, v in outcomes.items()),
        f"{runtime.channels[ChannelKind.EMAIL].parsers.in_processes:,} of the emails parsed in the"
        f" {runtime.channels[ChannelKind.EMAIL].settings.parse_workers} parser processes (default), the rest"
        " in a thread while they started;"
        f" IMAP fetch batch {runtime.channels[ChannelKind.EMAIL].settings.fetch_batch} (default);"
        f" {batches:,.0f} ingest transactions of mean {count / max(1, batches):.0f} messages;"
        f" ingest() call to commit mean {_mean(runtime, 'kartabl_ingest_commit_seconds') * 1000:.0f} ms",
        lock.describe(),
    ]
    return [fig, Figure("   time to first commit", (commits[0] - started) * 1000, "ms", "")]


# -- figure 3 -----------------------------------------------------------------------------------------


async def send(settings: Settings, count: int) -> tuple[list[Figure], set[int]]:
    """Queue `count` replies on a stopped gateway, start it, and time it sending them all; then the same
    number again while it runs, agents queueing and the outbox sending at once."""
    runtime = build_runtime(settings)
    marks = Milestones()
    marks.install(runtime)
    async with runtime.db.read() as conn:
        rows = (await conn.execute(sa.select(tickets.c.id, tickets.c.language)
                                   .where(tickets.c.channel == ChannelKind.EMAIL)
                                   .order_by(tickets.c.id).limit(count))).all()
    if not rows:
        raise BenchError("the drain opened no tickets to answer")
    plan = [rows[n % len(rows)] for n in range(count)]
    try:
        began = time.perf_counter()
        backlog = await _queue(runtime, plan)
        queued_for = time.perf_counter() - began
        with WriteLock().watching() as lock:
            started = time.perf_counter()
            await runtime.start()
            await marks.until(lambda: backlog <= marks.sent.keys(), 10 + count / 20,
                              lambda: f"{len(backlog & marks.sent.keys()):,} of {count:,} sent")
        ended = max(marks.sent[m] for m in backlog)
        first = min(marks.sent[m] for m in backlog)
        rate = count / (ended - started)
        fig = Figure(f"3. Send {count:,} queued replies", rate, "replies/s", ">= 800/s", rate >= 800)

        live_started = time.perf_counter()
        live = await _queue(runtime, plan)
        live_queued = time.perf_counter() - live_started
        await marks.until(lambda: live <= marks.sent.keys(), 10 + count / 20,
                          lambda: f"{len(live & marks.sent.keys()):,} of {count:,} sent")
        live_ended = max(marks.sent[m] for m in live)
        live_rate = count / (live_ended - live_started)
        sent_rows = await _count(runtime, messages.c.direction == Direction.OUTBOUND,
                                 messages.c.delivery_state == DeliveryState.SENT)
        fig.passed = fig.passed and sent_rows == 2 * count
        channel = runtime.channels[ChannelKind.EMAIL]
        fig.notes += [
            f"{count:,} replies to {len({r.id for r in plan}):,} tickets queued by {AGENTS} concurrent callers"
            f" ({count / queued_for:,.0f}/s) while the gateway was stopped, as after an SMTP outage; all sent"
            f" {ended - started:.2f}s after runtime.start(); the first {(first - started) * 1000:,.0f} ms after it,"
            f" then {(count - 1) / (ended - first):,.0f}/s",
            f"then {count:,} more while it ran: queued at {count / live_queued:,.0f}/s, all sent"
            f" {live_ended - live_started:.2f}s after the first was queued ({live_rate:,.0f}/s);"
            f" {sent_rows:,} outbound rows 'sent' in all",
            f"jobs.concurrency {runtime.settings.jobs.concurrency} and smtp_pool_size {channel.settings.smtp_pool_size}"
            f" (the defaults); {channel.smtp.opened} SMTP connections opened; outbox.send job mean"
            f" {_mean(runtime, 'kartabl_job_seconds', kind=SEND_JOB) * 1000:.1f} ms",
            f"while sending the queued ones: {lock.count / count:.2f} write transactions per reply; " + lock.describe(),
        ]
        return [fig, Figure("   agents replying while it sends", live_rate, "replies/s")], backlog | live
    finally:
        await runtime.stop()


async def _queue(runtime: Runtime, plan: list[sa.Row]) -> set[int]:
    """Queue one reply per row of `plan` through `runtime.tickets.reply()`, AGENTS callers at once."""
    feed = iter(plan)
    queued: set[int] = set()

    async def agent() -> None:
        for ticket_id, language in feed:
            queued.add(await runtime.tickets.reply(ticket_id, _reply_text(language)))

    await asyncio.gather(*(agent() for _ in range(AGENTS)))
    return queued


def _reply_text(language: str | None) -> str:
    return _REPLY["en" if language == "en" else "fa"]


# -- references -----------------------------------------------------------------------------------


def parse_seconds(mail: list[bytes]) -> float:
    """Seconds per email of `parse_email` alone on `mail`, in this thread: the channel's parse step at best."""
    began = time.perf_counter()
    for raw in mail:
        parse_email(raw, own_domains=[SUPPORT_ADDRESS.rpartition("@")[2]])
    return (time.perf_counter() - began) / len(mail)


def compose_seconds(count: int) -> float:
    """Seconds per reply of what the channel does to a reply before SMTP (`build_email`, to its bytes)."""
    settings = EmailSettings(address=SUPPORT_ADDRESS)
    replies = [OutboundMessage(
        key=f"kartabl-{n}", channel=ChannelKind.EMAIL, to=Address("email", f"customer{n}@example.com"),
        text=_reply_text(language), ticket_id=n, ticket_ref=ticket_ref(n), subject="Order 123456 not delivered",
        in_reply_to=f"{n}@mail.example.com", thread_keys=(f"{n}@mail.example.com",), language=language)
        for n, language in zip(range(1, count + 1), itertools.cycle(("fa", "en", "fa")))]
    began = time.perf_counter()
    for reply in replies:
        build_email(reply, settings)
    return (time.perf_counter() - began) / count


# -- the run ------------------------------------------------------------------------------------------


async def run(workdir: Path, sizes: Sizes) -> list[Figure]:
    began = time.perf_counter()
    drained = inbox(sizes.drained, tag="drain", seed=2)
    pushed = inbox(sizes.pushes, tag="push", seed=3)
    log(f"built {len(drained) + len(pushed):,} emails in {time.perf_counter() - began:.1f}s (not measured)")
    # The references run before any server does, so nothing else competes for the CPU meanwhile.
    parse, compose = parse_seconds(drained[:SAMPLE]), compose_seconds(SAMPLE)
    sink = SinkProcess()
    dovecot = Dovecot(workdir / "dovecot", tls=False, idle_notify=True)
    runtime: Runtime | None = None
    figures: dict[int, list[Figure]] = {}
    queued: set[int] = set()
    try:
        await sink.start()
        await asyncio.to_thread(dovecot.start)
        for raw in drained:
            dovecot.deliver(raw)
        settings = gateway_settings(workdir, dovecot, sink)
        await migrate(settings.database.url)  # a deployed gateway's database is already at head
        runtime = build_runtime(settings)
        marks = Milestones()
        marks.install(runtime)

        log(f"[2] draining {len(drained):,} emails put into the Maildir before the gateway started")
        figures[2] = await drain(runtime, marks, dovecot, drained)
        figures[2][0].notes.append(f"parse_email alone on {min(SAMPLE, len(drained))} of the same emails, before"
                                   f" the servers started: {parse * 1000:.2f} ms per email")
        figures[2].append(Figure("   parse_email alone, one thread", 1 / parse, "emails/s"))
        backlog = await settle(runtime)
        figures[2][0].notes.append(f"the workflow jobs of the drained mail were all done {backlog:.1f}s after it"
                                   " (waited for before the next figure)")

        log(f"[1] push latency: {len(pushed)} emails, one every {sizes.push_gap[0]}-{sizes.push_gap[1]} s")
        figures[1] = await push(runtime, marks, dovecot, pushed, len(drained), sizes.push_gap)
        await settle(runtime)

        await runtime.stop()
        log(f"[3] sending {sizes.replies:,} queued replies to the SMTP sink (a process of its own), then as many"
            " queued while it runs")
        figures[3], queued = await send(settings, sizes.replies)
        figures[3][0].notes.append(f"composing a reply alone (build_email, to bytes), before the servers"
                                   f" started: {compose * 1000:.2f} ms per reply")
        figures[3].append(Figure("   composing a reply alone, one thread", 1 / compose, "replies/s"))
    finally:
        if runtime is not None and runtime.running:
            await runtime.stop()
        await asyncio.to_thread(dovecot.close)
        received = await sink.stop()
    if 3 in figures:
        figures[3][0].notes.append(f"the sink process counted {received} messages received")
        figures[3][0].passed = figures[3][0].passed and received == len(queued)
    return [f for n in sorted(figures) for f in figures[n]]


def environment() -> str:
    # Other work on the machine moves every figure here; print what it was so two runs can be compared.
    busy = psutil.cpu_percent(interval=0.5)
    libraries = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("aioimaplib", "aiosmtplib", "aiosmtpd"))
    dovecot = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False).stdout.split()
    return (f"Kartabl email benchmark: python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
            f" Dovecot {dovecot[0] if dovecot else 'unknown'}, {libraries};"
            f" {os.cpu_count()} CPUs ({busy:.0f}% busy before start), temp dir {tempfile.gettempdir()}\n"
            f"Machine now: event loop -> thread -> loop hand-off {thread_handoff_us():.0f} us,"
            f" fsync'd SQLite commit {fsync_commit_ms():.2f} ms")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="See the module docstring for what each figure measures.")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, not comparable with targets")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the table goes to stderr)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sizes = QUICK if args.quick else FULL
    if not DOVECOT.exists():
        log(f"bench: {NOT_INSTALLED}")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # a crashed channel shows
    header = environment()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="kartabl-bench-email-") as tmp:
            figures = asyncio.run(run(Path(tmp), sizes))
    except (BenchError, DovecotError) as exc:
        log(f"bench: {exc}")
        return 2
    header += f"\n{'Quick' if args.quick else 'Full'} run in {time.monotonic() - began:.0f}s."
    return publish(figures, header, quick=args.quick, as_json=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
