"""Database.run_write: writes queued together share a transaction, and one that fails is undone alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event

from gateway.db import Database
from gateway.messages import utcnow
from gateway.migrate import upgrade
from gateway.schema import channel_state


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    # A bare database: no gateway whose worker would write in the middle of what a test counts.
    database = Database(db_url)
    await upgrade(database)
    yield database
    await database.dispose()


async def _names(db: Database) -> set[str]:
    async with db.read() as conn:
        return set((await conn.execute(sa.select(channel_state.c.name))).scalars())


def _save(name: str, *, fail: bool = False):  # noqa: ANN202
    def work(conn: sa.Connection) -> str:
        conn.execute(sa.insert(channel_state), {"name": name, "value": {"n": name}, "updated_at": utcnow()})
        if fail:
            raise ValueError(f"{name} refused")
        return name
    return work


async def test_a_failing_write_is_undone_alone_and_its_caller_told(db: Database) -> None:
    results = await asyncio.gather(
        *(db.run_write(_save(f"w{n}", fail=n == 7)) for n in range(20)), return_exceptions=True)

    assert [r for r in results if isinstance(r, Exception)] and str(results[7]) == "w7 refused"
    assert [r for n, r in enumerate(results) if n != 7] == [f"w{n}" for n in range(20) if n != 7]
    assert await _names(db) == {f"w{n}" for n in range(20) if n != 7}


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    # Group commit is SQLite's alone: PostgreSQL writers do not queue for one lock.
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    await upgrade(database)
    yield database
    await database.dispose()


async def test_sqlite_writes_queued_behind_a_running_one_commit_together(sqlite_db: Database) -> None:
    db = sqlite_db
    begun: list[str] = []

    def count_begins(conn: sa.Connection, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            begun.append(statement)

    running, release = threading.Event(), threading.Event()

    def slow(conn: sa.Connection) -> str:
        running.set()
        release.wait(10)
        return _save("first")(conn)

    event.listen(Engine, "before_cursor_execute", count_begins)
    try:
        first = asyncio.ensure_future(db.run_write(slow))
        await asyncio.to_thread(running.wait, 10)
        queued = [asyncio.ensure_future(db.run_write(_save(f"q{n}", fail=n == 3))) for n in range(50)]
        release.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
    finally:
        event.remove(Engine, "before_cursor_execute", count_begins)

    # The slow one's transaction; one for all fifty queued behind it, which q3 broke; the rest again.
    assert len(begun) == 3
    assert isinstance(results[4], ValueError)
    assert await _names(db) == {"first"} | {f"q{n}" for n in range(50) if n != 3}


async def test_two_postgresql_writes_that_deadlock_both_get_through(pg_url: str) -> None:
    # Two works take the same two rows in opposite orders: PostgreSQL kills one transaction (deadlock
    # detected); run_write runs that one again, and both commit.
    db = Database(pg_url)
    await upgrade(db)
    try:
        await db.run_write(lambda conn: [_save(n)(conn) for n in ("a", "b")])
        runs = {"ab": 0, "ba": 0}

        def crossing(first: str, second: str):  # noqa: ANN202
            def work(conn: sa.Connection) -> None:
                runs[first + second] += 1
                for n, name in enumerate((first, second)):
                    conn.execute(sa.update(channel_state).where(channel_state.c.name == name).values(
                        value={"by": first + second}, updated_at=utcnow()))
                    if n == 0:
                        conn.execute(sa.select(sa.func.pg_sleep(0.3)))  # both hold their first row now
            return work

        await asyncio.gather(db.run_write(crossing("a", "b")), db.run_write(crossing("b", "a")))
        assert sorted(runs.values()) == [1, 2]  # one was the deadlock's victim and ran again
        async with db.read() as conn:
            values = (await conn.execute(sa.select(channel_state.c.value).order_by(channel_state.c.name))).scalars().all()
        assert values[0] == values[1]  # the replayed one wrote both rows last
    finally:
        await db.dispose()
