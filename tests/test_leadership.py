"""Scale-out on PostgreSQL: a channel with one consumer runs in the one process holding its lock, and
another process takes over within seconds of the holder's SIGKILL, losing and repeating nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest
import sqlalchemy as sa

from channels.telegram.standin import StandInTelegram, User
from gateway.leadership import RETRY_S, Leadership, LeadershipLost, lock_key
from tests.conftest import stored_inbound

TOKEN = "424242:scale-token"
TAKEOVER_LIMIT_S = 10.0


def _dsn(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_one_holder_at_a_time_and_the_next_takes_over_when_it_lets_go(pg_url: str) -> None:
    first, second = Leadership(pg_url, "channel:email"), Leadership(pg_url, "channel:email")
    other = Leadership(pg_url, "channel:sms")
    await first.acquire()
    waiting = asyncio.create_task(second.acquire())
    await asyncio.wait_for(other.acquire(), 5)  # another channel's lock is its own
    await asyncio.sleep(RETRY_S * 1.5)
    assert not waiting.done() and not second.held

    began = time.monotonic()
    await first.release()
    await asyncio.wait_for(waiting, RETRY_S * 3)
    assert second.held and time.monotonic() - began <= RETRY_S + 1
    await second.release()
    await other.release()


async def test_the_holder_gives_up_when_its_connection_is_cut(pg_url: str) -> None:
    holder = Leadership(pg_url, "channel:telegram")
    await holder.acquire()
    admin = await asyncpg.connect(_dsn(pg_url))
    try:  # the server ends the lock's session, as a failover or an administrator would
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND objid = $1::oid AND pid <> pg_backend_pid()", lock_key("channel:telegram") % 2**32)
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(holder.watch(), 10)
        assert not holder.held
    finally:
        await admin.close()


async def _gateway(server: StandInTelegram, db_url: str, tmp_path: Path, n: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "KARTABL_CONFIG": "", "KARTABL_DATABASE__URL": db_url, "KARTABL_HTTP__ENABLED": "false",
           "KARTABL_ATTACHMENTS__DIR": str(tmp_path / "files"), "KARTABL_CHANNELS__TELEGRAM__TOKEN": TOKEN,
           "KARTABL_CHANNELS__TELEGRAM__BASE_URL": server.base_url,
           "KARTABL_CHANNELS__TELEGRAM__BASE_FILE_URL": server.base_file_url,
           "KARTABL_CHANNELS__TELEGRAM__POLL_TIMEOUT": "1", "KARTABL_CHANNELS__TELEGRAM__ACKNOWLEDGE": "false",
           "KARTABL_WORKFLOWS__FILE": ""}
    with open(tmp_path / f"gateway-{n}.log", "wb") as log:  # the child keeps its own copy of the file
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=log)


async def _leader(db_url: str, children: list[asyncio.subprocess.Process]) -> asyncio.subprocess.Process | None:
    """The child whose database session holds the Telegram channel's lock (matched by its client port)."""
    conn = await asyncpg.connect(_dsn(db_url))
    try:
        port = await conn.fetchval(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = $1::oid",
            lock_key("channel:telegram") % 2**32)
    finally:
        await conn.close()
    if port is None:
        return None
    for child in children:
        if child.returncode is None and any(
                c.laddr and c.laddr.port == port for c in psutil.Process(child.pid).net_connections("tcp")):
            return child
    return None


@pytest.mark.slow
async def test_three_processes_one_reads_updates_and_another_takes_over_after_a_kill(
        pg_url: str, tmp_path: Path) -> None:
    server = StandInTelegram(TOKEN)
    await server.start()
    expected: list[str] = []
    stop_writing = asyncio.Event()

    async def customers_write() -> None:  # customers keep writing through the kill and the takeover
        n = 0
        while not stop_writing.is_set():
            user = User(20_000 + n % 30, f"مشتری {n % 30}")
            expected.append(f"{user.id}:{server.customer_text(user, f'پیام {n}')}")
            n += 1
            await asyncio.sleep(0.02)

    children = [await _gateway(server, pg_url, tmp_path, n) for n in range(3)]
    writing = asyncio.create_task(customers_write())
    try:
        leader = None
        for _ in range(500):
            leader = await _leader(pg_url, children)
            if leader is not None:
                break
            await asyncio.sleep(0.05)
        assert leader is not None, "no process took the lock: " + (tmp_path / "gateway-0.log").read_text()[-2000:]
        await asyncio.sleep(1.0)
        before = len(await stored_inbound(pg_url))
        assert before > 0

        leader.send_signal(signal.SIGKILL)
        await leader.wait()
        killed_at = time.monotonic()
        successor = None
        while successor is None and time.monotonic() - killed_at < TAKEOVER_LIMIT_S + 5:
            successor = await _leader(pg_url, children)
            await asyncio.sleep(0.05)
        takeover = time.monotonic() - killed_at
        assert successor is not None and successor is not leader
        assert takeover <= TAKEOVER_LIMIT_S, f"takeover took {takeover:.1f}s"
        print(f"\nleader killed; another process read updates again after {takeover:.1f}s")

        await asyncio.sleep(1.0)
        stop_writing.set()
        await writing
        deadline = time.monotonic() + 30
        while sorted(set(await stored_inbound(pg_url))) != sorted(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        stop_writing.set()
        await asyncio.gather(writing, return_exceptions=True)
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            await child.wait()
        await server.stop()

    stored = await stored_inbound(pg_url)
    assert len(expected) > 100
    assert sorted(stored) == sorted(expected)  # every message, none twice
    assert all(child.returncode == 0 for child in children if child is not leader)
