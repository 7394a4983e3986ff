"""Child of test_crash: ingests messages with many concurrent callers until it is killed.

Usage: python tests/procs/ingest_forever.py DB_URL FILES_DIR ROUND SEED EARLIER_JSON

Prints `ready` once the database is migrated, `offered <provider_id>` before each ingest() and, only
after ingest() returned, `committed <provider_id> <message_id> <ticket_id> new|dup`; every line flushed.
EARLIER_JSON names a file {"confirmed": [...], "unconfirmed": [...]} of earlier rounds' provider ids:
the unconfirmed are offered again first, as a provider redelivers what was never acknowledged, and the
confirmed are offered again now and then, as providers do too. The job worker is not started, so every
workflow job stays in the table for the parent to count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
from pathlib import Path

from gateway.addresses import Address
from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import ChannelKind
from gateway.ingest import Ingestor
from gateway.jobs import JobQueue
from gateway.messages import InboundAttachment, InboundMessage
from gateway.metrics import Metrics
from gateway.migrate import upgrade
from gateway.settings import JobSettings

CALLERS = 48  # concurrent ingest() calls: batches of many messages, so a kill lands inside one
POOL = 150  # customers; each round meets many customers of earlier rounds again
TELEGRAM_BASE = 70_000
#: Attachments many messages share: stored once on disk, written concurrently by several callers.
SHARED_FILES = [bytes([n]) * 3000 + b"shared" for n in range(3)]


def customer_of(pid: str) -> int:
    """The customer (0..POOL-1) who sent message `pid`; the parent recomputes it to check identities."""
    return random.Random("customer:" + pid).randrange(POOL)


def attachments_for(pid: str) -> tuple[InboundAttachment, ...]:
    """The files sent with message `pid`, the same in every process (the parent checks them)."""
    rng = random.Random("files:" + pid)
    if rng.random() >= 0.3:
        return ()
    files = []
    for n in range(rng.randint(1, 3)):
        data = rng.choice(SHARED_FILES) if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 30_000))
        files.append(InboundAttachment(f"scan-{n}.bin", "application/octet-stream", data))
    return tuple(files)


def message_for(pid: str, in_reply_to: tuple[str, ...] = ()) -> InboundMessage:
    """Message `pid`: by email, or by Telegram with the sender's email shared (one customer either way)."""
    rng = random.Random("message:" + pid)
    who = customer_of(pid)
    email = Address.parse("email", f"c{who}@example.com")
    if rng.random() < 0.2:
        channel, sender, aka = ChannelKind.TELEGRAM, Address.parse("telegram", str(TELEGRAM_BASE + who)), (email,)
    else:
        channel, sender, aka = ChannelKind.EMAIL, email, ()
    return InboundMessage(channel, pid, sender, f"پیام {pid}: سفارشم هنوز نرسیده", subject=f"order {who}",
                          in_reply_to=in_reply_to, attachments=attachments_for(pid), also_known_as=aka)


class Offers:
    """What the callers offer next: redeliveries first, then new messages mixed with re-offers."""

    def __init__(self, round_no: int, seed: int, earlier: dict[str, list[str]]) -> None:
        self.round = round_no
        self.rng = random.Random(seed)
        self.redeliver = list(earlier["unconfirmed"])
        self.confirmed_before = list(earlier["confirmed"])
        self.confirmed_now: list[str] = []
        self.history: dict[int, list[str]] = {}
        self.seq = 0

    def next(self) -> InboundMessage:
        if self.redeliver:
            return message_for(self.redeliver.pop())
        roll = self.rng.random()
        if roll < 0.10 and self.confirmed_before:
            return message_for(self.rng.choice(self.confirmed_before))
        if roll < 0.15 and self.confirmed_now:
            return message_for(self.rng.choice(self.confirmed_now))
        self.seq += 1
        pid = f"r{self.round}-{self.seq}"
        earlier = self.history.get(customer_of(pid))
        # A follow-up quoting one of the customer's earlier messages, as mail clients do.
        replies = (self.rng.choice(earlier),) if earlier and self.rng.random() < 0.5 else ()
        return message_for(pid, replies)

    def confirmed(self, pid: str) -> None:
        self.confirmed_now.append(pid)
        self.history.setdefault(customer_of(pid), []).append(pid)


async def caller(ingestor: Ingestor, offers: Offers) -> None:
    while True:
        msg = offers.next()
        print("offered", msg.provider_id, flush=True)
        result = await ingestor.ingest(msg)
        print("committed", msg.provider_id, result.message_id, result.ticket_id,
              "dup" if result.duplicate else "new", flush=True)
        offers.confirmed(msg.provider_id)


async def main(db_url: str, files_dir: str, round_no: int, seed: int, earlier_json: str) -> None:
    earlier = json.loads(Path(earlier_json).read_text())
    db = Database(db_url)
    await upgrade(db)
    files = AttachmentStore(Path(files_dir), max_bytes=1_000_000, max_count=10)
    ingestor = Ingestor(db, files, JobQueue(db, JobSettings()), Metrics())
    await ingestor.start()
    print("ready", flush=True)
    offers = Offers(round_no, seed, earlier)
    # Runs until killed; a caller that fails ends the process with its traceback on stderr.
    await asyncio.gather(*(caller(ingestor, offers) for _ in range(CALLERS)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, directory, round_arg, seed_arg, earlier_arg = sys.argv[1:]
    asyncio.run(main(url, directory, int(round_arg), int(seed_arg), earlier_arg))
