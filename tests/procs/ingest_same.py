"""Child of test_scaleout: ingests the same customers' messages as its siblings, in its own order.

Usage: python tests/procs/ingest_same.py DB_URL FILES_DIR SEED CUSTOMERS PER_CUSTOMER

Prints `ready`, waits for a line on stdin (so every process starts at once), ingests CUSTOMERS x
PER_CUSTOMER messages (`m-<customer>-<n>` from `c<customer>@example.com`) shuffled by SEED, a few at a
time, and prints after each ingest() returned `committed <provider_id> <message_id> <ticket_id>
<customer_id> new|dup`, or `failed <provider_id> <error>` before offering it again (as a provider
redelivers); then `done`.
"""

from __future__ import annotations

import asyncio
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
from gateway.messages import InboundMessage
from gateway.metrics import Metrics
from gateway.settings import JobSettings

CALLERS = 6  # small batches, so the processes' transactions interleave rather than one winning all
REDELIVERIES = 5


async def offer(ingestor: Ingestor, msg: InboundMessage, callers: asyncio.Semaphore) -> None:
    async with callers:
        for _ in range(REDELIVERIES):
            try:
                result = await ingestor.ingest(msg)
            except Exception as exc:
                print("failed", msg.provider_id, type(exc).__name__, flush=True)
                continue
            print("committed", msg.provider_id, result.message_id, result.ticket_id, result.customer_id,
                  "dup" if result.duplicate else "new", flush=True)
            return


async def main(db_url: str, files_dir: str, seed: int, customers: int, per_customer: int) -> None:
    offers = [InboundMessage(ChannelKind.EMAIL, f"m-{c}-{n}", Address.parse("email", f"c{c}@example.com"),
                             f"پیام {n} از مشتری {c}") for c in range(customers) for n in range(per_customer)]
    random.Random(seed).shuffle(offers)
    db = Database(db_url)
    ingestor = Ingestor(db, AttachmentStore(Path(files_dir), max_bytes=1000, max_count=1),
                        JobQueue(db, JobSettings()), Metrics())
    await ingestor.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    callers = asyncio.Semaphore(CALLERS)
    await asyncio.gather(*(offer(ingestor, msg, callers) for msg in offers))
    await ingestor.stop()
    await db.dispose()
    print("done", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, directory, seed_arg, customers_arg, per_arg = sys.argv[1:]
    asyncio.run(main(url, directory, int(seed_arg), int(customers_arg), int(per_arg)))
