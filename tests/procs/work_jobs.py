"""Child of test_scaleout: one gateway Worker running `test.record` jobs until SIGTERM.

Usage: python tests/procs/work_jobs.py DB_URL

Prints `ready` once its worker runs, and for each job, after the handler's work and before the job is
marked done: `ran <job_id> <pid> <start> <end>` (CLOCK_MONOTONIC seconds, comparable across processes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time

from gateway.db import Database
from gateway.jobs import Job, JobQueue
from gateway.metrics import Metrics
from gateway.settings import JobSettings
from gateway.worker import Handler, Worker

SETTINGS = JobSettings(concurrency=4, poll_interval=0.05, lease_seconds=30)


async def record(job: Job) -> None:
    start = time.monotonic()
    await asyncio.sleep(random.uniform(0.005, 0.02))  # long enough for another worker to try the same job
    print("ran", job.id, os.getpid(), f"{start:.6f}", f"{time.monotonic():.6f}", flush=True)


async def main(db_url: str) -> None:
    db = Database(db_url)
    worker = Worker(JobQueue(db, SETTINGS), {"test.record": Handler(run=record)}, SETTINGS, Metrics())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    running = asyncio.create_task(worker.run())
    print("ready", flush=True)
    await stop.wait()
    await worker.stop(grace=5)
    await running
    await db.dispose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1]))
