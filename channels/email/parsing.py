"""Parsing fetched mail off the event loop: a backlog in worker processes, everyday mail in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from channels.email.imap import Fetched
from channels.email.parse import ParsedEmail, UnparseableEmail, parse_email

log = logging.getLogger("kartabl.channels.email")

#: A batch this big goes to the worker processes; smaller ones (mail as it arrives) to a thread, at
#: once: handing a message to another process costs more than it saves until there are many.
POOL_FROM = 32

Parsed = ParsedEmail | UnparseableEmail


class Parsers:
    """Turns fetched batches into ParsedEmails, using `workers` processes for big ones.

    A parser thread shares the event loop's interpreter lock: while it parses, the IMAP reads and
    database writes of the same process wait. Draining a full mailbox is mostly parsing, so there
    the work goes to processes that run on the machine's other cores. They start when the mailbox
    finds a backlog, while its first batch is being fetched; a pool that dies or does not start is
    closed, its batch parsed in the thread, and a new pool started for the next big batch.
    """

    def __init__(self, *, own_domain: str, max_message_bytes: int, workers: int) -> None:
        self.own_domain = own_domain
        self.max_message_bytes = max_message_bytes
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: asyncio.Future[None] | None = None

    def expect(self, count: int) -> None:
        """`count` messages are about to be fetched: start the worker processes now if they will be used."""
        if count >= POOL_FROM and self.workers:
            self._start()

    async def parse(self, fetched: Sequence[Fetched]) -> list[Parsed]:
        batch = list(fetched)
        if len(batch) >= POOL_FROM and self.workers:
            started = self._start()
            if started.done():  # until then, the thread parses: no batch waits for the processes
                try:
                    started.result()
                    return await self._in_processes(batch)
                except (BrokenProcessPool, OSError) as exc:  # a worker was killed (out of memory?)
                    log.warning("email parser processes unavailable (%s); parsing in a thread meanwhile",
                                str(exc) or type(exc).__name__)
                    self.close()
        return await asyncio.to_thread(parse_batch, batch, self.own_domain, self.max_message_bytes)

    def close(self) -> None:
        pool, self._pool, self._ready = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> asyncio.Future[None]:
        """The worker processes, started on the first call; the future is done when they are up."""
        if self._pool is None or self._ready is None:
            pool = self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=_context())
            # In a thread: the first submit starts the processes and waits for the fork server.
            self._ready = asyncio.ensure_future(asyncio.to_thread(_wait_ready, pool, self.workers))
        return self._ready

    async def _in_processes(self, batch: list[Fetched]) -> list[Parsed]:
        loop = asyncio.get_running_loop()
        size = -(-len(batch) // self.workers)
        chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
        done = await asyncio.gather(*(
            loop.run_in_executor(self._pool, parse_batch, chunk, self.own_domain, self.max_message_bytes)
            for chunk in chunks))
        return [parsed for chunk in done for parsed in chunk]


def _context() -> multiprocessing.context.BaseContext:
    """Where worker processes come from: a fork server that has imported the parser and nothing else.

    Not a plain fork: this process has threads (the database's), whose locks a fork would copy.
    Not spawn: each worker would import the program's main module, the whole gateway, first.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # not on Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def parse_batch(fetched: Sequence[Fetched], own_domain: str, max_message_bytes: int) -> list[Parsed]:
    """Each fetched message parsed, or the reason it cannot be (run in a thread or a worker process)."""
    return [_parse(item, own_domain, max_message_bytes) for item in fetched]


def _parse(item: Fetched, own_domain: str, max_message_bytes: int) -> Parsed:
    try:
        parsed = parse_email(item.raw, own_domains=[own_domain], received_at=item.internal_date)
    except UnparseableEmail as exc:
        return exc
    if item.headers_only:
        note = (f"\n\n[this message is {item.size / 1_048_576:.1f} MB, over the "
                f"{max_message_bytes / 1_048_576:.0f} MB limit: only its headers were read; "
                f"the full message is still in the mailbox]")
        parsed = dataclasses.replace(parsed, message=dataclasses.replace(
            parsed.message, text=parsed.message.text + note))
    return parsed


def _wait_ready(pool: concurrent.futures.ProcessPoolExecutor, workers: int) -> None:
    for started in [pool.submit(_ready) for _ in range(workers)]:
        started.result()


def _ready() -> None:
    """Run once in each new worker: it returns when the worker has imported the parser."""
