"""Scale-out: several gateway processes on one database never run a job twice nor open two tickets."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import signal
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.addresses import Address
from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import ChannelKind, TicketStatus
from gateway.ingest import Ingestor
from gateway.jobs import JobQueue
from gateway.messages import InboundMessage, utcnow
from gateway.metrics import Metrics
from gateway.migrate import upgrade
from gateway.schema import addresses, customers, jobs, messages, tickets
from gateway.settings import JobSettings
from tests.conftest import eventually

PROCS = Path(__file__).parent / "procs"
JOBS, KEYS, PER_KEY = 300, 20, 5  # KEYS x PER_KEY of the jobs share a key, the rest have none
CUSTOMERS, PER_CUSTOMER, INGESTERS = 30, 5, 4
TIMEOUT_S = 30

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Child:
    """A child process whose stdout lines are collected as they come."""

    proc: asyncio.subprocess.Process
    stderr: Path
    lines: list[list[str]] = dataclasses.field(default_factory=list)
    said_ready: bool = False
    ready_or_gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, script: str, *args: str, stderr: Path) -> Child:
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(PROCS / script), *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
        child = cls(proc, stderr)
        child.reader = asyncio.create_task(child._read())
        return child

    async def _read(self) -> None:
        try:
            while line := await self.proc.stdout.readline():
                fields = line.decode().split()
                if fields == ["ready"]:
                    self.said_ready = True
                    self.ready_or_gone.set()
                else:
                    self.lines.append(fields)
        finally:
            self.ready_or_gone.set()

    async def ready(self) -> None:
        await asyncio.wait_for(self.ready_or_gone.wait(), TIMEOUT_S)
        assert self.said_ready, f"child ended before it was ready:\n{self.errors()}"

    async def finish(self) -> None:
        """Wait for the child to exit by itself (after `go` or SIGTERM); it must exit cleanly."""
        await asyncio.wait_for(self.reader, TIMEOUT_S)
        assert await asyncio.wait_for(self.proc.wait(), TIMEOUT_S) == 0, f"child failed:\n{self.errors()}"

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


async def _start(n: int, script: str, *args: str, tmp_path: Path) -> list[Child]:
    children = [await Child.start(script, *args, stderr=tmp_path / f"{script}-{i}.err") for i in range(n)]
    for child in children:
        await child.ready()
    return children


async def _migrated(url: str) -> Database:
    db = Database(url)
    await upgrade(db)
    return db


# -- the job queue -------------------------------------------------------------------------------


async def test_a_job_is_never_run_twice_by_two_workers_and_keyed_jobs_run_in_order(
        db_url: str, tmp_path: Path) -> None:
    db = await _migrated(db_url)
    workers = await _start(3 if db.is_postgres else 2, "work_jobs.py", db_url, tmp_path=tmp_path)
    try:
        keys = await _enqueue(db)
        await eventually(lambda: _count(db, jobs), lambda n: n == 0, timeout=TIMEOUT_S)
        for worker in workers:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in workers:
            await worker.finish()
    finally:
        for worker in workers:
            await worker.kill()
        await db.dispose()

    runs = [(int(job), int(pid), float(start), float(end))
            for w in workers for word, job, pid, start, end in w.lines if word == "ran"]
    times_run = collections.Counter(job for job, *_ in runs)
    assert set(times_run) == set(keys) and set(times_run.values()) == {1}, (
        f"jobs not run exactly once: {({j: n for j, n in times_run.items() if n != 1})}, "
        f"never run: {sorted(set(keys) - set(times_run))[:10]}")
    per_process = collections.Counter(pid for _, pid, _, _ in runs)
    assert len(per_process) == len(workers), f"jobs run per process: {dict(per_process)}"
    _assert_one_at_a_time_in_order(runs, keys)
    print(f"\n{len(runs)} jobs on {db.url.get_backend_name()}, run per process: {dict(per_process)}")


async def _enqueue(db: Database) -> dict[int, str | None]:
    """Enqueue the jobs, keyed ones mixed among the others; returns job id -> key."""
    wanted = [f"ticket-{k}" for k in range(KEYS) for _ in range(PER_KEY)]
    wanted += [None] * (JOBS - len(wanted))
    random.shuffle(wanted)
    queue = JobQueue(db, JobSettings())
    return await db.run_write(
        lambda conn: {queue.enqueue(conn, "test.record", {"n": n}, key=key): key for n, key in enumerate(wanted)})


def _assert_one_at_a_time_in_order(runs: list[tuple[int, int, float, float]], keys: dict[int, str | None]) -> None:
    by_key = collections.defaultdict(list)
    for job, pid, start, end in sorted(runs):  # by job id
        if keys[job] is not None:
            by_key[keys[job]].append((job, pid, start, end))
    for key, chain in by_key.items():
        for before, after in zip(chain, chain[1:]):
            assert after[2] >= before[3], (
                f"{key}: job {after[0]} (pid {after[1]}) started at {after[2]:.4f}, before job {before[0]} "
                f"(pid {before[1]}) ended at {before[3]:.4f}")


async def _count(db: Database, table: sa.Table) -> int:
    async with db.read() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


# -- ingest --------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_ingests_of_the_same_customers_from_several_processes_never_open_two_tickets(
        pg_url: str, tmp_path: Path) -> None:
    db = await _migrated(pg_url)
    closed = await _returning_customers(db, tmp_path)
    size = (str(CUSTOMERS), str(PER_CUSTOMER))
    ingesters = [await Child.start("ingest_same.py", pg_url, str(tmp_path / "files"), str(seed), *size,
                                   stderr=tmp_path / f"ingest-{seed}.err") for seed in range(INGESTERS)]
    try:
        for child in ingesters:
            await child.ready()
        for child in ingesters:  # all at once: the processes race for the same customers
            child.proc.stdin.write(b"go\n")
        for child in ingesters:
            await child.proc.stdin.drain()
            child.proc.stdin.close()
        for child in ingesters:
            await child.finish()
        stored = await _ingest_state(db)
    finally:
        for child in ingesters:
            await child.kill()
        await db.dispose()

    failures, firsts = _answers(ingesters)
    assert stored["messages"] == stored["provider ids"] == CUSTOMERS * PER_CUSTOMER + closed, f"{stored}"
    assert stored["customers"] == stored["addresses"] == CUSTOMERS, f"{stored}"
    assert stored["open tickets"] == stored["customers with an open ticket"] == CUSTOMERS, f"{stored}"
    assert stored["customers with new messages on two tickets"] == 0, f"{stored}"
    print(f"\n{INGESTERS} processes x {CUSTOMERS * PER_CUSTOMER} messages, {closed} customers returning: "
          f"{stored}; stored first by each process: {firsts}; failed ingest() calls, offered again: {failures}")


def _answers(children: list[Child]) -> tuple[int, list[int]]:
    """Each process got an answer for every message; all answers agree; exactly one stored it.

    Returns the failed ingest() calls (each offered again) and how many messages each process stored.
    """
    answers: dict[str, set[tuple[str, ...]]] = collections.defaultdict(set)
    stored_by = collections.Counter()
    failures = 0
    for child in children:
        seen = set()
        for word, *fields in child.lines:
            if word == "done":
                continue
            pid, *rest = fields
            if word == "failed":
                failures += 1
                continue
            *ids, outcome = rest
            answers[pid].add(tuple(ids))
            stored_by[pid] += outcome == "new"
            seen.add(pid)
        assert len(seen) == CUSTOMERS * PER_CUSTOMER, f"process gave up on {CUSTOMERS * PER_CUSTOMER - len(seen)}"
    disagree = {pid: ids for pid, ids in answers.items() if len(ids) != 1}
    assert not disagree, f"processes got different (message, ticket, customer) for one message: {disagree}"
    not_once = {pid: n for pid, n in stored_by.items() if n != 1}
    assert not not_once, f"messages stored as new by other than exactly one process: {not_once}"
    return failures, [sum(fields[-1] == "new" for fields in child.lines) for child in children]


async def _ingest_state(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        async def scalar(query: sa.Executable) -> int:
            return (await conn.execute(query)).scalar_one()

        count = sa.func.count
        live = tickets.c.status != TicketStatus.CLOSED
        return {
            "messages": await scalar(sa.select(count()).select_from(messages)),
            "provider ids": await scalar(sa.select(count(sa.distinct(messages.c.provider_id)))),
            "customers": await scalar(sa.select(count()).select_from(customers)),
            "addresses": await scalar(sa.select(count()).select_from(addresses)),
            "open tickets": await scalar(sa.select(count()).select_from(tickets).where(live)),
            "customers with an open ticket": await scalar(
                sa.select(count(sa.distinct(tickets.c.customer_id))).where(live)),
            "customers with new messages on two tickets": await scalar(sa.select(count()).select_from(
                sa.select(messages.c.sender).where(messages.c.provider_id.like("m-%"))
                .group_by(messages.c.sender).having(count(sa.distinct(messages.c.ticket_id)) > 1).subquery())),
        }


async def _returning_customers(db: Database, tmp_path: Path) -> int:
    """Every other customer wrote before and that ticket is closed: the race is for their next ticket.

    (A customer's first ticket is created with the customer, so only a returning customer without a
    live ticket tests that processes take turns at choosing a customer's ticket.)
    """
    ingestor = Ingestor(db, AttachmentStore(tmp_path / "files", max_bytes=1000, max_count=1),
                        JobQueue(db, JobSettings()), Metrics())
    await ingestor.start()
    try:
        earlier = [await ingestor.ingest(InboundMessage(
            ChannelKind.EMAIL, f"old-{c}", Address.parse("email", f"c{c}@example.com"), "سلام"))
            for c in range(0, CUSTOMERS, 2)]
    finally:
        await ingestor.stop()
    async with db.write() as conn:
        await conn.execute(sa.update(tickets).where(tickets.c.id.in_([r.ticket_id for r in earlier]))
                           .values(status=TicketStatus.CLOSED, closed_at=utcnow()))
    return len(earlier)
