"""The database connection: one async engine, write transactions that lock early, and backend quirks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import queue
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.errors import DatabaseUnavailable

T = TypeVar("T")
log = logging.getLogger("kartabl.db")

# How long a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30
#: Free space a SQLite database's disk needs, after it filled up, before writing is tried again.
SQLITE_ROOM_BYTES = 4 << 20
#: Rows of each index SQLite's ANALYZE samples (its analysis_limit): enough for the planner's choices.
SQLITE_ANALYSIS_ROWS = 1000
#: How long connecting to PostgreSQL may take (asyncpg waits 60 s by default): a server behind a network
#: cut that drops packets is reported away after this, not after a minute of hung health checks.
PG_CONNECT_TIMEOUT_S = 10
#: How often a PostgreSQL write that lost a deadlock or a serialization race is tried, in all.
PG_REPLAYS = 5
_REPLAYABLE = ("40P01", "40001")  # deadlock detected, serialization failure
#: SQLSTATEs of a server that is away rather than of a statement that failed: connection exceptions
#: (class 08), an administrator's or a crash's shutdown, a server starting up, too many connections.
_AWAY_STATES = ("57P01", "57P02", "57P03", "53300")
_AWAY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.EHOSTUNREACH,
                errno.ENETUNREACH, errno.ETIMEDOUT}
#: SQLite's words for a database file it cannot write at all (not a statement's fault).
_SQLITE_AWAY = ("database or disk is full", "disk i/o error", "unable to open database file")

_dumps = functools.partial(json.dumps, default=str, ensure_ascii=False)


def _json(value: Any) -> str:
    """JSON columns hold what providers sent: what JSON cannot carry is kept as text, never an error."""
    try:
        return _dumps(value)
    except (TypeError, ValueError):  # keys that are not strings, circular references
        return _dumps({"unserializable": repr(value)[:10_000]})


def is_outage(exc: BaseException) -> bool:
    """True if `exc` says the database is away (refused, dropped, restarting, its disk full), not that
    a statement was wrong: worth waiting for, not worth a traceback per message."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DatabaseUnavailable):
            return True
        if isinstance(e, ConnectionError) or (isinstance(e, OSError) and e.errno in _AWAY_ERRNOS):
            return True
        if isinstance(e, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):  # the pool's own wait too
            return True
        if isinstance(e, sa.exc.DBAPIError):
            if e.connection_invalidated:
                return True
            todo.append(e.orig)
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and (state.startswith("08") or state in _AWAY_STATES):
            return True
        if type(e).__name__ in ("ConnectionDoesNotExistError", "ConnectionFailureError") or (
                type(e).__name__ == "InterfaceError" and "connection is closed" in str(e)):
            return True  # asyncpg's, by name: this module does not import the driver
        if isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in _SQLITE_AWAY):
            return True
        todo += [e.__cause__, e.__context__]
    return False


class Reachability:
    """Whether the database answered its last caller: one log line when it goes away, one when it is
    back, and an event to wait on meanwhile, so a message-storing loop pauses instead of logging
    every message it could not store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: str | None = None
        self.down_since: float | None = None  # time.time()
        self._up: asyncio.Event | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> bool:
        """Note a failure; True (and the database marked down) if it is an outage, not a bad statement."""
        if not is_outage(exc):
            return False
        self.error = f"{type(exc).__name__}: {exc}"[:500]
        if self.down_since is None:
            self.down_since = time.time()
            if self._up is not None:
                self._up.clear()
            log.error("database %s unreachable (%s): customer messages stay with their providers and "
                      "replies in the outbox until it is back; retrying", self.name, self.error)
        return True

    @property
    def disk_full(self) -> bool:
        """Down because its disk filled up (SQLite): reads still work, only a write shows it is back."""
        return self.down and "full" in (self.error or "").lower()

    def ok(self, *, wrote: bool = True) -> None:
        """Note a success: the database answers (again). A read (`wrote=False`) does not end a full disk."""
        if self.down_since is None or (not wrote and self.disk_full):
            return
        log.warning("database %s reachable again after %.1f s; catching up", self.name,
                    time.time() - self.down_since)
        self.down_since, self.error = None, None
        if self._up is not None:
            self._up.set()

    async def wait_up(self) -> None:
        """Return once a caller (or the runtime's probe) found the database answering."""
        if self._up is None:
            self._up = asyncio.Event()
        if self.down:
            self._up.clear()
            await self._up.wait()

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"the database is unreachable ({self.error or exc})", wait=self.wait_up)


class Database:
    """The gateway's database, SQLite (aiosqlite, WAL) or PostgreSQL (asyncpg).

    `write()` is a transaction that intends to write: on SQLite it takes the write lock at BEGIN
    (BEGIN IMMEDIATE), so reads inside it see the state it will commit on top of, and two
    processes never interleave. On PostgreSQL the code asks for the row locks it needs.
    """

    def __init__(self, url: str | URL, *, pool_size: int = 5, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self._writer: GroupWriter | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._blocking: sa.Engine | None = None
        self._first: AsyncEngine | None = None
        self.reach = Reachability(self.safe_url)
        if self.is_sqlite:
            self._prepare_sqlite_file()
            self.engine: AsyncEngine = create_async_engine(
                self.url, echo=echo, json_serializer=_json, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
            )
            _install_sqlite_hooks(self.engine)
        else:
            self.engine = create_async_engine(
                self.url, echo=echo, json_serializer=_json, pool_size=pool_size, max_overflow=pool_size,
                pool_pre_ping=True, connect_args={"timeout": PG_CONNECT_TIMEOUT_S},
            )

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs."""
        return self.url.render_as_string(hide_password=True)

    @contextlib.asynccontextmanager
    async def write(self, *, first: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits on success and rolls back on any exception. `first`: on
        PostgreSQL, on a connection of its own that nothing else queues for (see `run_write`)."""
        engine = self._first_engine() if first and self.is_postgres else self.engine
        with self._watching(wrote=True):
            async with engine.connect() as conn:
                if self.is_sqlite:
                    conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot transaction, rolled back when the block ends."""
        with self._watching(wrote=False):
            async with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def _watching(self, *, wrote: bool) -> Iterator[None]:
        """Turn an outage into DatabaseUnavailable (after `reach` noted it) and note each success."""
        try:
            yield
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if self.reach.failed(exc):
                raise self.reach.unavailable(exc) from exc
            raise
        self.reach.ok(wrote=wrote)

    async def refresh_statistics(self) -> None:
        """Tell SQLite's planner the tables' shapes (a sampled ANALYZE: milliseconds on a million messages).

        Without statistics SQLite takes an equality on a status column for selective: ingest's lookup
        of a customer's live tickets then read every live ticket through the status index, a cost that
        grew with the backlog (bench/growth.py). PostgreSQL's autovacuum keeps its own statistics.
        """
        if not self.is_sqlite:
            return

        def analyze(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_ROWS}")
            conn.exec_driver_sql("ANALYZE")
        await self.run_write(analyze)

    async def probe(self, timeout: float = 5.0) -> bool:
        """One `SELECT 1`: True if the database answers (and `reach` is told either way). A SQLite file
        whose disk filled up still answers reads: it is back once that disk has room again."""
        if self.is_sqlite and self.reach.disk_full:
            try:
                free = (await asyncio.to_thread(shutil.disk_usage, self._sqlite_folder() or Path.cwd())).free
            except OSError:
                free = 0
            if free < SQLITE_ROOM_BYTES:
                return False
        try:
            async with asyncio.timeout(timeout), self.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (DatabaseUnavailable, TimeoutError) as exc:
            self.reach.failed(exc if isinstance(exc, DatabaseUnavailable) else ConnectionError(f"no answer in {timeout:.0f} s"))
            return False
        self.reach.ok()  # a full disk has room again (checked above), or the server answers
        return True

    async def run_write(self, work: Callable[[sa.Connection], T], *, first: bool = False) -> T:
        """Run `work` (plain, blocking SQLAlchemy calls) in a write transaction; return its result once committed.

        On SQLite `work` runs in this database's own writer thread on a blocking pysqlite
        connection, so its statements cost no event-loop round trip each, and works queued while
        a transaction is running share the next one (group commit): one lock and one fsync for
        many small writes. A work that raises is undone alone and its caller gets the exception;
        the others commit. A work may therefore run more than once before it commits: it must do
        nothing but database work, and leave anything else until it returns. On PostgreSQL, where writers
        do not queue for one lock, `work` runs in a transaction of its own on the async driver
        through SQLAlchemy's greenlet bridge; with `first` (storing customer messages) on a
        connection of its own, so it never waits in the pool's line behind dozens of jobs.
        """
        with self._watching(wrote=True):
            return await self._run_write(work, first=first)

    async def _run_write(self, work: Callable[[sa.Connection], T], *, first: bool) -> T:
        if not self.is_sqlite:
            for attempt in range(1, PG_REPLAYS + 1):
                try:
                    async with self.write(first=first) as conn:
                        return await conn.run_sync(work)
                except sa.exc.DBAPIError as exc:
                    # A deadlock or serialization failure rolled the whole transaction back: run it
                    # again (works are replayable, as above). Two writers that take the same rows in
                    # opposite orders (an agent's reply, a customer's message) then both get through.
                    if attempt == PG_REPLAYS or _sqlstate(exc) not in _REPLAYABLE:
                        raise
                    await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)
        if self._writer is None:
            self._writer = GroupWriter(self._blocking_engine(), name="kartabl-sqlite-writer")
        return await self._writer.submit(work)

    async def run_read(self, work: Callable[[sa.Connection], T]) -> T:
        """Run `work` (blocking SQLAlchemy reads) on one snapshot and return its result.

        On SQLite in a reader thread on a blocking connection (WAL readers never wait for the
        writer): one hand-off for the whole read instead of one per statement.
        """
        if not self.is_sqlite:
            async with self.read() as conn:
                return await conn.run_sync(work)
        if self._readers is None:
            self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="kartabl-sqlite-reader")
        engine = self._blocking_engine()
        with self._watching(wrote=False):
            return await asyncio.get_running_loop().run_in_executor(self._readers, _read_blocking, engine, work)

    def _first_engine(self) -> AsyncEngine:
        if self._first is None:
            self._first = create_async_engine(self.url, json_serializer=_json, pool_size=1, max_overflow=1,
                                              pool_pre_ping=True, connect_args={"timeout": PG_CONNECT_TIMEOUT_S})
        return self._first

    def _blocking_engine(self) -> sa.Engine:
        if self._blocking is None:
            self._blocking = sa.create_engine(
                self.url.set(drivername="sqlite"), json_serializer=_json, pool_size=4,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            _install_sqlite_hooks(self._blocking)
        return self._blocking

    def insert_many(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert `rows` inside `run_write` and return their new ids, in order.

        The ids are taken first, then the rows go in with them through `bulk_insert`: with
        RETURNING, SQLAlchemy would send one INSERT per row on SQLite (which promises no order of
        returned rows). SQLite numbers rows as max(id) + 1, and this transaction holds the write
        lock; PostgreSQL draws from the table's own sequence, as a default id would.
        """
        if not rows:
            return []
        if self.is_sqlite:
            first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one() + 1
            ids = list(range(first, first + len(rows)))
        else:
            ids = list(conn.execute(
                sa.text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"),
                {"table": table.name, "n": len(rows)}).scalars())
        self.bulk_insert(conn, table, [{**row, "id": i} for row, i in zip(rows, ids)])
        return ids

    def bulk_insert(self, conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows that all have the same keys, with one statement.

        On PostgreSQL as `INSERT ... SELECT unnest(array), ...`: one array per column, encoded by
        the driver, and one statement for the server to run, where an executemany is run row by row.
        """
        if not rows:
            return
        if self.is_sqlite:
            conn.execute(sa.insert(table), list(rows))
            return
        names = tuple(rows[0])
        conn.execute(_unnest_insert(table, names),
                     {f"c{n}": [row[name] for row in rows] for n, name in enumerate(names)})

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._first is not None:
            await self._first.dispose()
            self._first = None
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self._writer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        if self._blocking is not None:
            self._blocking.dispose()
            self._blocking = None

    def _sqlite_folder(self) -> Path | None:
        """The folder of the SQLite file; None in memory or for a `file:` URI."""
        database = self.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database).expanduser().parent
        return None

    def _prepare_sqlite_file(self) -> None:
        folder = self._sqlite_folder()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _read_blocking(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    with engine.connect() as conn:
        return work(conn)


class GroupWriter:
    """One thread that runs queued write works in order, as many as are waiting per transaction.

    SQLite has one write lock and pays an fsync per commit; writers that each took the lock in
    turn would wait on each other in SQLite's busy handler (sleeps of up to 100 ms). Here a work
    submitted while a transaction runs waits for the next one, which takes every work then
    waiting (up to MAX_GROUP): under load, many small writes cost one BEGIN and one COMMIT.
    """

    MAX_GROUP = 256

    def __init__(self, engine: sa.Engine, *, name: str) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[sa.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Work(work, future))
        return future

    def close(self) -> None:
        """Finish every work queued so far, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            closing = False
            while len(group) < self.MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                group.append(more)
            self._write(group)
            if closing:
                return

    def _write(self, group: list[_Work]) -> None:
        """Commit the group's works in one transaction; a work that raises is taken out and the rest run again.

        No savepoint per work (two more statements each, a tenth of a small write's cost): a
        failure rolls back the whole transaction, its work's caller gets the exception, and the
        others are replayed without it. Works only touch the database, so a replay is harmless.
        """
        while group:
            outcomes: list[Any] = []
            running: int | None = None  # the work under way, to blame for an exception
            try:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                    with conn.begin():
                        for running, item in enumerate(group):
                            outcomes.append(item.work(conn))
                        running = None
            except Exception as exc:
                if running is None:  # BEGIN or COMMIT failed: nothing of the group was written
                    for item in group:
                        item.settle(False, exc)
                    return
                group[running].settle(False, exc)
                del group[running]
                continue
            for item, value in zip(group, outcomes):
                item.settle(True, value)
            return


@dataclasses.dataclass(frozen=True, slots=True)
class _Work:
    work: Callable[[sa.Connection], Any]
    future: asyncio.Future[Any]

    def settle(self, ok: bool, value: Any) -> None:
        """Hand the outcome to the caller's event loop (a loop already closed has no one to tell)."""
        with contextlib.suppress(RuntimeError):
            self.future.get_loop().call_soon_threadsafe(self._set, ok, value)

    def _set(self, ok: bool, value: Any) -> None:
        if self.future.done():  # the caller was cancelled; the work ran all the same
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


@functools.lru_cache(maxsize=256)
def _unnest_insert(table: sa.Table, names: tuple[str, ...]) -> sa.Insert:
    """`INSERT INTO table (names) SELECT unnest(:c0), unnest(:c1), ...`, built once per table and columns:
    building it anew for every batch cost a tenth of an ingesting process's CPU on PostgreSQL."""
    columns = [sa.func.unnest(sa.bindparam(f"c{n}", type_=postgresql.ARRAY(_unbounded(table.c[name].type))))
               for n, name in enumerate(names)]
    return sa.insert(table).from_select(list(names), sa.select(*columns))


def _unbounded(type_: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """The column's type without a length: PostgreSQL silently cuts a value cast to varchar(n),
    where inserting it into the column refuses it."""
    return sa.String() if isinstance(type_, sa.String) and type_.length else type_


def _install_sqlite_hooks(engine: AsyncEngine | sa.Engine) -> None:
    engine = getattr(engine, "sync_engine", engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # We emit BEGIN ourselves (below); sqlite3's own implicit BEGIN skips SELECTs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a process crash. One fsync per batch.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
