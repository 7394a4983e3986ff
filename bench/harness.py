"""An ingest stack without a Runtime (so no job worker competes for the database), and the load drivers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, event

from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.ingest import Ingestor
from gateway.jobs import JobQueue
from gateway.messages import InboundMessage
from gateway.metrics import Metrics
from gateway.migrate import upgrade
from gateway.settings import AttachmentSettings, IngestSettings, JobSettings


@dataclasses.dataclass
class Stack:
    db: Database
    metrics: Metrics
    ingestor: Ingestor
    statements: int = 0  # SQL statements sent to the driver so far (one per row when a driver batches none)

    def _count(self, *_: object) -> None:
        self.statements += 1

    def batches(self) -> tuple[int, int]:
        """(transactions committed, messages in them) so far, from the product's own histogram."""
        get = self.metrics.registry.get_sample_value
        return int(get("kartabl_ingest_batch_size_count") or 0), int(get("kartabl_ingest_batch_size_sum") or 0)

    async def close(self) -> None:
        event.remove(Engine, "before_cursor_execute", self._count)
        await self.ingestor.stop()
        await self.db.dispose()


async def migrate(url: str) -> None:
    """Bring the database at `url` to the code's schema."""
    db = Database(url)
    try:
        await upgrade(db)
    finally:
        await db.dispose()


async def open_stack(url: str, workdir: Path, *, migrate: bool = True) -> Stack:
    """Database, attachment store, job queue, metrics and ingest writer with the product's defaults."""
    db = Database(url)
    if migrate:
        await upgrade(db)
    await db.refresh_statistics()  # as Runtime.start does
    files = AttachmentSettings()
    store = AttachmentStore(workdir / "files", max_bytes=files.max_bytes, max_count=files.max_count)
    metrics = Metrics()
    ingestor = Ingestor(db, store, JobQueue(db, JobSettings()), metrics, batch_max=IngestSettings().batch_max)
    await ingestor.start()
    stack = Stack(db, metrics, ingestor)
    # A counter costs about a microsecond per statement; it shows how many round trips a batch takes.
    # Listening on the Engine class counts SQLite's writer-thread engine too, not only the async one.
    event.listen(Engine, "before_cursor_execute", stack._count)
    return stack


@dataclasses.dataclass
class Run:
    """What a closed-loop run did."""

    done: int
    seconds: float
    outcomes: Counter
    errors: list[str]
    started: float  # time.time() at the start, to line up several processes
    ended: float
    cpu: float  # CPU seconds this process used meanwhile, all threads (SQLite writes in its own)
    # Messages done by the end of each quarter of the run, to show whether the rate decays.
    quarter_rates: list[float]

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


async def closed_loop(stack: Stack, msgs: Sequence[InboundMessage], callers: int,
                      deadline: float | None = None) -> Run:
    """`callers` tasks each ingest the next message as soon as their last one committed.

    Stops when the messages run out or, if given, at `deadline` (time.monotonic()); a message already
    offered at the deadline is still awaited and counted.
    """
    feed = iter(msgs)
    outcomes: Counter = Counter()
    errors: list[str] = []
    finished: list[float] = []

    async def caller() -> None:
        for msg in feed:
            try:
                result = await stack.ingestor.ingest(msg)
            except Exception as exc:  # counted and shown: a benchmark that hides failures lies
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            finished.append(time.monotonic())
            outcomes["duplicate" if result.duplicate else "new_ticket" if result.new_ticket else "threaded"] += 1
            if deadline is not None and time.monotonic() >= deadline:
                return

    wall, start, cpu = time.time(), time.monotonic(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.monotonic() - start
    return Run(len(finished), seconds, outcomes, errors, wall, wall + seconds, time.process_time() - cpu,
               _quarters(finished, start, seconds))


def _quarters(finished: list[float], start: float, seconds: float) -> list[float]:
    if not finished or seconds <= 0:
        return []
    quarter = seconds / 4
    counts = [0] * 4
    for t in finished:
        counts[min(3, int((t - start) / quarter))] += 1
    return [c / quarter for c in counts]


@dataclasses.dataclass
class Latencies:
    seconds: list[float]  # per message, from its scheduled start to the return of ingest()
    offered_rate: float  # messages/s actually started

    def pct(self, p: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    @property
    def max(self) -> float:
        return max(self.seconds)


async def open_loop(stack: Stack, msgs: Sequence[InboundMessage], rate: float, seconds: float) -> Latencies:
    """Start one ingest() every 1/rate s for `seconds`, whether or not earlier ones finished.

    Each latency runs from the message's scheduled start, not from when the task got to run, so a
    loop too busy to start calls on time counts against the result (no coordinated omission).
    """
    count = int(rate * seconds)
    if count > len(msgs):
        raise ValueError(f"open loop needs {count} messages, got {len(msgs)}")
    latencies = [0.0] * count
    interval = 1.0 / rate

    async def one(index: int, msg: InboundMessage, due: float) -> None:
        await stack.ingestor.ingest(msg)
        latencies[index] = time.perf_counter() - due

    tasks = []
    start = time.perf_counter()
    for index in range(count):
        due = start + index * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, msgs[index], due)))
    launched = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return Latencies(latencies, count / launched if launched else 0.0)


async def _handoff_us(rounds: int = 2_000) -> float:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, int)
        start = time.perf_counter()
        for _ in range(rounds):
            await loop.run_in_executor(pool, int)
        return (time.perf_counter() - start) / rounds * 1e6


def thread_handoff_us() -> float:
    """Microseconds for the event loop to hand a no-op to a thread and get the answer back.

    SQLite ingest pays it once per transaction (the writer thread) and aiosqlite on every cursor call
    of the other queries; on a small VM it swings with the host's load.
    """
    return asyncio.run(_handoff_us())


def fsync_commit_ms(commits: int = 100) -> float:
    """Milliseconds per one-row commit with the product's SQLite pragmas: the disk's part of a batch."""
    with tempfile.TemporaryDirectory(prefix="kartabl-bench-fsync-") as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "fsync.db"), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (x INTEGER)")
            start = time.perf_counter()
            for _ in range(commits):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (1)")
                conn.execute("COMMIT")
            return (time.perf_counter() - start) / commits * 1e3
        finally:
            conn.close()
