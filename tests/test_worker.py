"""The worker gives way to storing customer messages: while they arrive, jobs start one by one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import ChannelKind
from gateway.ingest import BUSY_TAIL_S, Ingestor
from gateway.jobs import Job, JobQueue
from gateway.addresses import Address
from gateway.messages import InboundMessage
from gateway.metrics import Metrics
from gateway.migrate import upgrade
from gateway.settings import JobSettings
from gateway.worker import YIELDING_START_GAP_S, Handler, Worker
from tests.conftest import eventually


async def test_jobs_start_one_by_one_while_messages_arrive_and_all_at_once_after(db_url: str) -> None:
    db = Database(db_url)
    await upgrade(db)
    settings = JobSettings(concurrency=32, poll_interval=0.05)
    queue = JobQueue(db, settings)
    started: dict[int, list[float]] = {0: [], 1: []}  # start times, by the payload's round
    release = asyncio.Event()

    async def hold(job: Job) -> None:  # a job that waits (a paced send): it must not hold the others up
        started[job.payload["round"]].append(time.monotonic())
        await release.wait()

    arriving = True
    worker = Worker(queue, {"test.hold": Handler(run=hold)}, settings, Metrics(), yield_to=lambda: arriving)
    await db.run_write(lambda conn: [queue.enqueue(conn, "test.hold", {"round": 0}) for _ in range(10)])
    worker.start()
    try:
        await eventually(lambda: asyncio.sleep(0, len(started[0])), lambda n: n == 10)
        gaps = [b - a for a, b in zip(started[0], started[0][1:])]
        assert min(gaps) >= YIELDING_START_GAP_S * 0.9, gaps  # one by one, though all ten still wait

        arriving = False  # the burst is over: the next ones start together
        await db.run_write(lambda conn: [queue.enqueue(conn, "test.hold", {"round": 1}) for _ in range(10)])
        queue.wake()
        await eventually(lambda: asyncio.sleep(0, len(started[1])), lambda n: n == 10)
        assert started[1][-1] - started[1][0] < YIELDING_START_GAP_S * 9
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
