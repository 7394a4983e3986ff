"""Disk and database faults: the database stopped for 30 s, the attachment directory's disk full. The
gateway says so once (health and log), holds every message where it is safe, and recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.crash import CHANNELS, Plan
from bench.outage import run as run_outage
from gateway.db import Database, Reachability, is_outage
from gateway.domain import Direction
from gateway.errors import DatabaseUnavailable
from gateway.migrate import upgrade
from gateway.schema import attachments, messages
from gateway.compose import build_runtime
from tests.conftest import eventually, inbound, make_settings
from tests.servers.postgres import PrivatePostgres, Unavailable
from tests.test_telegram import SARA, bot_server, start_bot_gateway  # noqa: F401 (fixtures)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own, which it may stop (never the shared one)."""
    try:
        server = PrivatePostgres.create()
    except (Unavailable, RuntimeError) as exc:
        pytest.fail(f"this test starts a private PostgreSQL server and could not: {exc}", pytrace=False)
    yield server
    server.destroy()


# -- telling an outage from a bad statement -------------------------------------------------------


def _dbapi(orig: BaseException, *, invalidated: bool = False) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("SELECT 1", None, orig, connection_invalidated=invalidated)


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server said {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("exc", "outage"), [
    (ConnectionRefusedError(111, "Connect call failed"), True),
    (_dbapi(ConnectionResetError(104, "reset")), True),
    (_dbapi(Exception("server closed the connection"), invalidated=True), True),
    (_dbapi(_PgError("57P01")), True),  # admin shutdown
    (_dbapi(_PgError("57P03")), True),  # the server is starting up
    (_dbapi(_PgError("08006")), True),  # connection failure
    (_dbapi(sqlite3.OperationalError("database or disk is full")), True),
    (_dbapi(_PgError("23505")), False),  # a unique violation is the statement's fault
    (_dbapi(_PgError("40P01")), False),  # a deadlock is replayed, not waited out
    (_dbapi(sqlite3.OperationalError("no such table: tickets")), False),
    (FileNotFoundError(2, "No such file", "/srv/files/ab/cd/x"), False),
    (ValueError("bad input"), False),
])
def test_an_outage_is_told_from_a_statement_that_failed(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage


async def test_the_log_says_once_that_the_database_is_away_and_once_that_it_is_back(
        caplog: pytest.LogCaptureFixture) -> None:
    reach = Reachability("postgresql://db.example/kartabl")
    caplog.set_level(logging.DEBUG, logger="kartabl.db")
    waiting = asyncio.create_task(reach.wait_up())
    await asyncio.sleep(0)
    assert waiting.done()  # nothing to wait for while it answers

    for _ in range(50):  # fifty callers fail during the outage
        assert reach.failed(ConnectionRefusedError(111, "Connect call failed"))
    assert not reach.failed(ValueError("a statement's own error"))
    waiting = asyncio.create_task(reach.wait_up())
    await asyncio.sleep(0.01)
    assert reach.down and not waiting.done()
    reach.ok()
    await asyncio.wait_for(waiting, 1)
    reach.ok()

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "ConnectionRefusedError" in lines[0] and caplog.records[0].levelname == "ERROR"
    assert "reachable again after" in lines[1]


async def test_the_database_raises_unavailable_while_stopped_and_works_again_once_started(
        private_pg: PrivatePostgres) -> None:
    db = Database(private_pg.url)
    try:
        await upgrade(db)
        await asyncio.to_thread(private_pg.stop)
        with pytest.raises(DatabaseUnavailable) as raised:
            await db.run_write(lambda conn: conn.execute(sa.text("SELECT 1")))
        assert db.reach.down and not await db.probe(timeout=2)
        waiting = asyncio.create_task(raised.value.wait())
        await asyncio.to_thread(private_pg.start)
        assert await db.probe()
        await asyncio.wait_for(waiting, 1)  # what waited for the database is told at once
        assert not db.reach.down
        async with db.read() as conn:  # the pool's dead connections are replaced, not reused
            assert (await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one() == 0
    finally:
        await db.dispose()


async def test_a_gateway_started_before_its_database_waits_for_it_then_starts(
        private_pg: PrivatePostgres, tmp_path: Path) -> None:
    await asyncio.to_thread(private_pg.stop)
    runtime = build_runtime(make_settings(private_pg.url, tmp_path))
    starting = asyncio.create_task(runtime.start())
    await asyncio.sleep(2.5)
    assert not starting.done() and not runtime.running
    await asyncio.to_thread(private_pg.start)
    try:
        await asyncio.wait_for(starting, 15)
        assert runtime.running
        result = await runtime.deliver(inbound("after-boot-1"))
        assert result.new_ticket
    finally:
        await runtime.stop()


# -- the database stopped for 30 s under a mixed burst ---------------------------------------------


@pytest.mark.slow
async def test_a_database_stopped_for_thirty_seconds_under_a_burst_loses_nothing_and_recovers_by_itself(
        tmp_path: Path) -> None:
    seed = int(os.environ.get("KARTABL_OUTAGE_SEED", random.randrange(1 << 30)))
    print(f"\noutage test, KARTABL_OUTAGE_SEED={seed}")
    outcome, outage = await run_outage(Plan(seed, per_channel=100, kills=0, replies=30), tmp_path, 30.0, say=print)
    print(outcome.summary(), outage.summary(), sep="\n")

    for channel in CHANNELS:  # every customer message once, every reply delivered once
        assert outcome.sent_in[channel] == outcome.stored_in[channel] == 100, outcome.summary()
    assert sum(outcome.replies_in.values()) == 30 and outcome.replies_delivered == outcome.replies_in
    assert not outcome.duplicates
    assert outage.detected_after is not None and outage.detected_after <= 5  # /healthz: "down" at once...
    assert outage.recovered_after is not None and outage.recovered_after <= 15  # ..."ok" soon after
    assert len(outage.unreachable_lines) == 1 and len(outage.back_lines) == 1 and not outage.tracebacks
    assert not outcome.failures, outcome.summary() + "\n" + outage.summary()


# -- the attachment directory's disk full -----------------------------------------------------------


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`: a disk that really fills (ENOSPC), as a full volume does."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"a full disk needs a tmpfs mount, which this user may not make: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_full_attachment_disk_holds_the_message_at_telegram_says_so_and_goes_on_once_freed(
        start_bot_gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001, F811
    caplog.set_level(logging.INFO)
    with _small_disk(tmp_path / "files", "2m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 64 * 1024))  # 64 KB left
        gw = await start_bot_gateway(acknowledge=False)
        gw.server.customer_text(SARA, "سلام، عکس بسته را می‌فرستم")
        await eventually(lambda: gw.count(messages, messages.c.direction == Direction.INBOUND), lambda n: n == 1)

        photo = b"\xff\xd8\xff\xe0JFIF-" + os.urandom(300_000)  # more than the disk has left
        gw.server.customer_update(SARA, photo=photo, caption="عکس بسته‌ی خراب")
        gw.server.customer_text(SARA, "این هم شماره سفارش: ۱۲۳۴")

        async def health() -> dict:
            return (await gw.runtime.health())[1]
        report = await eventually(health, lambda h: h["channels"]["telegram"]["state"] == "waiting for disk space")
        assert report["status"] == "degraded" and report["attachments"]["ok"] is False
        assert report["attachments"]["free_bytes"] < len(photo)
        await asyncio.sleep(1.5)  # held, in order: nothing after the photo is stored ahead of it
        assert await gw.count(messages, messages.c.direction == Direction.INBOUND) == 1
        held = [u.get("message", {}).get("text") or u.get("message", {}).get("caption") for u in gw.server.pending_updates]
        assert held[-2:] == ["عکس بسته‌ی خراب", "این هم شماره سفارش: ۱۲۳۴"]  # still Telegram's to give

        filler.unlink()  # the operator frees space; nobody restarts anything
        await eventually(lambda: gw.count(messages, messages.c.direction == Direction.INBOUND), lambda n: n == 3,
                         timeout=15)
        rows = await gw.rows(sa.select(messages.c.provider_id, messages.c.text).order_by(messages.c.id))
        assert [r.text for r in rows] == ["سلام، عکس بسته را می‌فرستم", "[photo]\nعکس بسته‌ی خراب",
                                         "این هم شماره سفارش: ۱۲۳۴"]
        kept = await gw.rows(sa.select(attachments.c.sha256, attachments.c.size, attachments.c.omitted))
        assert len(kept) == 1 and kept[0].omitted is None and kept[0].size == len(photo)
        assert gw.runtime.files.path_for(kept[0].sha256).read_bytes() == photo
        report = await eventually(health, lambda h: h["status"] == "ok")
        assert report["attachments"]["ok"] is True

    said = [r.getMessage() for r in caplog.records if r.name == "kartabl.attachments"]
    assert len(said) == 2 and "is full" in said[0] and "room again" in said[1], said
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


async def test_a_full_disk_under_the_sqlite_database_pauses_ingest_until_there_is_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kartabl.db")
    with _small_disk(tmp_path / "db", "6m") as disk:
        runtime = build_runtime(make_settings(f"sqlite+aiosqlite:///{disk / 'kartabl.db'}", tmp_path))
        await runtime.start()
        try:
            assert (await runtime.deliver(inbound("before"))).new_ticket
            filler = disk / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as fh:  # every byte the disk has left
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            with pytest.raises(DatabaseUnavailable):  # a message or two may fit in pages already there
                for n in range(200):
                    await runtime.deliver(inbound(f"while-full-{n}", text="پیام " * 2000))
            await asyncio.sleep(2.5)  # the probe reads fine, yet keeps it down: there is no room
            assert runtime.db.reach.down
            ok, health = await runtime.health()
            assert not ok and health["status"] == "down" and "full" in health["database"]["error"]

            filler.unlink()
            await eventually(lambda: _value(runtime.db.reach.down), lambda down: not down, timeout=10)
            result = await runtime.deliver(inbound("after"))
            assert result.new_ticket is False and not result.duplicate  # the same customer's ticket
        finally:
            await runtime.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "kartabl.db"]
    assert len(said) == 2 and "disk is full" in said[0] and "reachable again" in said[1], said


async def _value(value: object) -> object:
    return value
