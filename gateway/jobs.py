"""The durable job queue: due times, per-key order, leases, retries with backoff, dead letters.

Jobs live in the gateway's own database, so a job is enqueued in the same transaction as the change
that needs it. A worker claims jobs by leasing them (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's
write lock serializes the claim), heartbeats the lease while the job runs, and deletes the job when it
succeeds. A job whose worker died is claimed again when its lease runs out. Jobs that share a `key`
run one at a time in id order: a ticket's replies leave in the order agents wrote them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from gateway.batch import Coalescer
from gateway.db import Database
from gateway.domain import JobState
from gateway.messages import utcnow
from gateway.schema import jobs
from gateway.settings import JobSettings

Clock = Callable[[], dt.datetime]
#: Writes that join another's transaction: a `Database.run_write` work.
Work = Callable[[sa.Connection], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    key: str | None
    payload: Mapping[str, Any]
    attempts: int  # including the current one
    max_attempts: int
    due_at: dt.datetime
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class JobRow:
    """A job as `kartabl jobs` and the health page show it."""

    id: int
    kind: str
    key: str | None
    state: str
    attempts: int
    due_at: dt.datetime
    last_error: str | None
    payload: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int  # pending and running jobs, due or not
    due: int  # pending jobs whose time has come
    oldest_due_age: float  # seconds the longest-waiting due job has waited; 0 when none
    dead: int


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt `attempt + 1`: doubling from `base`, capped, with jitter.

    Half the delay is fixed and half random, so retries of many jobs spread out but never come
    sooner than half the schedule. A provider's `retry_after` is a floor, even above the cap.
    """
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = delay / 2 + rand() * delay / 2
    return max(delay, retry_after or 0.0)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobQueue:
    """Enqueue, claim, finish and inspect jobs."""

    def __init__(self, db: Database, settings: JobSettings, *, owner: str | None = None,
                 clock: Clock = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.owner = owner or default_owner()
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._finishing: dict[int, tuple[Job, Work | None]] = {}
        self._completer: Coalescer[int, bool | Exception] = Coalescer(self._complete_many)
        self._claim = self._claim_statement()
        self._next_due = sa.select(sa.func.min(jobs.c.due_at)).where(jobs.c.state == JobState.PENDING)

    # -- enqueueing ---------------------------------------------------------------------------

    def row(self, kind: str, payload: Mapping[str, Any], *, key: str | None = None,
            due_at: dt.datetime | None = None, now: dt.datetime | None = None,
            max_attempts: int | None = None) -> dict[str, Any]:
        """The insert values of one job, for callers that insert many at once."""
        now = now or self.clock()
        return {
            "kind": kind, "key": key, "payload": dict(payload), "state": JobState.PENDING,
            "due_at": due_at or now, "attempts": 0,
            "max_attempts": max_attempts or self.settings.max_attempts,
            "created_at": now, "updated_at": now,
        }

    def enqueue(self, conn: sa.Connection, kind: str, payload: Mapping[str, Any], *,
                key: str | None = None, due_at: dt.datetime | None = None,
                max_attempts: int | None = None) -> int:
        """Add a job inside the caller's transaction (a `Database.run_write` work); `wake()` after the commit."""
        values = self.row(kind, payload, key=key, due_at=due_at, max_attempts=max_attempts)
        return conn.execute(sa.insert(jobs).returning(jobs.c.id), values).scalar_one()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever this process has committed new work."""
        self._listeners.append(listener)

    def wake(self) -> None:
        for listener in self._listeners:
            listener()

    # -- running ------------------------------------------------------------------------------

    async def claim_and_peek(self, limit: int) -> tuple[list[Job], dt.datetime | None]:
        """Lease up to `limit` runnable jobs, and when fewer were there, the earliest pending due
        time (when to look again), in the same transaction: one round trip for the worker's cycle."""
        now = self.clock()
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        params = {"now": now, "lease_until": lease_until, "owner": self.owner, "limit": limit}

        def work(conn: sa.Connection) -> tuple[list[Any], dt.datetime | None]:
            rows = conn.execute(self._claim, params).all()
            return rows, (None if len(rows) == limit else conn.execute(self._next_due).scalar())
        rows, due = await self.db.run_write(work)
        claimed = [Job(*row) for row in rows]
        claimed.sort(key=lambda j: (j.due_at, j.id))
        return claimed, due

    def _claim_statement(self) -> sa.Update:
        """The claim, built once: the worker runs it every time a job ends."""
        now = sa.bindparam("now", type_=jobs.c.due_at.type)
        earlier = jobs.alias("earlier")
        blocked = sa.exists().where(
            earlier.c.key == jobs.c.key,
            earlier.c.id < jobs.c.id,
            earlier.c.state.in_([JobState.PENDING, JobState.RUNNING]),
        )
        runnable = sa.or_(
            sa.and_(jobs.c.state == JobState.PENDING, jobs.c.due_at <= now),
            sa.and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_until < now),
        )
        candidates = (
            sa.select(jobs.c.id)
            .where(runnable, sa.or_(jobs.c.key.is_(None), ~blocked))
            .order_by(jobs.c.due_at, jobs.c.id)
            .limit(sa.bindparam("limit", type_=sa.Integer))
        )
        if self.db.is_postgres:
            candidates = candidates.with_for_update(skip_locked=True, of=jobs)
        return (
            sa.update(jobs)
            .where(jobs.c.id.in_(candidates.scalar_subquery()))
            .values(state=JobState.RUNNING, lease_owner=sa.bindparam("owner"),
                    lease_until=sa.bindparam("lease_until", type_=jobs.c.lease_until.type),
                    attempts=jobs.c.attempts + 1, updated_at=now)
            .returning(jobs.c.id, jobs.c.kind, jobs.c.key, jobs.c.payload, jobs.c.attempts,
                       jobs.c.max_attempts, jobs.c.due_at, jobs.c.created_at)
        )

    def _mine(self, job: Job) -> sa.ColumnElement[bool]:
        # Fencing: a worker that lost its lease cannot finish a job another worker now owns.
        return sa.and_(jobs.c.id == job.id, jobs.c.lease_owner == self.owner,
                       jobs.c.state == JobState.RUNNING)

    async def complete(self, job: Job, also: Work | None = None) -> bool:
        """Delete a finished job, and run `also` (the handler's bookkeeping) in the same transaction.

        `also` runs even when the lease was lost (False): what the job did happened (a provider took
        the message), and a worker that runs it again must find that recorded. Jobs finishing while
        another's end is being written are ended together, with one DELETE.
        """
        self._finishing[job.id] = (job, also)
        outcome = await self._completer.get(job.id)
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)

    async def _complete_many(self, ids: list[int]) -> dict[int, bool | Exception]:
        items = [self._finishing.pop(i) for i in ids]
        try:
            return await self.db.run_write(lambda conn: self._finish_many(conn, items))
        except Exception as exc:
            if len(items) == 1:
                return {ids[0]: exc}
        outcomes: dict[int, bool | Exception] = {}
        for item in items:  # one of them broke the batch: find it, and end the others alone
            try:
                outcomes.update(await self.db.run_write(lambda conn, item=item: self._finish_many(conn, [item])))
            except Exception as exc:
                outcomes[item[0].id] = exc
        return outcomes

    def _finish_many(self, conn: sa.Connection, items: list[tuple[Job, Work | None]]) -> dict[int, bool]:
        for _, also in items:
            if also is not None:
                also(conn)
        ids = [job.id for job, _ in items]
        deleted = conn.execute(sa.delete(jobs).where(
            jobs.c.id.in_(ids), jobs.c.lease_owner == self.owner, jobs.c.state == JobState.RUNNING)).rowcount
        if deleted == len(ids):
            return dict.fromkeys(ids, True)
        kept = set(conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(ids))).scalars())  # leases lost
        return {i: i not in kept for i in ids}

    async def retry(self, job: Job, error: str, *, delay: float) -> bool:
        """Put a failed job back, due after `delay` seconds."""
        now = self.clock()
        stmt = sa.update(jobs).where(self._mine(job)).values(
            state=JobState.PENDING, due_at=now + dt.timedelta(seconds=delay),
            last_error=error[:4000], lease_owner=None, lease_until=None, updated_at=now)
        return await self.db.run_write(lambda conn: conn.execute(stmt).rowcount == 1)

    async def postpone(self, job: Job, *, delay: float) -> bool:
        """Put a job back, due after `delay` seconds, without counting this run as an attempt."""
        now = self.clock()
        stmt = sa.update(jobs).where(self._mine(job)).values(
            state=JobState.PENDING, due_at=now + dt.timedelta(seconds=delay), attempts=jobs.c.attempts - 1,
            lease_owner=None, lease_until=None, updated_at=now)
        return await self.db.run_write(lambda conn: conn.execute(stmt).rowcount == 1)

    def bury(self, conn: sa.Connection, job: Job, error: str) -> bool:
        """Dead-letter a job inside the caller's transaction: it stays visible to agents and
        `kartabl jobs retry` revives it. False if the lease was lost."""
        stmt = sa.update(jobs).where(self._mine(job)).values(
            state=JobState.DEAD, last_error=error[:4000], lease_owner=None, lease_until=None,
            updated_at=self.clock())
        return conn.execute(stmt).rowcount == 1

    async def heartbeat(self, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        now = self.clock()
        stmt = (sa.update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == self.owner)
                .values(lease_until=now + dt.timedelta(seconds=self.settings.lease_seconds)))
        await self.db.run_write(lambda conn: conn.execute(stmt))

    async def release(self, job_ids: Sequence[int]) -> None:
        """Hand unfinished jobs back at shutdown, due now, without counting the attempt."""
        if not job_ids:
            return
        now = self.clock()
        stmt = (sa.update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == self.owner, jobs.c.state == JobState.RUNNING)
                .values(state=JobState.PENDING, lease_owner=None, lease_until=None,
                        attempts=jobs.c.attempts - 1, updated_at=now))
        await self.db.run_write(lambda conn: conn.execute(stmt))

    # -- inspecting ---------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        now = self.clock()
        async with self.db.read() as conn:
            counts = dict((await conn.execute(
                sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state))).all())
            due, oldest = (await conn.execute(
                sa.select(sa.func.count(), sa.func.min(jobs.c.due_at))
                .where(jobs.c.state == JobState.PENDING, jobs.c.due_at <= now))).one()
        age = (now - oldest).total_seconds() if oldest else 0.0
        return QueueStats(
            depth=counts.get(JobState.PENDING, 0) + counts.get(JobState.RUNNING, 0),
            due=due, oldest_due_age=max(0.0, age), dead=counts.get(JobState.DEAD, 0),
        )

    async def list(self, state: JobState | None = None, limit: int = 50) -> list[JobRow]:
        query = sa.select(jobs.c.id, jobs.c.kind, jobs.c.key, jobs.c.state, jobs.c.attempts,
                          jobs.c.due_at, jobs.c.last_error, jobs.c.payload).order_by(jobs.c.id)
        if state is not None:
            query = query.where(jobs.c.state == state)
        async with self.db.read() as conn:
            return [JobRow(*row) for row in (await conn.execute(query.limit(limit))).all()]

    async def revive(self, ids: Sequence[int] | None = None) -> int:
        """Make dead jobs (the given ones, or all) pending again with fresh attempts."""
        now = self.clock()
        stmt = sa.update(jobs).where(jobs.c.state == JobState.DEAD)
        if ids is not None:
            stmt = stmt.where(jobs.c.id.in_(list(ids)))
        stmt = stmt.values(state=JobState.PENDING, attempts=0, due_at=now, updated_at=now)
        revived = await self.db.run_write(lambda conn: conn.execute(stmt).rowcount)
        if revived:
            self.wake()
        return revived
