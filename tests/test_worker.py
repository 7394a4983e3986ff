"""The worker gives way to storing customer messages: while they arrive, database jobs run two at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import ChannelKind
from gateway.ingest import BUSY_TAIL_S, Ingestor
from gateway.jobs import Job, JobQueue
from gateway.addresses import Address
from gateway.messages import InboundMessage, utcnow
from gateway.metrics import Metrics
from gateway.migrate import upgrade
from gateway.settings import JobSettings
from gateway.worker import YIELDING_CONCURRENCY, Handler, Worker
from tests.conftest import eventually


async def test_database_jobs_run_two_at_a_time_while_messages_arrive_and_sends_are_not_held(db_url: str) -> None:
    db = Database(db_url)
    await upgrade(db)
    settings = JobSettings(concurrency=32, poll_interval=0.05)
    queue = JobQueue(db, settings)
    running: dict[str, set[int]] = {"test.route": set(), "test.send": set()}
    peak = 0
    release = asyncio.Event()

    async def hold(job: Job) -> None:
        nonlocal peak
        running[job.kind].add(job.id)
        peak = max(peak, len(running["test.route"]))
        await release.wait()
        running[job.kind].discard(job.id)

    arriving = True
    worker = Worker(queue, {"test.route": Handler(run=hold, yields=True), "test.send": Handler(run=hold)},
                    settings, Metrics(), yield_to=lambda: arriving)
    # Replies queued before the burst's routing jobs, so claimed first (the queue's order is kept).
    earlier = utcnow() - dt.timedelta(seconds=1)
    await db.run_write(lambda conn: [queue.enqueue(conn, "test.send", {"n": n}, due_at=earlier) for n in range(10)]
                       + [queue.enqueue(conn, "test.route", {"n": n}) for n in range(10)])
    worker.start()
    try:
        # The sends (waits on a provider) all start; the database work, two at a time.
        await eventually(lambda: asyncio.sleep(0, len(running["test.send"])), lambda n: n == 10)
        await asyncio.sleep(0.3)  # several looks later: still two
        assert len(running["test.route"]) == YIELDING_CONCURRENCY and peak == YIELDING_CONCURRENCY

        arriving = False  # the burst is over: the rest start at the next look
        await eventually(lambda: asyncio.sleep(0, len(running["test.route"])), lambda n: n == 10)
        release.set()
        await eventually(lambda: asyncio.sleep(0, sum(map(len, running.values()))), lambda n: n == 0)
    finally:
        release.set()
        await worker.stop(grace=5)
        await db.dispose()


async def test_the_ingestor_is_busy_while_it_writes_and_a_moment_after(db_url: str, tmp_path: Path) -> None:
    db = Database(db_url)
    await upgrade(db)
    ingestor = Ingestor(db, AttachmentStore(tmp_path / "files", max_bytes=1000, max_count=1),
                        JobQueue(db, JobSettings()), Metrics())
    await ingestor.start()
    try:
        assert not ingestor.busy()
        writing = asyncio.create_task(ingestor.ingest(InboundMessage(
            ChannelKind.SMS, "m-1", Address.parse("phone", "09121234567"), "سلام")))
        await asyncio.sleep(0)
        assert ingestor.busy()  # offered, not written yet
        await writing
        assert ingestor.busy()  # the next message is likely a moment behind
        await asyncio.sleep(BUSY_TAIL_S + 0.05)
        assert not ingestor.busy()
    finally:
        await ingestor.stop()
        await db.dispose()
