"""PostgreSQL: a throwaway database, and several processes ingesting into it at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import sqlalchemy as sa

from bench.harness import Stack, closed_loop, migrate, open_stack
from bench.workload import conversation


class Unreachable(Exception):
    """The PostgreSQL server cannot be reached or will not let us create a database."""


def _asyncpg_dsn(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _may_create_databases(url: str) -> bool:
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        return await conn.fetchval(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()


def check(admin_url: str) -> None:
    """Raise Unreachable, in the server's own words, unless we can connect and create a database."""
    try:
        allowed = asyncio.run(_may_create_databases(admin_url))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise Unreachable(f"PostgreSQL is not reachable at {admin_url}: {type(exc).__name__}: {exc}") from None
    if not allowed:
        raise Unreachable(f"the role of {admin_url} may not CREATE DATABASE")


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, migrated database; dropped (connections forced out) when the block ends, however it ends."""
    name = f"kartabl_bench_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise Unreachable(f"cannot create a database at {admin_url}: {type(exc).__name__}: {exc}") from None
    url = sa.engine.make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
    rendered = url.render_as_string(hide_password=False)
    try:
        asyncio.run(migrate(rendered))
        yield rendered
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclasses.dataclass
class Plan:
    url: str
    processes: int
    callers: int  # in-flight ingest() calls per process
    warmup: int  # messages per process before the clock starts
    seconds: float  # measured run per process
    capacity: int  # messages built per process: more than it can ingest in `seconds`
    shared_pool: int  # customers every process writes for
    shared_share: float  # share of each process's messages from them


@dataclasses.dataclass
class Result:
    rate: float  # messages/s, all processes together
    done: int
    seconds: float
    per_process: list[float]
    client_cpu: float  # CPU seconds the ingesting processes used during the run, together
    machine_busy: float | None  # share of all CPUs busy during the run (PostgreSQL included)
    outcomes: dict[str, int]
    replays: int  # batches rolled back and replayed after losing a race to another process
    errors: list[str]
    exhausted: bool  # a process ran out of prepared messages before its time was up


def run(plan: Plan) -> Result:
    """Start `plan.processes` processes; they warm up, meet at a barrier, then ingest for `plan.seconds`."""
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter each, no inherited event loop
    barrier, results = ctx.Barrier(plan.processes), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(plan, index, barrier, results), name=f"bench-pg-{index}")
             for index in range(plan.processes)]
    for p in procs:
        p.start()
    try:
        with CpuSampler() as cpu:
            reports = [results.get(timeout=plan.seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [r["failure"] for r in reports if "failure" in r]
    if failed:
        raise RuntimeError(f"a PostgreSQL bench process failed: {failed[0]}")
    return _combine(reports, cpu)


class CpuSampler:
    """Machine-wide CPU times every 0.2 s, to tell how busy all cores were during a window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), busy s, total s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="bench-cpu")

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            t = psutil.cpu_times()
            idle = t.idle + getattr(t, "iowait", 0.0)
            # Linux counts guest time inside user time too.
            total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
            self.samples.append((time.time(), total - idle, total))
            if self._stop.wait(0.2):
                return

    def busy(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (_, b0, t0), (_, b1, t1) = inside[0], inside[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def _combine(reports: list[dict], cpu: CpuSampler) -> Result:
    start, end = min(r["started"] for r in reports), max(r["ended"] for r in reports)
    done = sum(r["done"] for r in reports)
    outcomes: dict[str, int] = {}
    for r in reports:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    return Result(done / (end - start), done, end - start, [r["rate"] for r in reports],
                  sum(r["cpu"] for r in reports), cpu.busy(start, end), outcomes, sum(r["replays"] for r in reports),
                  [e for r in reports for e in r["errors"]], any(r["exhausted"] for r in reports))


async def _analyze(stack: Stack) -> None:
    # A brand-new database has no planner statistics until autovacuum's first pass (a minute or more
    # in); a live server has them. Measure the steady state, as after that pass.
    async with stack.db.write() as conn:
        await conn.exec_driver_sql("ANALYZE")


def _child(plan: Plan, index: int, barrier, results) -> None:  # noqa: ANN001 (multiprocessing proxies)
    try:
        results.put(asyncio.run(_ingest_in_child(plan, index, barrier)))
    except BaseException as exc:  # the parent must hear of it, or it waits for the timeout
        barrier.abort()
        results.put({"failure": f"process {index}: {type(exc).__name__}: {exc}"})


class _RaceCounter(logging.Handler):
    """Counts the ingest writer's "lost a race, replaying" records (logged at DEBUG, not counted in metrics)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lost a race" in record.msg:
            self.count += 1


async def _ingest_in_child(plan: Plan, index: int, barrier) -> dict:  # noqa: ANN001
    races = _RaceCounter()
    logger = logging.getLogger("kartabl.ingest")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(races)
    msgs = conversation(plan.warmup + plan.capacity, tag=f"p{index}", seed=100 + index,
                        shared_pool=plan.shared_pool, shared_share=plan.shared_share)
    with tempfile.TemporaryDirectory(prefix="kartabl-bench-pg-") as tmp:
        stack = await open_stack(plan.url, Path(tmp), migrate=False)
        try:
            await closed_loop(stack, msgs[:plan.warmup], plan.callers)
            await asyncio.to_thread(barrier.wait, 120)
            if index == 0:
                await _analyze(stack)
            # Every process starts its clock together, so the rates add up to a true aggregate.
            await asyncio.to_thread(barrier.wait, 120)
            measured = msgs[plan.warmup:]
            races.count = 0
            run = await closed_loop(stack, measured, plan.callers, deadline=time.monotonic() + plan.seconds)
            replays = races.count
        finally:
            await stack.close()
    return {"done": run.done, "rate": run.rate, "started": run.started, "ended": run.ended, "cpu": run.cpu,
            "outcomes": dict(run.outcomes), "replays": replays, "errors": run.errors[:5],
            "exhausted": run.done + len(run.errors) >= len(measured)}
