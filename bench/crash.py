"""Crash bench: `kartabl run` with email, Telegram and SMS at once, SIGKILLed again and again under a burst.

One real `kartabl run` subprocess (all three channels configured by environment variables, PostgreSQL by
default, SQLite with --sqlite) talks to the local stand-ins, all in this process's event loop except
Dovecot: a private Dovecot (tests/servers/dovecot.py) whose Maildir the customers' mail is delivered
into as an MDA would, an aiosmtpd sink for the replies (tests/servers/smtp_sink.py), the Bot API
stand-in holding the customers' Telegram updates for getUpdates, and the Kavenegar stand-in, which
pushes each customer SMS to the gateway's inbound callback (the product's default `receive =
"callback"`; the stand-in retries a few times over half a second, then gives up and leaves the SMS
unread, as a gateway that is down would have it, so the gateway's reconcile must find it).

The run: a tenth of the customer messages wait before the first start (an outage); the rest arrive at
random moments while the gateway is started and killed with SIGKILL `kills` times, each life lasting a
seeded random 1-8 s from its spawn (start-up takes 2-3 s here, so some kills land in it). Meanwhile
"agents" in this process queue replies with the product's own `TicketService.reply()` to a random
subset of the tickets, the channels taking turns. Then a last, clean run (once its /healthz says every
channel runs) drains everything and is stopped with SIGTERM. Checks, each a FAILURE when it does not hold:

1. Every customer message is stored exactly once, on a ticket (by provider id: none missing, none
   twice, none that nobody sent).
2. Every agent reply reached its provider (the sink, the Bot API or Kavenegar took it, for the right
   recipient); every outbound row (replies and acknowledgements) ended up sent, none queued twice, no
   job dead; a ticket's messages first reached the provider in the order they were committed (where
   timing makes that order certain: ids are no commit order on PostgreSQL).
3. Duplicate deliveries (one outbound row accepted twice by its provider) are counted. Each must lie in
   the window the README documents: the provider accepted it, then the process that sent it was killed
   before it recorded the receipt, and a later life sent it again. Told from timing: each delivery is
   attributed to the life that was running when the provider took it, consecutive deliveries must come
   from different lives ended by SIGKILL, and the row's recorded `sent_at` must come after the kill that
   ended the first one.

A delivery is matched to its row by the row's id where the message carries it (our Message-ID
`kartabl-<id>...`, Kavenegar's localid) and by chat and text on Telegram (every row's text names its
ticket or its reply's token). Kavenegar answers a repeated localid with the earlier message, so an SMS
cannot be delivered twice; the summary counts how often that absorbed a repeat.

Settings that are not the product's defaults, and why: jobs.lease_seconds 5 (the minimum; a killed
process's running sends are taken over after it instead of 60 s), jobs.backoff_base 0.5 and cap 10
(retries after a kill come in seconds), channels.telegram.poll_timeout 1, channels.sms.reconcile_interval
10 (the minimum), HTTP on a fixed free port (Kavenegar's callbacks must find each new life).

Usage: python bench/crash.py [--seed N] [--kills N] [--per-channel N] [--replies N] [--sqlite] [--quick]
Exit status: 0 every check passed, 1 a check failed, 2 the bench could not run.
"""

from __future__ import annotations

import os
import sys

# `python bench/crash.py` puts bench/ first on sys.path, where bench/email.py would stand in for the
# standard library's `email` package. The repository root goes there instead; helpers are `bench.*`.
# Imported as `bench.crash` (by the test), sys.path is left alone.
_BENCH = os.path.dirname(os.path.abspath(__file__))
if any(os.path.abspath(p or os.curdir) == _BENCH for p in sys.path):
    sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import random
import re
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

from bench.email_workload import SUPPORT_ADDRESS, inbox, message_id
from bench.harness import migrate
from channels.sms.standin import StandInKavenegar
from channels.telegram.standin import StandInTelegram, User
from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import DeliveryState, Direction, JobState
from gateway.jobs import JobQueue
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.schema import jobs, messages, tickets
from gateway.settings import JobSettings
from gateway.tickets import TicketService
from tests.servers.dovecot import Dovecot
from tests.servers.smtp_sink import SmtpSink

CHANNELS = ("email", "telegram", "sms")
TOKEN = "515151:crash-bench-token"
API_KEY = "CRASH-BENCH-5150-KEY"
CALLBACK_SECRET = "crash-bench-callback-secret-5150"
TELEGRAM_BASE = 7_000_000  # customers' Telegram ids start here
BOOT_TIMEOUT_S = 60.0  # a clean last run that has not stored everything by then is stuck
STOP_TIMEOUT_S = 60.0
SENT = (DeliveryState.SENT, DeliveryState.DELIVERED)
_OUR_MESSAGE_ID = re.compile(r"kartabl-(\d+)\.")
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE
DEADLOCK_RETRIES = 5


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    per_channel: int = 300  # customer messages per channel
    kills: int = 10
    replies: int = 120  # agent replies, spread over the channels
    life: tuple[float, float] = (1.0, 8.0)  # seconds from spawn to SIGKILL, uniform (start-up takes 2-3 s)
    waiting: float = 0.1  # share of the customer messages already waiting before the first start
    drain_timeout: float = 240.0  # for the last run to store and send everything

    @classmethod
    def quick(cls, seed: int) -> Plan:
        return cls(seed, per_channel=60, kills=4, replies=30)


@dataclasses.dataclass
class Life:
    """One `kartabl run` process: when it was spawned and how it ended (time.time() throughout)."""

    number: int
    pid: int
    started: float
    ready: float | None = None  # when /healthz first said every channel is running
    ended: float | None = None
    how: str = "running"  # "SIGKILL", "SIGTERM", or "exited N" (a failure)
    log: Path | None = None


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One message a provider accepted from the gateway."""

    channel: str
    row: int | None  # the outbound message row it is, when that can be told
    to: str
    text: str
    at: float  # time.time() when the provider took it


@dataclasses.dataclass(frozen=True)
class Reply:
    """An agent reply queued by this bench; it committed between `called` and `returned` (time.time())."""

    message_id: int
    ticket_id: int
    channel: str
    to: str
    token: str
    called: float
    returned: float


@dataclasses.dataclass(frozen=True)
class Duplicate:
    row: int
    channel: str
    kind: str  # "agent reply" or "acknowledgement"
    lives: tuple[int, ...]  # the life that made each delivery
    accepted_before_kill_ms: float  # first delivery -> the SIGKILL that ended its life (negative: just after)
    in_window: bool
    why: str


@dataclasses.dataclass
class Outcome:
    """What the run did and what the checks found; `failures` empty means every check passed."""

    plan: Plan
    backend: str
    seconds: float = 0.0
    lives: list[Life] = dataclasses.field(default_factory=list)
    sent_in: dict[str, int] = dataclasses.field(default_factory=dict)  # customer messages per channel
    stored_in: dict[str, int] = dataclasses.field(default_factory=dict)
    tickets_in: dict[str, int] = dataclasses.field(default_factory=dict)
    replies_in: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    replies_delivered: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    outbound_in: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    deliveries_in: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    duplicates: list[Duplicate] = dataclasses.field(default_factory=list)
    drain_seconds: float = 0.0
    orphans: int = 0  # processes of a killed gateway (parse workers) still alive 5 s after the kill
    # Agent replies PostgreSQL refused as a deadlock victim (TicketService.reply against ingest), then
    # sent again by the agent: a product bug, reported, not one of the three checks.
    deadlocks: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(life.how == "SIGKILL" for life in self.lives)

    def summary(self) -> str:
        plan = self.plan
        lines = [(f"crash bench: seed {plan.seed}, {self.backend}, {self.kills} SIGKILLs, {len(self.lives)} lives, "
                  f"{self.seconds:.1f} s (the last run drained in {self.drain_seconds:.1f} s)"), *self._table()]
        for life in self.lives:
            span = (life.ended or life.started) - life.started
            ready = f"healthy after {life.ready - life.started:.2f} s" if life.ready else "killed while starting"
            lines.append(f"  life {life.number}: pid {life.pid}, {span:.2f} s, {ready}, ended by {life.how}")
        for d in self.duplicates:
            verdict = "in the documented window" if d.in_window else "OUTSIDE the window: FAILURE"
            lines.append(f"  duplicate: {d.channel} {d.kind} (message {d.row}) delivered by lives "
                         f"{', '.join(map(str, d.lives))}, accepted {d.accepted_before_kill_ms:.0f} ms before the "
                         f"SIGKILL: {verdict} ({d.why})")
        if window := sorted(d.accepted_before_kill_ms for d in self.duplicates if d.in_window):
            spread = f"{window[0]:.0f} to {window[-1]:.0f} ms (median {window[len(window) // 2]:.0f} ms)"
            lines.append(f"  duplicate window as observed: the provider accepted "
                         f"{spread if len(window) > 1 else f'{window[0]:.0f} ms'} before the SIGKILL; the next life "
                         "sent again once the job's lease ran out")
        lines += [f"  {note}" for note in self.notes]
        if self.deadlocks:
            lines.append(f"  PRODUCT BUG: {self.deadlocks} agent replies were refused by a PostgreSQL deadlock with "
                         "ingest (TicketService.reply) and had to be sent again")
        if self.orphans:
            lines.append(f"  note: {self.orphans} child processes of killed gateways outlived them by 5 s")
        lines.append("  checks: " + ("all passed" if not self.failures else f"{len(self.failures)} FAILED"))
        return "\n".join(lines + [f"  FAILURE: {f}" for f in self.failures])

    def _table(self) -> list[str]:
        head = ("channel", "customer msgs", "stored", "tickets", "agent replies", "delivered", "outbound rows",
                "deliveries", "duplicates", "in window")
        rows: list[tuple[object, ...]] = [head]
        for channel in (*CHANNELS, "total"):
            within = CHANNELS if channel == "total" else (channel,)
            counts = [sum(counts.get(c, 0) for c in within) for counts in (
                self.sent_in, self.stored_in, self.tickets_in, self.replies_in, self.replies_delivered,
                self.outbound_in, self.deliveries_in)]
            dups = [d for d in self.duplicates if d.channel in within]
            rows.append((channel, *counts, len(dups), sum(d.in_window for d in dups)))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        rule = "  " + "  ".join("-" * w for w in widths)
        shown = ["  " + "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
                 for row in rows]
        return [shown[0], rule, *shown[1:-1], rule, shown[-1]]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the providers --------------------------------------------------------------------------------


class StampedSink(SmtpSink):
    """The SMTP sink, noting when it accepted each message (time.time(), beside `received`)."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted_at: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        before = len(self.received)
        answer = await super().handle_DATA(server, session, envelope)
        if len(self.received) > before:
            self.accepted_at.append(time.time())
        return answer


@dataclasses.dataclass
class Providers:
    dovecot: Dovecot
    sink: StampedSink
    telegram: StandInTelegram
    kavenegar: StandInKavenegar
    http_port: int

    @classmethod
    async def start(cls, workdir: Path, stack: contextlib.AsyncExitStack) -> Providers:
        """Start every provider; `stack` stops them, each even if another fails to stop."""
        http_port = _free_port()
        hook = f"http://127.0.0.1:{http_port}/webhooks/kavenegar/{CALLBACK_SECRET}"
        dovecot = Dovecot(workdir / "dovecot")
        stack.push_async_callback(asyncio.to_thread, dovecot.close)
        await asyncio.to_thread(dovecot.start)
        sink, telegram = StampedSink(), StandInTelegram(TOKEN)
        kavenegar = StandInKavenegar(API_KEY, callback_url=f"{hook}/inbound", delivery_url=f"{hook}/delivery",
                                     deliver_after=0.5)
        for server in (sink, telegram, kavenegar):
            stack.push_async_callback(server.stop)
            await server.start()
        return cls(dovecot, sink, telegram, kavenegar, http_port)

    def environment(self, db_url: str, workdir: Path) -> dict[str, str]:
        """`kartabl run`'s whole configuration, as an operator would give it: environment variables only."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("KARTABL_")}
        return {**inherited, "KARTABL_CONFIG": "", "REQUESTS_CA_BUNDLE": self.kavenegar.ca_path,
                **{f"KARTABL_{key.upper().replace('.', '__')}": str(value) for key, value in {
                    "database.url": db_url, "attachments.dir": workdir / "files", "log.level": "info",
                    "http.enabled": "true", "http.host": "127.0.0.1", "http.port": self.http_port,
                    "jobs.lease_seconds": 5, "jobs.backoff_base": 0.5, "jobs.backoff_cap": 10,
                    "channels.email.address": SUPPORT_ADDRESS, "channels.email.imap_host": self.dovecot.host,
                    "channels.email.imap_port": self.dovecot.port, "channels.email.imap_security": "none",
                    "channels.email.imap_user": self.dovecot.user,
                    "channels.email.imap_password": self.dovecot.password,
                    "channels.email.smtp_host": self.sink.host, "channels.email.smtp_port": self.sink.port,
                    "channels.email.smtp_security": "none",
                    "channels.telegram.token": TOKEN, "channels.telegram.base_url": self.telegram.base_url,
                    "channels.telegram.base_file_url": self.telegram.base_file_url,
                    "channels.telegram.poll_timeout": 1,
                    "channels.sms.api_key": API_KEY, "channels.sms.sender": self.kavenegar.line,
                    "channels.sms.api_host": self.kavenegar.host, "channels.sms.callback_secret": CALLBACK_SECRET,
                    "channels.sms.receive": "callback", "channels.sms.reconcile_interval": 10,
                }.items()}}

    def deliveries(self) -> list[Delivery]:
        """Everything the providers accepted from the gateway, in the order they took it."""
        found = []
        wall_offset = time.time() - time.monotonic()  # the Bot API stand-in stamps with time.monotonic()
        for received, at in zip(self.sink.received, self.sink.accepted_at):
            ours = _OUR_MESSAGE_ID.match((received.message["Message-ID"] or "").strip().strip("<>"))
            body = received.message.get_body(("plain",))
            found.append(Delivery("email", int(ours.group(1)) if ours else None, received.rcpt_tos[0],
                                  body.get_content() if body is not None else "", at))
        for sent in self.telegram.sent:
            if sent.chat_id > 0:  # customers' private chats; no agents' group is configured
                found.append(Delivery("telegram", None, str(sent.chat_id), sent.text, sent.at + wall_offset))
        for sms in self.kavenegar.sent:
            row = int(sms.localid) if sms.localid and sms.localid.isdigit() else None
            found.append(Delivery("sms", row, sms.receptor, sms.message, sms.at))
        return sorted(found, key=lambda d: d.at)


# -- the customers --------------------------------------------------------------------------------


class Customers:
    """The customer messages of the run, built up front from the seed; `expected` fills as they are sent."""

    def __init__(self, plan: Plan, providers: Providers) -> None:
        self.plan, self.providers = plan, providers
        self.expected: dict[str, set[str]] = {c: set() for c in CHANNELS}
        rng = random.Random(plan.seed ^ 0xC0FFEE)
        n = plan.per_channel
        pool = max(5, n // 3)  # customers per channel: a third write again, on the ticket they have
        self.mail = inbox(n, tag=f"crash{plan.seed}", seed=plan.seed)
        users = [User(TELEGRAM_BASE + i, f"مشتری {i}", language_code=rng.choice(("fa", "en"))) for i in range(pool)]
        phones = [f"0912{rng.randrange(10**7):07d}" for _ in range(pool)]
        self.telegram = [(rng.choice(users), f"سلام، پیام {i}: سفارشم کجاست؟") for i in range(n)]
        self.sms = [(rng.choice(phones), f"سلام، پیامک {i}: سفارشم نرسیده") for i in range(n)]
        order = [(c, i) for c in CHANNELS for i in range(n)]
        rng.shuffle(order)
        self.order = order

    def send(self, channel: str, index: int) -> None:
        if channel == "email":
            raw = self.mail[index]
            self.providers.dovecot.deliver(raw)
            self.expected["email"].add(message_id(raw))
        elif channel == "telegram":
            user, text = self.telegram[index]
            self.expected["telegram"].add(f"{user.id}:{self.providers.telegram.customer_text(user, text)}")
        else:
            phone, text = self.sms[index]
            self.expected["sms"].add(str(self.providers.kavenegar.customer_sms(phone, text)))

    async def burst(self, over: float, rng: random.Random) -> None:
        """Send the messages not yet waiting at random moments over `over` seconds."""
        start = time.monotonic()
        rest = self.order[int(len(self.order) * self.plan.waiting):]
        moments = sorted(rng.uniform(0, over) for _ in rest)
        for (channel, index), moment in zip(rest, moments):
            await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
            self.send(channel, index)

    def send_waiting(self) -> None:
        for channel, index in self.order[:int(len(self.order) * self.plan.waiting)]:
            self.send(channel, index)


# -- the agents -----------------------------------------------------------------------------------


class Agents:
    """Replies queued from this process with the product's TicketService, to distinct random tickets."""

    def __init__(self, db: Database, workdir: Path) -> None:
        queue = JobQueue(db, JobSettings())
        files = AttachmentStore(workdir / "agent-files", max_bytes=1, max_count=0)
        self.db = db
        self.service = TicketService(db, queue, Outbox(db, queue, {}, files, Metrics()))
        self.queued: list[Reply] = []
        self.deadlocks = 0

    async def answer(self, channel: str, rng: random.Random) -> bool:
        """Reply to a random ticket of `channel` not answered yet; False if there is none yet."""
        answered = {r.ticket_id for r in self.queued}
        async with self.db.read() as conn:
            found = (await conn.execute(sa.select(tickets.c.id, tickets.c.reply_to)
                                        .where(tickets.c.channel == channel).order_by(tickets.c.id))).all()
        candidates = [row for row in found if row.id not in answered]
        if not candidates:
            return False
        ticket = rng.choice(candidates)
        token = f"R{len(self.queued) + 1:04d}"
        text = f"پاسخ پشتیبانی [{token}]: سفارش شما بررسی شد و امروز ارسال می‌شود."
        called = time.time()
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                message_id = await self.service.reply(ticket.id, text)
                break
            except sa.exc.DBAPIError as exc:  # see Outcome.deadlocks; the agent presses send again
                if _sqlstate(exc) != DEADLOCK or attempt == DEADLOCK_RETRIES:
                    raise
                self.deadlocks += 1
                await asyncio.sleep(0.05 * attempt)
        assert message_id is not None
        self.queued.append(Reply(message_id, ticket.id, channel, ticket.reply_to, token, called, time.time()))
        return True

    async def work(self, count: int, over: float, rng: random.Random) -> None:
        """Queue `count` replies at random moments over `over` seconds, the channels taking turns."""
        start = time.monotonic()
        moments = sorted(rng.uniform(0.1 * over, over) for _ in range(count))
        for turn, moment in enumerate(moments):
            await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
            # A channel with no unanswered ticket yet gives its turn to the next; if none has one, wait.
            while not await self._answer_first([CHANNELS[(turn + k) % len(CHANNELS)] for k in range(len(CHANNELS))],
                                               rng):
                await asyncio.sleep(0.5)

    async def _answer_first(self, channels: list[str], rng: random.Random) -> bool:
        for channel in channels:
            if await self.answer(channel, rng):
                return True
        return False


# -- the gateway ----------------------------------------------------------------------------------


class GatewayProcess:
    """`python -m gateway run` lives, one after another; every life's output goes to its own log file."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.lives: list[Life] = []
        self.orphans = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Life:
        life = Life(len(self.lives), 0, 0.0, log=self.workdir / f"gateway-{len(self.lives)}.log")
        with life.log.open("wb") as out:
            # A session of its own: its parse workers share its process group, so we can see them outlive it.
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", cwd=self.workdir, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        life.pid, life.started = self._proc.pid, time.time()
        self.lives.append(life)
        return life

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def kill_if_alive(self) -> None:
        if self.alive:
            await self.kill()

    async def kill(self) -> Life:
        proc, life = self._proc, self.lives[-1]
        assert proc is not None
        if proc.returncode is None:
            life.ended = time.time()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        code = await proc.wait()
        if code == -signal.SIGKILL:
            life.how = "SIGKILL"
        else:
            life.ended, life.how = life.ended or time.time(), f"exited {code}"
        await self._reap_group(proc.pid)
        return life

    async def stop(self) -> Life:
        proc, life = self._proc, self.lives[-1]
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            await self.kill()
            life.how = f"SIGKILL after SIGTERM was ignored for {STOP_TIMEOUT_S:.0f} s"
            return life
        life.ended, life.how = time.time(), "SIGTERM" if code == 0 else f"exited {code} on SIGTERM"
        return life

    async def _reap_group(self, pgid: int) -> None:
        """Children of a killed life (the email parse workers) should end once their pipes close."""
        deadline = time.monotonic() + 5
        while (left := _group(pgid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.orphans += len(left)
        for pid in left:  # our own grandchildren, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, life: Life, lines: int = 30) -> str:
        if life.log is None or not life.log.exists():
            return ""
        return "\n".join(life.log.read_text(errors="replace").splitlines()[-lines:])


def _group(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                found.append(proc.pid)
    return found


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the run --------------------------------------------------------------------------------------


async def run(plan: Plan, db_url: str, workdir: Path, say: Callable[[str], None] = log) -> Outcome:
    """The whole bench on an empty (or migrated) database at `db_url`; returns what it found."""
    outcome = Outcome(plan, "SQLite" if db_url.startswith("sqlite") else "PostgreSQL")
    began = time.monotonic()
    await migrate(db_url)  # before the first life, so the agents can look for tickets from the start
    async with contextlib.AsyncExitStack() as stack:
        providers = await Providers.start(workdir, stack)
        db = Database(db_url)
        stack.push_async_callback(db.dispose)
        gateway = GatewayProcess(providers.environment(db_url, workdir), workdir)
        stack.push_async_callback(gateway.kill_if_alive)
        customers, agents = Customers(plan, providers), Agents(db, workdir)
        await _kill_phase(plan, outcome, providers, gateway, db, customers, agents, say, stack)
        drained_from = time.monotonic()
        drained = (await _healthy(providers.http_port, gateway, BOOT_TIMEOUT_S, gateway.lives[-1])
                   and await _drain(db, customers, plan.drain_timeout))
        outcome.drain_seconds = time.monotonic() - drained_from
        last = await gateway.stop()
        say(f"last life: drained in {outcome.drain_seconds:.1f} s, ended by {last.how}")
        if not drained:
            outcome.failures.append(f"the last run had not stored and sent everything after {plan.drain_timeout:.0f} s:"
                                    f"\n{gateway.tail(last)}")
        if last.how != "SIGTERM":
            outcome.failures.append(f"the last run {last.how}:\n{gateway.tail(last)}")
        outcome.seconds = time.monotonic() - began
        outcome.lives, outcome.orphans, outcome.deadlocks = gateway.lives, gateway.orphans, agents.deadlocks
        await _check(outcome, db, customers, agents, providers.deliveries())
        outcome.notes += _kavenegar_notes(providers.kavenegar)
        if providers.telegram.cut_off:
            outcome.notes.append(f"Bot API stand-in: {providers.telegram.cut_off} requests cut off mid-body by a SIGKILL")
    return outcome


async def _kill_phase(plan: Plan, outcome: Outcome, providers: Providers, gateway: GatewayProcess, db: Database,
                      customers: Customers, agents: Agents, say: Callable[[str], None],
                      stack: contextlib.AsyncExitStack) -> None:
    """Start and SIGKILL the gateway `plan.kills` times while customers write and agents reply; then start
    the last life, and return once every customer message is sent and every reply queued."""
    rng = random.Random(plan.seed)
    lives = [rng.uniform(*plan.life) for _ in range(plan.kills)]
    customers.send_waiting()
    span = sum(lives)
    feeding = asyncio.create_task(customers.burst(0.8 * span, random.Random(plan.seed + 1)))
    answering = asyncio.create_task(agents.work(plan.replies, 0.85 * span, random.Random(plan.seed + 2)))
    for task in (feeding, answering):
        stack.callback(task.cancel)  # a failure on the way must not leave them running
    for number, seconds in enumerate(lives):
        life = await gateway.start()
        watching = asyncio.create_task(_healthy(providers.http_port, gateway, seconds, life))
        await asyncio.sleep(seconds)
        await gateway.kill()
        await watching
        say(f"life {number}: SIGKILL after {seconds:.2f} s ({life.how}); "
            f"{len(await _stored(db))} customer messages stored so far")
        if life.how != "SIGKILL":
            outcome.failures.append(f"life {number} {life.how} before it was killed:\n{gateway.tail(life)}")
    await gateway.start()  # the last life: the agents may still wait for a ticket to answer
    try:
        await asyncio.wait_for(asyncio.gather(feeding, answering), plan.drain_timeout)
    except TimeoutError:
        outcome.failures.append(f"the agents had queued {len(agents.queued)} of {plan.replies} replies after "
                                f"{plan.drain_timeout:.0f} s more: too few tickets were opened")


def _kavenegar_notes(kavenegar: StandInKavenegar) -> list[str]:
    """How Kavenegar's inbound callbacks fared (an SMS whose every attempt failed was left to the reconcile),
    and how often a reply's localid was sent again (Kavenegar answers the earlier message: no second SMS)."""
    attempts: dict[str, list[int | None]] = collections.defaultdict(list)
    for callback in kavenegar.callbacks:
        if callback.kind == "inbound":
            attempts[str(callback.fields["messageid"])].append(callback.status)
    answers = collections.Counter("no answer" if status is None else status for tried in attempts.values()
                                  for status in tried)
    given_up = sum(200 not in tried for tried in attempts.values())
    shown = ", ".join(f"{n} {answer}" for answer, n in answers.most_common())
    sends = collections.Counter(r.params.get("localid") for r in kavenegar.requests if r.method == "sms/send")
    asked = sum(r.method == "sms/statuslocalmessageid" for r in kavenegar.requests)
    return [(f"Kavenegar inbound callbacks: {answers.total()} attempts ({shown}); {given_up} SMS never taken by a "
             "callback (the gateway's reconcile stored them)"),
            (f"Kavenegar sends: {sum(sends.values())} sms/send calls for {len(sends)} replies "
             f"({sum(n - 1 for n in sends.values())} repeats of a localid, absorbed by Kavenegar), "
             f"{asked} sms/statuslocalmessageid checks before a retry")]


async def _stored(db: Database) -> list[tuple[str, str]]:
    async with db.read() as conn:
        return [tuple(r) for r in await conn.execute(
            sa.select(messages.c.channel, messages.c.provider_id).where(messages.c.direction == Direction.INBOUND))]


async def _healthy(port: int, gateway: GatewayProcess, timeout: float, life: Life) -> bool:
    """Wait until the gateway's /healthz says every channel is running (so its start-up checks ran)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline and gateway.alive:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).json().get("status") == "ok":
                    life.ready = time.time()
                    return True
            await asyncio.sleep(0.1)
    return False


async def _drain(db: Database, customers: Customers, timeout: float) -> bool:
    """Wait until every customer message is stored and nothing is left to send or to run now."""
    expected = {(c, pid) for c, pids in customers.expected.items() for pid in pids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = dt.datetime.now(dt.UTC)
        async with db.read() as conn:
            pending = (await conn.execute(sa.select(sa.func.count()).select_from(messages).where(
                messages.c.direction == Direction.OUTBOUND,
                messages.c.delivery_state == DeliveryState.PENDING))).scalar_one()
            due = (await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.state.in_([JobState.PENDING, JobState.RUNNING]), jobs.c.due_at <= now))).scalar_one()
        if not pending and not due and expected <= set(await _stored(db)):
            return True
        await asyncio.sleep(0.5)
    return False


# -- the checks -----------------------------------------------------------------------------------


async def _check(outcome: Outcome, db: Database, customers: Customers, agents: Agents,
                 deliveries: list[Delivery]) -> None:
    async with db.read() as conn:
        inbound = (await conn.execute(
            sa.select(messages.c.channel, messages.c.provider_id, messages.c.ticket_id, tickets.c.id.label("ticket"))
            .join(tickets, tickets.c.id == messages.c.ticket_id, isouter=True)
            .where(messages.c.direction == Direction.INBOUND))).all()
        outbound = (await conn.execute(
            sa.select(messages.c.id, messages.c.ticket_id, messages.c.channel, messages.c.text, messages.c.delivery_state,
                      messages.c.provider_id, messages.c.created_at, messages.c.sent_at, messages.c.attempts,
                      messages.c.automatic, tickets.c.reply_to)
            .join(tickets, tickets.c.id == messages.c.ticket_id)
            .where(messages.c.direction == Direction.OUTBOUND))).all()
        ticket_channels = (await conn.execute(sa.select(tickets.c.channel))).scalars().all()
        dead = (await conn.execute(sa.select(jobs.c.kind, jobs.c.last_error)
                                   .where(jobs.c.state == JobState.DEAD))).all()
    _check_inbound(outcome, customers, inbound)
    outcome.tickets_in = dict(collections.Counter(ticket_channels))
    rows = {row.id: row for row in outbound}
    outcome.outbound_in.update(row.channel for row in outbound)
    unsent = [f"{row.channel} message {row.id} is {row.delivery_state}" for row in outbound if row.delivery_state not in SENT]
    if unsent:
        outcome.failures.append(f"{len(unsent)} outbound messages never sent: {unsent[:10]}")
    if dead:
        outcome.failures.append(f"{len(dead)} dead jobs: {[(k, (e or '')[:200]) for k, e in dead[:5]]}")
    twins = collections.Counter((row.ticket_id, row.channel, row.text) for row in outbound)
    if doubled := [key for key, n in twins.items() if n > 1]:  # e.g. a re-run workflow job acknowledging again
        outcome.failures.append(f"{len(doubled)} outbound messages queued twice (ticket, channel, text): {doubled[:3]}")
    by_row = _attribute(outcome, deliveries, outbound)
    _check_replies(outcome, agents, rows, by_row)
    _check_order(outcome, rows, by_row, {r.message_id: r for r in agents.queued})
    _check_duplicates(outcome, rows, by_row, {r.message_id for r in agents.queued})


def _check_inbound(outcome: Outcome, customers: Customers, inbound: list[sa.Row]) -> None:
    """(1) Every customer message stored once, on a ticket that exists; nothing stored nobody sent."""
    counts = collections.Counter((row.channel, row.provider_id) for row in inbound)
    for channel in CHANNELS:
        expected = customers.expected[channel]
        stored = {pid for c, pid in counts if c == channel}
        outcome.sent_in[channel], outcome.stored_in[channel] = len(expected), sum(
            n for (c, _), n in counts.items() if c == channel)
        if missing := sorted(expected - stored):
            outcome.failures.append(f"{channel}: {len(missing)} customer messages never stored: {missing[:5]}")
        if twice := sorted(pid for (c, pid), n in counts.items() if c == channel and n > 1):
            outcome.failures.append(f"{channel}: {len(twice)} customer messages stored more than once: {twice[:5]}")
        if unknown := sorted(stored - expected):
            outcome.failures.append(f"{channel}: {len(unknown)} stored messages nobody sent: {unknown[:5]}")
    if orphans := [row.provider_id for row in inbound if row.ticket is None]:
        outcome.failures.append(f"{len(orphans)} customer messages on no ticket: {orphans[:5]}")


def _attribute(outcome: Outcome, deliveries: list[Delivery], outbound: list[sa.Row]) -> dict[int, list[Delivery]]:
    """Each delivery under the outbound row it is. Email and SMS carry the row's id (Message-ID, localid);
    a Telegram message is told by its chat and text, which our rows make unique (each names its ticket
    or its reply's token)."""
    telegram_rows: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for row in outbound:
        if row.channel == "telegram":
            telegram_rows[(row.reply_to, row.text)].append(row.id)
    by_row: dict[int, list[Delivery]] = collections.defaultdict(list)
    unknown = []
    for d in deliveries:
        outcome.deliveries_in[d.channel] += 1
        row = d.row
        if d.channel == "telegram":
            found = telegram_rows.get((d.to, d.text), [])
            row = found[0] if len(found) == 1 else None
        if row is None:
            unknown.append(f"{d.channel} to {d.to}: {d.text[:60]!r}")
        else:
            by_row[row].append(d)
    if unknown:
        outcome.failures.append(f"{len(unknown)} deliveries match no outbound message: {unknown[:5]}")
    return by_row


def _check_replies(outcome: Outcome, agents: Agents, rows: dict[int, sa.Row], by_row: dict[int, list[Delivery]]) -> None:
    """(2) Every agent reply reached its provider, for the right recipient, and is recorded as sent."""
    for reply in agents.queued:
        outcome.replies_in[reply.channel] += 1
        got = [d for d in by_row.get(reply.message_id, []) if reply.token in d.text and _same_address(d, reply.to)]
        if got:
            outcome.replies_delivered[reply.channel] += 1
        else:
            outcome.failures.append(f"{reply.channel} reply {reply.token} (message {reply.message_id}) to "
                                    f"{reply.to} never reached the provider")
        row = rows.get(reply.message_id)
        if row is None or row.delivery_state not in SENT:
            outcome.failures.append(f"reply {reply.token} is {row.delivery_state if row else 'gone'} in the database")


def _check_order(outcome: Outcome, rows: dict[int, sa.Row], by_row: dict[int, list[Delivery]],
                 replies: dict[int, Reply]) -> None:
    """A ticket's messages first reached the provider in the order they were queued, that is committed.

    Ids are no commit order on PostgreSQL (a transaction that waits on a lock commits its earlier id
    late), so each row's commit is bounded by timing: an agent reply's by the call that queued it, any
    other row's by its created_at and its first delivery. Only a certain inversion is a FAILURE: X
    committed before Y began, yet Y reached the provider first.
    """
    zero = outcome.lives[0].started if outcome.lives else 0.0
    by_ticket: dict[int, list[tuple[float, float, float, int]]] = collections.defaultdict(list)
    for row_id, got in by_row.items():
        first, row = min(d.at for d in got), rows[row_id]
        reply = replies.get(row_id)
        lower, upper = (reply.called, reply.returned) if reply else (_unix(row.created_at) or first, first)
        by_ticket[row.ticket_id].append((lower, upper, first, row_id))
    for ticket_id, sent in sorted(by_ticket.items()):
        for (_, x_upper, x_first, x), (y_lower, _, y_first, y) in itertools.permutations(sent, 2):
            if x_upper < y_lower and y_first < x_first:
                outcome.failures.append(
                    f"ticket {ticket_id}: message {x} was queued by {x_upper - zero:+.2f} s and message {y} from "
                    f"{y_lower - zero:+.2f} s on (times from the first start), yet {y} reached the provider first "
                    f"({y_first - zero:+.2f} s, {x} at {x_first - zero:+.2f} s)")


def _same_address(delivery: Delivery, to: str) -> bool:
    if delivery.channel == "sms":  # the ticket keeps +98912..., Kavenegar takes 0912...
        return delivery.to[-10:] == to[-10:]
    return delivery.to.lower() == to.lower()


def _check_duplicates(outcome: Outcome, rows: dict[int, sa.Row], by_row: dict[int, list[Delivery]],
                      replies: set[int]) -> None:
    """(3) Each row delivered more than once: did every repeat follow a kill between the provider's receipt
    and the receipt's record? Deliveries are put in the life that was running when the provider took
    them (one taken after the kill, from bytes already on the wire, still belongs to the killed life)."""
    lives = outcome.lives
    for row_id, got in sorted(by_row.items()):
        if len(got) < 2:
            continue
        row = rows[row_id]
        owners = [_life_at(lives, d.at) for d in got]
        sent_at = _unix(row.sent_at)
        first_kill = lives[owners[0]].ended if owners[0] is not None else None
        reasons = []
        if None in owners:
            reasons.append("a delivery came before the first life started")
        elif any(a >= b for a, b in itertools.pairwise(owners)):
            reasons.append("two deliveries by one life: a repeat without a crash")
        elif any(lives[o].how != "SIGKILL" for o in owners[:-1]):
            reasons.append("a repeat after a life that was not killed")
        elif sent_at is None or first_kill is None or sent_at < first_kill:
            reasons.append("the receipt was recorded before the kill, yet the reply went out again")
        in_window = not reasons
        why = reasons[0] if reasons else (f"recorded sent {sent_at - first_kill:.1f} s after the kill, by life "
                                          f"{_life_at(lives, sent_at)}")
        outcome.duplicates.append(Duplicate(
            row_id, row.channel, "agent reply" if row_id in replies else "acknowledgement" if row.automatic else "reply",
            tuple(-1 if o is None else o for o in owners),
            ((first_kill or got[0].at) - got[0].at) * 1000, in_window, why))
        if not in_window:
            outcome.failures.append(f"{row.channel} message {row_id} delivered {len(got)} times outside the "
                                    f"documented window: {why}")


def _unix(when: dt.datetime | None) -> float | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _life_at(lives: list[Life], at: float) -> int | None:
    """The life running at `at`: the last one started by then."""
    owner = None
    for life in lives:
        if life.started <= at:
            owner = life.number
    return owner


# -- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from bench.ingest import DEFAULT_PG_URL
    from bench.postgres import Unreachable, fresh_database

    parser = argparse.ArgumentParser(prog="python bench/crash.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs before the last, clean run (default 10)")
    parser.add_argument("--per-channel", type=int, default=None, help="customer messages per channel (default 300)")
    parser.add_argument("--replies", type=int, default=None, help="agent replies queued during the run (default 120)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--quick", action="store_true", help="60 messages per channel, 4 kills, 30 replies")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"PostgreSQL admin URL (default {DEFAULT_PG_URL})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the summary "
                        "goes to stderr), as bench/run_all.py reads them")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    plan = Plan.quick(seed) if args.quick else Plan(seed)
    plan = dataclasses.replace(plan, **{k: v for k, v in (("kills", args.kills), ("per_channel", args.per_channel),
                                                          ("replies", args.replies)) if v is not None})
    print(f"crash bench seed {seed} (again: --seed {seed})", flush=True, file=sys.stderr if args.json else sys.stdout)
    with tempfile.TemporaryDirectory(prefix="kartabl-crash-") as tmp:
        workdir = Path(tmp)
        try:
            with contextlib.ExitStack() as stack:
                url = (f"sqlite+aiosqlite:///{workdir / 'kartabl.db'}" if args.sqlite
                       else stack.enter_context(fresh_database(args.pg_url)))
                outcome = asyncio.run(run(plan, url, workdir))
        except (Unreachable, OSError, RuntimeError) as exc:
            print(f"the bench could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        log(outcome.summary())
        print(json.dumps({"mode": "quick" if args.quick else "full", "figures": figures(outcome, seed)},
                         ensure_ascii=False, indent=2))
    else:
        print(outcome.summary(), flush=True)
    return 1 if outcome.failures else 0


def figures(outcome: Outcome, seed: int) -> list[dict[str, Any]]:
    """The run as rows of bench/run_all.py's table."""
    sent, stored = sum(outcome.sent_in.values()), sum(outcome.stored_in.values())
    replies, delivered = sum(outcome.replies_in.values()), sum(outcome.replies_delivered.values())
    outside = sum(not d.in_window for d in outcome.duplicates)
    notes = [f"seed {seed}, {outcome.backend}, {outcome.kills} SIGKILLs"] + [f"FAILURE: {f[:300]}" for f in outcome.failures]

    def row(label: str, value: float, unit: str, target: str, ok: bool | None) -> dict[str, Any]:
        return {"label": label, "value": value, "unit": unit, "target": target,
                "result": "-" if ok is None else "PASS" if ok else "MISS", "notes": notes if ok is False else []}
    return [
        row(f"Customer messages stored once ({outcome.kills} kills)", stored, f"of {sent}", f"= {sent}",
            stored == sent),
        row("Agent replies delivered", delivered, f"of {replies}", f"= {replies}", delivered == replies),
        row("Repeated deliveries outside the window", outside, "", "= 0", outside == 0),
        row("Repeated deliveries in the documented window", len(outcome.duplicates) - outside, "", "(reference)", None),
        row("Every crash check", len(outcome.failures), "failures", "= 0", not outcome.failures),
    ]


if __name__ == "__main__":
    sys.exit(main())
