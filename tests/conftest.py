"""Shared fixtures: a database per test (SQLite file, or a fresh PostgreSQL database), a running gateway."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import uuid
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from channels.loopback import LoopbackChannel, LoopbackSettings
from gateway.addresses import Address
from gateway.compose import build_runtime
from gateway.db import Database
from gateway.domain import ChannelKind, Direction
from gateway.messages import InboundMessage
from gateway.runtime import Runtime
from gateway.schema import messages
from gateway.settings import (
    AttachmentSettings, DatabaseSettings, HttpSettings, JobSettings, RuntimeSettings, Settings, WorkflowSettings,
)
from gateway.tickets import MessageView, TicketSummary

PG_ADMIN_URL = os.environ.get("KARTABL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _in_thread(coro_factory: Callable[[], Any]) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_factory()).result()


@pytest.fixture
def pg_url() -> Any:
    """A new, empty PostgreSQL database for this test, dropped afterwards. Fails loudly if unreachable."""
    import asyncpg

    name = f"kartabl_t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        _in_thread(create)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is needed by this test and is not reachable at {PG_ADMIN_URL}: {exc}. "
            "Start it, or point KARTABL_TEST_PG_URL at a server where this role may CREATE DATABASE.",
            pytrace=False,
        )
    base = sa.engine.make_url(PG_ADMIN_URL)
    yield base.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    _in_thread(drop)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kartabl.db'}"
    return request.getfixturevalue("pg_url")


def make_settings(db_url: str, tmp_path: Path, **sections: Any) -> Settings:
    """Settings for a test gateway: fast polling and retries, no HTTP unless asked."""
    defaults: dict[str, Any] = {
        "database": DatabaseSettings(url=db_url),
        "http": HttpSettings(enabled=False),
        "attachments": AttachmentSettings(dir=tmp_path / "files"),
        "jobs": JobSettings(poll_interval=0.05, backoff_base=0.05, backoff_cap=1.0, lease_seconds=5),
        "runtime": RuntimeSettings(shutdown_grace=5),
        "workflows": WorkflowSettings(file=""),  # no rules unless a test names a file
        "channels": {"loopback": LoopbackSettings(enabled=True)},
    }
    defaults.update(sections)
    return Settings(**defaults)


class RecordingDesk:
    """A desk that remembers what agents were shown."""

    def __init__(self) -> None:
        self.shown: asyncio.Queue[tuple[TicketSummary, MessageView]] = asyncio.Queue()
        self.said: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.announced: asyncio.Queue[str] = asyncio.Queue()

    async def show(self, ticket: TicketSummary, message: MessageView) -> None:
        await self.shown.put((ticket, message))

    async def say(self, ticket_id: int, text_html: str) -> None:
        await self.said.put((ticket_id, text_html))

    async def announce(self, text_html: str) -> None:
        await self.announced.put(text_html)

    async def next(self, timeout: float = 10) -> tuple[TicketSummary, MessageView]:
        return await asyncio.wait_for(self.shown.get(), timeout)


@dataclasses.dataclass
class Gateway:
    runtime: Runtime
    channel: LoopbackChannel
    desk: RecordingDesk

    async def scalar(self, query: sa.Executable) -> Any:
        async with self.runtime.db.read() as conn:
            return (await conn.execute(query)).scalar()

    async def rows(self, query: sa.Executable) -> list[Any]:
        async with self.runtime.db.read() as conn:
            return (await conn.execute(query)).all()

    async def count(self, table: sa.Table, *where: Any) -> int:
        return await self.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


@pytest.fixture
async def start_gateway(db_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start gateways on this test's database with the loopback channel; all stopped after the test."""
    started: list[Runtime] = []

    async def start(**sections: Any) -> Gateway:
        channel, desk = LoopbackChannel(), RecordingDesk()
        runtime = build_runtime(make_settings(db_url, tmp_path, **sections),
                                channels={ChannelKind.LOOPBACK: channel}, desks=[desk])
        await runtime.start()
        started.append(runtime)
        return Gateway(runtime, channel, desk)

    yield start
    for runtime in started:
        if runtime.running:
            await runtime.stop()


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any]) -> Gateway:
    return await start_gateway()


def inbound(provider_id: str, sender: str = "email:sara@example.com", text: str = "سلام، سفارشم نرسیده",
            channel: ChannelKind = ChannelKind.LOOPBACK, **fields: Any) -> InboundMessage:
    kind, _, value = sender.partition(":")
    aka = tuple(Address.parse(*a.split(":", 1)) for a in fields.pop("also_known_as", ()))
    return InboundMessage(channel, provider_id, Address.parse(kind, value), text, also_known_as=aka, **fields)


async def stored_inbound(db_url: str) -> list[str]:
    """The provider ids of every customer message a gateway (another process) stored in `db_url`."""
    db = Database(db_url)
    try:
        async with db.read() as conn:
            return list((await conn.execute(sa.select(messages.c.provider_id)
                                            .where(messages.c.direction == Direction.INBOUND))).scalars())
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # the first child has not created the schema yet
        return []
    finally:
        await db.dispose()


T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], until: Callable[[T], bool] = bool,
                     timeout: float = 10.0) -> T:
    """Re-run `probe` until `until(result)` holds; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.02)


from tests.servers.fixtures import dovecot, dovecot_factory, smtp_sink  # noqa: F401
