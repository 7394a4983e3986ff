"""Parsing fetched mail off the event loop: a backlog in worker processes, everyday mail in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from channels.email.imap import Fetched
from channels.email.parse import ParsedEmail, UnparseableEmail, parse_email

log = logging.getLogger("kartabl.channels.email")

#: A batch this big goes to the worker processes; smaller ones (mail as it arrives) to a thread, at
#: once: handing a message to another process costs more than it saves until there are many.
POOL_FROM = 32
#: Seconds a parser process may take over a batch before it counts as hung, plus PER_MB per megabyte of
#: mail: parsing runs at about 1 ms per everyday email and 50 ms per MB of attachments, so only a
#: process that stopped (frozen, swapped out, its pipe lost) ever reaches it.
ANSWER_S = 30.0
PER_MB_S = 1.0

Parsed = ParsedEmail | UnparseableEmail


class WorkerGone(Exception):
    """A parser process ended or stopped answering."""


class Parsers:
    """Turns fetched batches into ParsedEmails, using `workers` processes for big ones.

    A parser thread shares the event loop's interpreter lock: while it parses, the IMAP reads and
    database writes of the same process wait. Draining a full mailbox is mostly parsing, so there
    the work goes to processes that run on the machine's other cores. They start with the channel;
    until they are up, and after one fails, batches are parsed in the thread (failed workers are
    replaced on the next big batch).
    """

    def __init__(self, *, own_domain: str, max_message_bytes: int, workers: int) -> None:
        self.own_domain = own_domain
        self.max_message_bytes = max_message_bytes
        self.workers = workers
        self._pool: list[_Worker] = []
        self._starting: asyncio.Task[list[_Worker]] | None = None
        self.in_processes = 0  # messages parsed by the worker processes so far
        self.answer_within = ANSWER_S

    def start(self) -> None:
        """Start the worker processes ahead of need (about 0.2 s); a backlog at start-up needs them at once."""
        if self.workers and not self._pool and self._starting is None:
            self._starting = asyncio.create_task(_start_workers(self.workers), name="kartabl-email-parsers")

    async def parse(self, fetched: Sequence[Fetched]) -> list[Parsed]:
        batch = list(fetched)
        if len(batch) >= POOL_FROM and self.workers and self._ready():
            try:
                return await self._in_processes(batch)
            except WorkerGone as exc:
                log.warning("an email parser process failed (%s); parsing in a thread until it is replaced", exc)
                await self.close()
        return await asyncio.to_thread(parse_batch, batch, self.own_domain, self.max_message_bytes)

    async def wait_started(self) -> bool:
        """Start the workers if need be, and wait until they are up (or failed to); True if they are."""
        self.start()
        if self._starting is not None:
            await asyncio.wait([self._starting])
        return self._ready()

    async def close(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, WorkerGone):
                self._pool += await starting
        pool, self._pool = self._pool, []
        await asyncio.gather(*(worker.stop() for worker in pool))

    def _ready(self) -> bool:
        """True once the workers are up; starts them if none are, or are starting."""
        starting = self._starting
        if starting is not None and starting.done():
            self._starting = None
            if starting.cancelled() or starting.exception() is not None:
                log.warning("email parser processes did not start: %r", None if starting.cancelled()
                            else starting.exception())
            else:
                self._pool = starting.result()
        if not self._pool:
            self.start()
        return bool(self._pool)

    async def _in_processes(self, batch: list[Fetched]) -> list[Parsed]:
        size = -(-len(batch) // len(self._pool))
        chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
        done = await asyncio.gather(*(
            worker.parse((chunk, self.own_domain, self.max_message_bytes),
                         self.answer_within + PER_MB_S * sum(len(f.raw) for f in chunk) / 1_048_576)
            for worker, chunk in zip(self._pool, chunks)))
        self.in_processes += len(batch)
        return [parsed for chunk in done for parsed in chunk]


async def _start_workers(count: int) -> list[_Worker]:
    started = await asyncio.gather(*(_Worker.start() for _ in range(count)), return_exceptions=True)
    workers = [w for w in started if isinstance(w, _Worker)]
    failed = [e for e in started if isinstance(e, BaseException)]
    if failed:
        await asyncio.gather(*(w.stop() for w in workers))
        raise failed[0]
    return workers


class _Worker:
    """One parser process, `python -m channels.email.parsing`: batches in on its stdin, results out.

    A plain child process rather than multiprocessing's: those import the program's main module
    (for `kartabl`, the whole gateway) before their first task, half a second on a busy machine;
    this one imports the parser alone.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._turn = asyncio.Lock()

    @classmethod
    async def start(cls) -> _Worker:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=2**24)
        worker = cls(process)
        try:
            if await worker._read() != "ready":
                raise WorkerGone("the parser process did not say it was ready")
        except BaseException:
            await worker.stop()
            raise
        return worker

    async def parse(self, task: tuple[list[Fetched], str, int], within: float) -> list[Parsed]:
        """The parse of `task`; WorkerGone if the process ended or gave no answer within `within` seconds
        (it is killed then: a late answer would be read as the next batch's)."""
        async with self._turn:
            try:
                async with asyncio.timeout(within):
                    self.process.stdin.write(_frame(task))
                    await self.process.stdin.drain()
                    return await self._read()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise WorkerGone(f"its input closed: {exc}") from exc
            except TimeoutError:
                await self.stop()
                raise WorkerGone(f"it gave no answer in {within:.1f} s") from None

    async def _read(self) -> Any:
        try:
            header = await self.process.stdout.readexactly(8)
            return pickle.loads(await self.process.stdout.readexactly(int.from_bytes(header, "big")))
        except asyncio.IncompleteReadError as exc:
            raise WorkerGone(f"it exited (status {self.process.returncode})") from exc

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(8, "big") + data


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


def _serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The worker's side: answer each batch read from `source` with its parse, until `source` ends."""
    sink.write(_frame("ready"))
    sink.flush()
    while header := source.read(8):
        batch, own_domain, max_message_bytes = pickle.loads(source.read(int.from_bytes(header, "big")))
        sink.write(_frame(parse_batch(batch, own_domain, max_message_bytes)))
        sink.flush()


if __name__ == "__main__":
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, EOFError, pickle.UnpicklingError):
        # The gateway went away mid-batch (killed): nobody is left to answer, nor to read a traceback
        # in its log. Leave without flushing the dead pipe again at exit.
        os._exit(0)
