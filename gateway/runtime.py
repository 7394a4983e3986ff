"""The runtime: starts the database, the ingest writer, the job worker, the HTTP app and the channels,
restarts a channel that crashed, and on SIGTERM stops in the order that loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import uvicorn
from starlette.routing import BaseRoute

from gateway import __version__
from gateway.attachments import AttachmentStore
from gateway.channel import Channel, Deliver
from gateway.db import Database
from gateway.domain import ChannelKind
from gateway.errors import AuthError, DatabaseNotReady, DatabaseUnavailable, Unavailable
from gateway.http import EmbeddedServer, build_app, listen_socket
from gateway.ingest import Ingestor
from gateway.inlet import Inlet
from gateway.jobs import JobQueue
from gateway.leadership import Leadership, LeadershipLost
from gateway.messages import utcnow
from gateway.metrics import Metrics
from gateway.migrate import current_revision, head_revision, upgrade
from gateway.outbox import SEND_JOB, Outbox
from gateway.settings import Settings
from gateway.tickets import TicketService
from gateway.worker import Handler, Worker

log = logging.getLogger("kartabl.runtime")

#: A channel that ran this long before crashing restarts after the shortest delay again.
_STABLE_RUN_S = 60.0
#: How often the runtime asks an unreachable database whether it is back (seconds).
DATABASE_PROBE_S = 1.0
#: How often SQLite's planner statistics are refreshed while the gateway runs (seconds).
STATISTICS_EVERY_S = 3600.0
#: /healthz says "down" when the database takes longer than this to answer its queue query.
HEALTH_TIMEOUT_S = 5.0


class ChannelSupervisor:
    """Runs one channel's listening loop and restarts it with backoff and jitter when it crashes."""

    def __init__(self, channel: Channel, deliver: Deliver, metrics: Metrics, restart_cap: float,
                 leadership: Leadership | None = None) -> None:
        self.channel = channel
        self.deliver = deliver
        # An exclusive channel (one consumer of its provider) runs only while this process holds its lock.
        self.leadership = leadership
        self.metrics = metrics
        self.restart_cap = restart_cap
        self.state = "starting"
        self.since = utcnow()
        self.last_error: str | None = None
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kartabl-channel-{self.channel.kind}")

    def _set(self, state: str) -> None:
        self.state, self.since = state, utcnow()
        self.metrics.channel_up.labels(self.channel.kind).set(1 if state == "running" else 0)

    async def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            if self.leadership is not None and not self.leadership.held:
                self._set("standby")
                if not await self._until_stopping(self.leadership.acquire()):
                    break
            self._set("running")
            began = time.monotonic()
            try:
                await self._listen()
                if self._stopping.is_set():
                    break
                raise RuntimeError("the channel's loop ended without being stopped")
            except asyncio.CancelledError:
                raise
            except LeadershipLost as exc:  # no backoff: stand by for the lock at once
                log.error("channel %s: %s; standing by", self.channel.kind, exc)
                self.last_error = str(exc)
                continue
            except Unavailable as exc:  # the database or the disk, not the channel: wait for it, no backoff
                await self._give_up_lock()
                self.last_error = str(exc)
                log.warning("channel %s paused: %s; it resumes when that is back", self.channel.kind, exc)
                self._set("waiting for the database" if isinstance(exc, DatabaseUnavailable) else "waiting for disk space")
                await self._until_stopping(exc.wait())
                delay = 1.0
                continue
            except Exception as exc:
                await self._give_up_lock()
                self.last_error = f"{type(exc).__name__}: {exc}"
                state = "credentials refused" if isinstance(exc, AuthError) else "restarting"
                log.error("channel %s crashed (%s); restarting in %.0fs", self.channel.kind, self.last_error, delay)
                self._set(state)
            if time.monotonic() - began > _STABLE_RUN_S:
                delay = 1.0
            self.restarts += 1
            self.metrics.channel_restarts.labels(self.channel.kind).inc()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(self.restart_cap, delay * 2)
        self._set("stopped")

    async def _give_up_lock(self) -> None:
        """After a crash the lock's connection may be dead (the server restarted and forgot the lock):
        let it go and take it again before the channel runs again."""
        if self.leadership is not None and self.leadership.held:
            await self.leadership.release()

    async def _listen(self) -> None:
        """The channel's loop; for an exclusive channel, cancelled if the lock's connection fails."""
        if self.leadership is None:
            await self.channel.start(self.deliver)
            return
        listening = asyncio.create_task(self.channel.start(self.deliver))
        watching = asyncio.create_task(self.leadership.watch())
        try:
            await asyncio.wait({listening, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listening, watching):
                if not task.done():
                    task.cancel()
            await asyncio.gather(listening, watching, return_exceptions=True)
        if watching.done() and not watching.cancelled() and watching.exception() is not None:
            raise watching.exception()  # LeadershipLost
        await listening  # its outcome: returned after stop(), or the crash

    async def _until_stopping(self, work: Awaitable[None]) -> bool:
        """Await `work` unless the supervisor stops first (then cancel it); True if it finished."""
        working = asyncio.ensure_future(work)
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (working, stopping):
            task.cancel()
        await asyncio.gather(working, stopping, return_exceptions=True)
        return working.done() and not working.cancelled() and working.exception() is None

    async def stop(self, timeout: float) -> None:
        self._stopping.set()
        try:
            await asyncio.wait_for(self.channel.stop(), timeout)
        except Exception as exc:
            log.warning("channel %s did not stop cleanly: %s", self.channel.kind, exc)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self.leadership is not None:
            await self.leadership.release()

    def describe(self) -> dict[str, Any]:
        """The loop's state, and the channel's own report of its provider connection if it gives one."""
        report = {"state": self.state, "since": self.since.isoformat(), "restarts": self.restarts,
                  "last_error": self.last_error}
        inner = getattr(self.channel, "describe", None)
        if inner is not None and self.state == "running":
            report.update(inner())  # a channel that reconnects by itself is running but not healthy
        return report


class Runtime:
    """One gateway process. Build it, `register` job handlers and desks, then `serve()`."""

    def __init__(self, settings: Settings, channels: Mapping[ChannelKind, Channel] | None = None, *,
                 clock: Callable[[], dt.datetime] = utcnow, owner: str | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.db = Database(settings.database.url, pool_size=settings.database.pool_size,
                           echo=settings.database.echo)
        self.metrics = Metrics()
        self.files = AttachmentStore(settings.attachments.dir, max_bytes=settings.attachments.max_bytes,
                                     max_count=settings.attachments.max_count)
        self.queue = JobQueue(self.db, settings.jobs, owner=owner, clock=clock)
        self.ingestor = Ingestor(self.db, self.files, self.queue, self.metrics,
                                 batch_max=settings.ingest.batch_max, clock=clock)
        self.inlet = Inlet(self.db, self.ingestor, self.metrics, clock)
        self.channels: dict[ChannelKind, Channel] = dict(channels or {})
        self.outbox = Outbox(self.db, self.queue, self.channels, self.files, self.metrics, clock)
        self.tickets = TicketService(self.db, self.queue, self.outbox, clock)
        self.handlers: dict[str, Handler] = {SEND_JOB: self.outbox.handler}
        self.worker = Worker(self.queue, self.handlers, settings.jobs, self.metrics,
                             yield_to=self.ingestor.busy)
        self.http_port: int | None = None
        self._task_factories: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_hooks: list[Callable[[], None]] = []
        self._routes: list[BaseRoute] = []
        self._supervisors: dict[ChannelKind, ChannelSupervisor] = {}
        self._server: EmbeddedServer | None = None
        self._http: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._running = False

    def register(self, kind: str, handler: Handler) -> None:
        """Add the handler of a job kind (workflow steps, desk posts). Before `start`."""
        self.handlers[kind] = handler

    def add_task(self, run: Callable[[], Awaitable[None]]) -> None:
        """A background loop (the workflow file's watcher) that runs from `start` until `stop`."""
        self._task_factories.append(run)

    def add_routes(self, routes: Sequence[BaseRoute]) -> None:
        """HTTP routes beside the channels' webhooks (the survey page). Before `start`."""
        self._routes.extend(routes)

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Something to do on SIGHUP (read the workflow file again)."""
        self._reload_hooks.append(hook)

    def reload(self) -> None:
        log.info("reload requested")
        for hook in self._reload_hooks:
            hook()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def deliver(self) -> Inlet:
        return self.inlet

    async def start(self) -> None:
        log.info("kartabl %s starting: database %s, channels: %s", __version__, self.db.safe_url,
                 ", ".join(self.channels) or "none")
        await self._prepare_database()
        await self.db.refresh_statistics()
        swept = await asyncio.to_thread(self.files.sweep_partials)
        if swept:
            log.info("removed %d half-written attachment files left by an earlier crash", swept)
        await self.ingestor.start()
        self._tasks = [asyncio.create_task(run(), name="kartabl-background") for run in self._task_factories]
        self._tasks.append(asyncio.create_task(self._watch_database(), name="kartabl-database-probe"))
        self.worker.start()
        if self.settings.http.enabled:
            await self._start_http()
        for kind, channel in self.channels.items():
            # On PostgreSQL, several processes may share the database: a channel with one consumer
            # per provider account runs in the one holding its lock. (On SQLite there is one process.)
            lead = Leadership(self.db.url, f"channel:{kind}") if (
                self.db.is_postgres and getattr(channel, "exclusive", False)) else None
            supervisor = ChannelSupervisor(channel, self.deliver, self.metrics,
                                           self.settings.runtime.channel_restart_cap, lead)
            self._supervisors[kind] = supervisor
            supervisor.start()
        self._running = True
        log.info("kartabl ready")

    async def _watch_database(self) -> None:
        """While the database is away, ask it every DATABASE_PROBE_S whether it is back, so that what
        waits for it (paused channels, jobs) resumes at once rather than at its next own try."""
        analyzed = time.monotonic()
        while True:
            self.metrics.database_up.set(0 if self.db.reach.down else 1)
            self.metrics.attachments_writable.set(0 if self.files.full else 1)
            if self.db.reach.down:
                await self.db.probe()
            elif time.monotonic() - analyzed > STATISTICS_EVERY_S:  # the tables' shapes change as they grow
                analyzed = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.db.refresh_statistics()
            await asyncio.sleep(DATABASE_PROBE_S)

    async def _prepare_database(self) -> None:
        """Check (or bring) the schema; a database that is not up yet is waited for, as during an
        outage (a host that boots the gateway before its database), until a stop is requested."""
        while True:
            try:
                return await self._check_schema()
            except DatabaseUnavailable:
                log.info("waiting for the database before starting; it is asked every %.0f s", DATABASE_PROBE_S)
                if not await self._until_database_or_stop():
                    raise

    async def _until_database_or_stop(self) -> bool:
        """True once the database answers; False if a stop was requested first."""
        async def answered() -> None:
            while not await self.db.probe():
                await asyncio.sleep(DATABASE_PROBE_S)
        up, stop = asyncio.create_task(answered()), asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, stop):
            task.cancel()
        await asyncio.gather(up, stop, return_exceptions=True)
        return up.done() and not up.cancelled() and up.exception() is None

    async def _check_schema(self) -> None:
        if self.settings.database.upgrade_on_start:
            await upgrade(self.db)
            return
        current, head = await current_revision(self.db), head_revision()
        if current != head:
            raise DatabaseNotReady(
                f"database {self.db.safe_url} is at revision {current or 'none'}, this code needs {head}: "
                "run `kartabl db upgrade`")

    async def _start_http(self) -> None:
        routes = [r for ch in self.channels.values() for r in getattr(ch, "routes", lambda: [])()] + self._routes
        app = build_app(self.health, self.render_metrics, routes)
        config = uvicorn.Config(app, host=self.settings.http.host, port=self.settings.http.port,
                                log_config=None, access_log=False, lifespan="off")
        sock = listen_socket(self.settings.http.host, self.settings.http.port)
        self.http_port = sock.getsockname()[1]
        self._server = EmbeddedServer(config)
        self._http = asyncio.create_task(self._server.serve(sockets=[sock]), name="kartabl-http")
        log.info("HTTP listening on http://%s:%s", self.settings.http.host, self.http_port)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        log.info("stop requested")
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop taking work, commit what was offered, let running jobs finish or hand them back."""
        grace = self.settings.runtime.shutdown_grace
        await asyncio.gather(*(s.stop(grace) for s in self._supervisors.values()))
        if self._http is not None:
            # uvicorn finishes the requests in flight (webhooks awaiting their ingest) before it exits.
            self._server.should_exit = True
            await asyncio.wait([self._http], timeout=grace)
            self._http.cancel()
            await asyncio.gather(self._http, return_exceptions=True)
            self._http = None
        await self.ingestor.stop()
        await self.worker.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for channel in self.channels.values():  # what their sends need, now that no job sends any more
            close = getattr(channel, "close", None)
            if close is not None:
                await close()
        await self.db.dispose()
        self._running = False
        log.info("kartabl stopped")

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(database reachable, report) for /healthz."""
        channels = {str(k): s.describe() for k, s in self._supervisors.items()}
        body: dict[str, Any] = {"version": __version__, "channels": channels}
        files = self.files.describe()
        body["attachments"] = files
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                stats = await self.queue.stats()
            if self.db.reach.down:  # it reads, yet cannot be written (a SQLite file's disk is full)
                raise self.db.reach.unavailable(ConnectionError("not writable"))
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"the database did not answer in {HEALTH_TIMEOUT_S:.0f} s")
            database: dict[str, Any] = {"ok": False, "error": self.db.reach.error or f"{type(exc).__name__}: {exc}"}
            if self.db.reach.down_since is not None:
                database["down_seconds"] = round(time.time() - self.db.reach.down_since, 1)
            body.update(status="down", database=database)
            return False, body
        degraded = not files["ok"] or any(c["state"] not in ("running", "standby") for c in channels.values())
        body.update(
            status="degraded" if degraded else "ok",
            database={"ok": True},
            queue={"depth": stats.depth, "due": stats.due,
                   "oldest_due_age_seconds": round(stats.oldest_due_age, 3), "dead": stats.dead},
            workers={"busy": self.worker.busy, "concurrency": self.settings.jobs.concurrency},
        )
        return True, body

    async def render_metrics(self) -> bytes:
        try:
            stats = await self.queue.stats()
        except Exception as exc:
            log.warning("metrics without queue figures: %s", exc)
        else:
            self.metrics.queue_depth.set(stats.depth)
            self.metrics.queue_due.set(stats.due)
            self.metrics.queue_oldest_age.set(stats.oldest_due_age)
            self.metrics.jobs_dead.set(stats.dead)
        return self.metrics.render()
