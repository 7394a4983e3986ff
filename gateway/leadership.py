"""Leadership on PostgreSQL: work that must have one consumer (an IMAP mailbox, a getUpdates loop, SMS
polling) runs in the one process holding a session advisory lock, on a connection of its own.

The lock lives as long as that connection: a process killed with SIGKILL loses it the moment the kernel
closes its socket, and a waiting process takes it at its next try (every `RETRY_S`). The holder checks
its connection every `CHECK_S` and gives the work up when the connection fails, since the server may
already have handed the lock on. Everything else (ingest, jobs, the outbox, webhooks) runs in every
process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib

import asyncpg
import sqlalchemy as sa

log = logging.getLogger("kartabl.leadership")

#: How often a waiting process tries for the lock, and the holder checks its connection (seconds).
RETRY_S = 2.0
CHECK_S = 2.0
#: The first key of Kartabl's two-key advisory locks (the second names the work), so they never
#: collide with the single-key locks the assignment takes.
_NAMESPACE = 0x6B617274  # "kart"


class LeadershipLost(Exception):
    """The lock's connection failed: another process may hold the lock now."""


def lock_key(name: str) -> int:
    """The advisory lock's second key for a piece of work (a channel's kind), stable across processes."""
    return zlib.crc32(name.encode()) - 2**31  # an int4, as the two-key form takes


class Leadership:
    """One piece of work's lock: `await acquire()`, then `await watch()` while doing the work."""

    def __init__(self, url: sa.engine.URL | str, name: str) -> None:
        self._dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.name = name
        self._key = lock_key(name)
        self._conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def acquire(self) -> None:
        """Return once this process holds the lock; waits as long as another one does."""
        told = unreachable = False
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                # Said once per wait: the database's own outage line tells the rest.
                log.log(logging.DEBUG if unreachable else logging.WARNING,
                        "%s: cannot reach PostgreSQL for the leadership lock (%s)", self.name, exc)
                unreachable = True
            else:
                try:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _NAMESPACE, self._key):
                        self._conn = conn
                        log.info("%s: this process leads it now", self.name)
                        return
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("%s: leadership lock not taken (%s)", self.name, exc)
                await _close(conn)
                if not told:
                    log.info("%s: another process leads it; standing by", self.name)
                    told = True
            await asyncio.sleep(RETRY_S)

    async def watch(self) -> None:
        """Raise LeadershipLost when the lock's connection fails; never returns otherwise."""
        assert self._conn is not None, "watch() before acquire()"
        while True:
            await asyncio.sleep(CHECK_S)
            try:
                await self._conn.fetchval("SELECT 1", timeout=CHECK_S * 2)
            except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
                await self.release()
                raise LeadershipLost(f"{self.name}: the leadership lock's connection failed ({exc})") from None

    async def release(self) -> None:
        """Give the lock up (closing its connection ends the session, and the lock with it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5)
    if not conn.is_closed():
        conn.terminate()
