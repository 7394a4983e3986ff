"""The worker: claims jobs, runs their handlers, and turns each outcome into done, retry or dead letter."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import sqlalchemy as sa

from gateway.errors import AuthError, PermanentError, Postponed, TransientError, Unavailable
from gateway.jobs import Job, JobQueue, Work, backoff_delay
from gateway.metrics import Metrics
from gateway.settings import JobSettings

T = TypeVar("T")

log = logging.getLogger("kartabl.worker")

#: An operator must fix credentials; retrying sooner than this only adds noise.
AUTH_RETRY_FLOOR_S = 60.0

#: While customer messages are being stored, how many jobs of handlers that give way run at once
#: (see `Worker.yield_to`).
YIELDING_CONCURRENCY = 2
#: How soon the worker looks again at jobs held back that way.
YIELDING_RECHECK_S = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    """What runs a kind of job.

    `run` raises TransientError to be retried, PermanentError to dead-letter the job; any other
    exception is a bug and retried like a transient error. On success it may return a work (blocking
    writes) to commit in the transaction that finishes the job: its bookkeeping and the job's end
    are then one commit, never one without the other. `on_dead` records the failure where people
    will see it, in the same transaction that dead-letters the job.
    """

    run: Callable[[Job], Awaitable[Work | None]]
    on_dead: Callable[[sa.Connection, Job, str], None] | None = None
    #: The job is database work on this event loop (the workflow's steps), not a wait on a provider:
    #: while customer messages are being stored it runs only YIELDING_CONCURRENCY at a time.
    yields: bool = False


class Worker:
    """Runs up to `settings.concurrency` jobs at once until stopped."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, Handler], settings: JobSettings,
                 metrics: Metrics, *, yield_to: Callable[[], bool] | None = None) -> None:
        self.queue = queue
        # Storing customer messages goes first: a provider waits on the answer, and an event loop
        # shared with dozens of jobs' statements slows every statement of the ingest's transaction.
        # While `yield_to()` says messages are arriving, the handlers that are database work
        # (`Handler.yields`) run YIELDING_CONCURRENCY at a time; they only lag, never lose anything.
        # Sends and desk posts, which mostly wait on a provider, are not held back.
        self.yield_to = yield_to
        self._yielding_running = 0
        self._recheck: asyncio.TimerHandle | None = None
        self.handlers = handlers
        self.settings = settings
        self.metrics = metrics
        self._running: dict[int, asyncio.Task[None]] = {}
        self._ready: collections.deque[Job] = collections.deque()  # leased to us, not started yet
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        queue.subscribe(self._wake.set)

    @property
    def busy(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self.run(), name="kartabl-worker")

    async def run(self) -> None:
        """Claim and run jobs until `stop`; returns between queries, never in the middle of one."""
        heartbeat = asyncio.create_task(self._heartbeat(), name="kartabl-heartbeat")
        try:
            while not self._stopping.is_set():
                await self._cycle()
        finally:
            self._stopping.set()
            await heartbeat

    async def _cycle(self) -> None:
        self._wake.clear()
        self._start_ready()
        limit = self.settings.concurrency
        free = limit - len(self._running)
        # Claim ahead, up to a second round of jobs: a claim waits its turn at the database, and
        # the slots that free meanwhile start from the jobs already leased, not after it. While
        # messages arrive, a few at a time: claiming rounds of jobs that must wait is work too.
        want = free + limit - len(self._ready)
        if self.yield_to is not None and self.yield_to():
            held = sum(1 for job in self._ready if self._yields(job))
            want = min(want, 2 * YIELDING_CONCURRENCY - held)
        timeout = self.settings.poll_interval
        try:
            if want > 0:
                claimed, due = await self.queue.claim_and_peek(want)
                self._ready.extend(claimed)
                self._start_ready()
                if claimed and len(claimed) == want:
                    return  # there may be more; look again at once
                if due is not None:
                    wait = (due - self.queue.clock()).total_seconds()
                    if wait > 0:  # a due job we did not get is blocked or taken; poll for it
                        timeout = min(timeout, wait)
        except Unavailable as exc:  # logged once by the database; poll until it is back
            log.debug("job queue unavailable: %s", exc)
        except Exception as exc:
            log.warning("job queue unavailable: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _start_ready(self) -> None:
        yielding = self.yield_to is not None and bool(self._ready) and self.yield_to()
        held: list[Job] = []
        while self._ready and len(self._running) < self.settings.concurrency and not self._stopping.is_set():
            job = self._ready.popleft()
            if yielding and self._yields(job) and self._yielding_running >= YIELDING_CONCURRENCY:
                held.append(job)
                continue
            self._start(job)
        if held:
            self._ready.extendleft(reversed(held))
            if self._recheck is None:  # the burst may end with none of them running: look again soon
                self._recheck = asyncio.get_running_loop().call_later(YIELDING_RECHECK_S, self._resume)

    def _yields(self, job: Job) -> bool:
        handler = self.handlers.get(job.kind)
        return handler is not None and handler.yields

    def _resume(self) -> None:
        self._recheck = None
        self._start_ready()

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"kartabl-job-{job.id}")
        self._running[job.id] = task
        yields = self._yields(job)
        self._yielding_running += yields

        def _done(_: asyncio.Task[None]) -> None:
            self._running.pop(job.id, None)
            self._yielding_running -= yields
            self._start_ready()
            self._wake.set()

        task.add_done_callback(_done)

    async def _run_job(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        started = time.monotonic()
        outcome = "done"
        try:
            if handler is None:
                raise PermanentError(f"no handler for job kind {job.kind!r}")
            finish = await self._through_outages(lambda: handler.run(job))
        except asyncio.CancelledError:
            raise
        except Postponed as exc:
            outcome = "postponed"
            try:
                await self.queue.postpone(job, delay=exc.retry_after)
            except Exception as error:
                log.warning("job %s: could not postpone it (%s); its lease will expire", job.id, error)
        except PermanentError as exc:
            outcome = await self._dead(job, handler, f"permanent: {exc}")
        except AuthError as exc:
            outcome = await self._retry(job, handler, f"credentials refused: {exc}", AUTH_RETRY_FLOOR_S)
        except TransientError as exc:
            outcome = await self._retry(job, handler, f"transient: {exc}", exc.retry_after)
        except Exception as exc:
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            outcome = await self._retry(job, handler, f"error: {type(exc).__name__}: {exc}", None)
        else:
            try:
                await self._through_outages(lambda: self.queue.complete(job, also=finish))
            except Exception as exc:  # it ran; a re-run after the lease expires must be harmless
                log.warning("job %s ran but could not be marked done: %s", job.id, exc)
        finally:
            self.metrics.job_seconds.labels(job.kind).observe(time.monotonic() - started)
        self.metrics.jobs.labels(job.kind, outcome).inc()

    async def _through_outages(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`, done again each time the database or the attachment disk is back from an outage:
        an outage is no attempt of the job's, and the job keeps its lease (the heartbeat renews it)
        instead of waiting out an expiry. Stopping the worker cancels the wait."""
        while True:
            try:
                return await work()
            except Unavailable as exc:
                log.debug("a job waits for storage: %s", exc)
                await exc.wait()

    async def _retry(self, job: Job, handler: Handler | None, error: str, floor: float | None) -> str:
        if job.attempts >= job.max_attempts:
            return await self._dead(job, handler, f"{error} (after {job.attempts} attempts)")
        delay = backoff_delay(job.attempts, self.settings.backoff_base, self.settings.backoff_cap, floor)
        log.info("job %s (%s) attempt %d failed, retry in %.1fs: %s",
                 job.id, job.kind, job.attempts, delay, error)
        try:
            await self.queue.retry(job, error, delay=delay)
        except Exception as exc:
            log.warning("job %s: could not schedule its retry (%s); its lease will expire", job.id, exc)
        return "retry"

    async def _dead(self, job: Job, handler: Handler | None, error: str) -> str:
        log.error("job %s (%s) dead-lettered: %s", job.id, job.kind, error)
        def work(conn: sa.Connection) -> None:
            if self.queue.bury(conn, job, error) and handler and handler.on_dead:
                handler.on_dead(conn, job, error)
        try:
            await self.queue.db.run_write(work)
        except Exception as exc:
            log.warning("job %s: could not dead-letter it (%s); its lease will expire", job.id, exc)
        return "dead"

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
                return
            try:
                await self.queue.heartbeat([*self._running, *(job.id for job in self._ready)])
            except Exception as exc:
                log.log(logging.DEBUG if isinstance(exc, Unavailable) else logging.WARNING,
                        "could not renew job leases: %s", exc)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running jobs finish for `grace` seconds; hand the rest back."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            # Wait for the loop to end first: a claim in flight may still start jobs.
            await asyncio.wait([self._loop_task], timeout=grace)
            if not self._loop_task.done():  # a query hung (database away): give up on it
                self._loop_task.cancel()
                await asyncio.gather(self._loop_task, return_exceptions=True)
        ready, self._ready = [job.id for job in self._ready], collections.deque()
        if ready:
            try:
                await self.queue.release(ready)
            except Exception as exc:
                log.warning("could not hand back jobs %s (%s); their leases will expire", ready, exc)
        running = list(self._running.items())
        if running:
            _, pending = await asyncio.wait([t for _, t in running], timeout=grace)
            unfinished = [job_id for job_id, task in running if task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if unfinished:
                log.info("handing back %d unfinished jobs", len(unfinished))
                try:
                    await self.queue.release(unfinished)
                except Exception as exc:
                    log.warning("could not hand back jobs %s (%s); their leases will expire", unfinished, exc)
