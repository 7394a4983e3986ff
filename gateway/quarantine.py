"""The quarantine: provider payloads no parser could read, kept raw until an operator replays them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa

from gateway.db import Database
from gateway.ingest import Ingestor
from gateway.messages import InboundMessage, utcnow
from gateway.schema import quarantine

#: Reads one quarantined payload of a channel into a message, or raises ValueError saying why not.
Reader = Callable[[bytes], InboundMessage]


@dataclasses.dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    channel: str
    source: str | None
    reason: str
    size: int
    created_at: dt.datetime
    replayed_at: dt.datetime | None
    message_id: int | None


async def listing(db: Database, *, include_replayed: bool = False, limit: int = 100) -> list[Quarantined]:
    q = quarantine
    query = (sa.select(q.c.id, q.c.channel, q.c.source, q.c.reason, sa.func.length(q.c.raw), q.c.created_at,
                       q.c.replayed_at, q.c.message_id).order_by(q.c.id).limit(limit))
    if not include_replayed:
        query = query.where(q.c.replayed_at.is_(None))
    async with db.read() as conn:
        return [Quarantined(*row) for row in await conn.execute(query)]


async def raw_of(db: Database, item_id: int) -> bytes:
    async with db.read() as conn:
        raw = (await conn.execute(sa.select(quarantine.c.raw).where(quarantine.c.id == item_id))).scalar()
    if raw is None:
        raise LookupError(f"nothing in quarantine with id {item_id}")
    return bytes(raw)


async def replay(db: Database, ingestor: Ingestor, item_id: int, readers: dict[str, Reader],
                 clock: Callable[[], dt.datetime] = utcnow) -> tuple[bool, str]:
    """Read a quarantined payload again (with today's parser) and store it: (stored or was, what happened)."""
    q = quarantine
    async with db.read() as conn:
        row = (await conn.execute(sa.select(q.c.channel, q.c.raw, q.c.replayed_at).where(q.c.id == item_id))).first()
    if row is None:
        raise LookupError(f"nothing in quarantine with id {item_id}")
    if row.replayed_at is not None:
        return True, f"{item_id}: already replayed"
    reader = readers.get(row.channel)
    if reader is None:
        raise LookupError(f"{item_id}: channel {row.channel} has no reader for quarantined payloads")
    try:
        message = reader(bytes(row.raw))
    except ValueError as exc:
        async with db.write() as conn:
            await conn.execute(sa.update(q).where(q.c.id == item_id).values(reason=str(exc)[:4000]))
        return False, f"{item_id}: still unreadable: {exc}"
    result = await ingestor.ingest(message)
    async with db.write() as conn:
        await conn.execute(sa.update(q).where(q.c.id == item_id, q.c.replayed_at.is_(None))
                           .values(replayed_at=clock(), message_id=result.message_id))
    what = "already stored" if result.duplicate else "stored"
    return True, f"{item_id}: {what} on ticket {result.ticket_ref}"
