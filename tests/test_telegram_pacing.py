"""The pacer: Telegram's windows kept, sends to one chat in order, a digest ahead of the line."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from channels.telegram.pacing import Pacer


def pacer(**overrides: float) -> Pacer:
    values = dict(chat_interval=0.05, group_count=3, group_window=0.3, bot_per_second=1000)
    values.update(overrides)
    return Pacer(**values)  # type: ignore[arg-type]


async def test_a_group_never_gets_more_than_its_count_in_any_window() -> None:
    p = pacer()
    stamps: list[float] = []

    async def send() -> None:
        await p.wait(-1, group=True)
        stamps.append(time.monotonic())

    await asyncio.gather(*(send() for _ in range(7)))
    for i in range(len(stamps) - 3):
        assert stamps[i + 3] - stamps[i] >= 0.3  # the 4th send after any send is a full window later


async def test_sends_to_one_chat_leave_in_order_and_a_first_one_goes_ahead_of_the_waiting() -> None:
    p = pacer(group_count=1, group_window=0.05)
    order: list[str] = []

    async def send(name: str, first: bool = False) -> None:
        await p.wait(-1, group=True, first=first)
        order.append(name)

    tasks = [asyncio.create_task(send(f"post {n}")) for n in range(4)]
    await asyncio.sleep(0.01)  # post 0 went; post 1 holds the turn, waiting for the window; 2 and 3 queue
    tasks.append(asyncio.create_task(send("digest", first=True)))
    await asyncio.gather(*tasks)
    assert order == ["post 0", "post 1", "digest", "post 2", "post 3"]


async def test_a_first_send_into_a_full_group_goes_past_the_holder_waiting_for_the_window() -> None:
    p = pacer(group_count=3, group_window=1.0)  # the others use 2 of each window, leaving 1 for a digest
    order: list[str] = []

    async def send(name: str, first: bool = False) -> None:
        await p.wait(-1, group=True, first=first)
        order.append(name)

    tasks = [asyncio.create_task(send(f"post {n}")) for n in range(4)]
    await asyncio.sleep(0.05)  # posts 0 and 1 went; post 2 holds the turn, asleep for the next window
    began = time.monotonic()
    await send("digest", first=True)
    assert time.monotonic() - began < 0.5 and order == ["post 0", "post 1", "digest"]
    await asyncio.gather(*tasks)
    assert order == ["post 0", "post 1", "digest", "post 2", "post 3"]


async def test_a_cancelled_waiter_whose_turn_was_dropped_already_ends_cancelled() -> None:
    p = pacer(group_count=1, group_window=0.05)
    await p.wait(-1, group=True)  # fills the window: the next send holds the turn, asleep for it
    holder = asyncio.create_task(p.wait(-1, group=True))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(p.wait(-1, group=True))
    await asyncio.sleep(0.01)
    waiter.cancel()  # its turn is cancelled at once; the holder finishes before the waiter runs again,
    p._turns[-1].give()  # and give() drops the cancelled turn from the line
    with pytest.raises(asyncio.CancelledError):
        await waiter
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder


async def test_a_cancelled_waiter_does_not_hold_up_the_line() -> None:
    p = pacer(group_count=1, group_window=0.05)
    done: list[int] = []

    async def send(n: int) -> None:
        await p.wait(-1, group=True)
        done.append(n)

    tasks = [asyncio.create_task(send(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait_for(send(3), 1)
    assert done == [0, 2, 3] and p.backlog(-1) == 0


async def test_a_429_holds_that_chat_only_and_the_expected_wait_counts_the_queue() -> None:
    p = pacer(group_count=1, group_window=0.2)
    p.back_off(-1, 0.3)
    assert p.expected_wait(-1, group=True) == pytest.approx(0.3, abs=0.05)
    started = time.monotonic()
    await p.wait(-2, group=True)  # another group is not held
    assert time.monotonic() - started < 0.1
    waiting = [asyncio.create_task(p.wait(-1, group=True)) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert p.expected_wait(-1, group=True) >= 0.25 + 2 * 0.2 * 0.9
    await asyncio.gather(*waiting)
    assert time.monotonic() - started >= 0.3 + 0.2


async def test_group_posts_leave_a_send_of_the_window_for_a_digest_or_an_answer() -> None:
    p = pacer(group_count=3, group_window=10)
    await p.wait(-1, group=True)
    await p.wait(-1, group=True)
    assert p.expected_wait(-1, group=True) > 9  # a third post waits for the window: its send is kept
    started = time.monotonic()
    await p.wait(-1, group=True, first=True)
    assert time.monotonic() - started < 0.1
    await p.wait(7, group=False)  # a customer's chat keeps nothing back
    assert p.expected_wait(7, group=False) == pytest.approx(0.05 * 1.04, abs=0.02)


async def test_a_send_counts_until_its_answer_so_a_slow_one_cannot_let_two_land_in_one_window() -> None:
    # Telegram stamps a send when it arrives, anywhere between our start and its answer. Counted from
    # the answer, the send `count` later starts a full window after Telegram can have counted this one.
    p = pacer(group_count=2, group_window=0.3)
    arrived: list[float] = []  # when "Telegram" took each send

    async def send(delay: float) -> None:
        async with p.sending(-1, group=True):
            await asyncio.sleep(delay)  # on the wire (a busy machine, a slow network)
            arrived.append(time.monotonic())

    await asyncio.gather(send(0.25), send(0.0), send(0.0), send(0.0))
    arrived.sort()
    for i in range(len(arrived) - 2):
        assert arrived[i + 2] - arrived[i] >= 0.3, arrived  # at most 2 in any 0.3 s, as Telegram counts
