"""Our aioimaplib protocol reads a FETCH answer exactly as the library's own does, however the bytes arrive."""

from __future__ import annotations

import asyncio
import random

import aioimaplib
import pytest
from aioimaplib import aioimaplib as stock

from channels.email.imap import _Protocol, parse_fetch


class _Wire(asyncio.Transport):
    """A transport that keeps what the client writes (its commands)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _answer(tag: bytes, mails: list[bytes]) -> bytes:
    """What an IMAP server sends for `UID FETCH 1:n (UID INTERNALDATE BODY.PEEK[])`."""
    parts = [b"* %d FETCH (UID %d INTERNALDATE \"17-Jul-2026 09:30:00 +0330\" BODY[] {%d}\r\n%s)\r\n"
             % (n, n, len(mail), mail) for n, mail in enumerate(mails, 1)]
    parts.append(b"* 7 EXISTS\r\n")  # news of a new message, in the middle of our command's answer
    return b"".join(parts) + tag + b" OK Fetch completed.\r\n"


async def _read(protocol: aioimaplib.IMAP4ClientProtocol, mails: list[bytes], cut: list[float]) -> aioimaplib.Response:
    """The answer fed to `protocol` in pieces, cut at these fractions of its length."""
    wire = _Wire()
    protocol.connection_made(wire)
    protocol.state = stock.SELECTED
    fetching = asyncio.ensure_future(protocol.fetch("1:*", "(UID INTERNALDATE BODY.PEEK[])", by_uid=True))
    await asyncio.sleep(0)
    tag = wire.sent[0].split(b" ", 1)[0]
    data = _answer(tag, mails)
    cuts = sorted({max(1, int(f * len(data))) for f in cut})
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        protocol.data_received(data[start:end])
    return await asyncio.wait_for(fetching, 5)


@pytest.mark.parametrize("seed", range(20))
async def test_a_fetch_answer_cut_anywhere_reads_the_same_as_with_aioimaplib(seed: int) -> None:
    rng = random.Random(seed)
    mails = [b"Subject: %d (note)\r\n\r\n" % n + b"(((" * rng.randint(0, 3) + b"x\r\n" * rng.randint(0, 50)
             + b")" * rng.randint(0, 4) for n in range(rng.randint(1, 12))]
    cut = [rng.random() for _ in range(rng.randint(0, 40))]
    loop = asyncio.get_running_loop()

    theirs = await _read(stock.IMAP4ClientProtocol(loop), mails, cut)
    ours = await _read(_Protocol(loop), mails, cut)

    assert ours.result == theirs.result == "OK"
    assert ours.lines == theirs.lines
    assert [f.raw for f in parse_fetch(ours.lines)] == mails


async def test_a_large_batch_in_one_read_needs_no_recursion() -> None:
    # The library's reader calls itself once per line: a read of 3,000 lines passes Python's limit.
    mails = [b"Subject: %d\r\n\r\nhi\r\n" % n for n in range(1_000)]
    ours = await _read(_Protocol(asyncio.get_running_loop()), mails, [])
    assert [f.uid for f in parse_fetch(ours.lines)] == list(range(1, 1_001))
