"""Coalescer: requests made while a fetch runs are answered by the next fetch, all at once."""

from __future__ import annotations

import asyncio

import pytest

from gateway.batch import Coalescer


async def test_requests_waiting_behind_a_fetch_share_the_next_one() -> None:
    fetched: list[list[int]] = []
    release = asyncio.Event()

    async def fetch(keys: list[int]) -> dict[int, str]:
        fetched.append(keys)
        await release.wait()
        return {k: f"v{k}" for k in keys if k != 3}

    coalescer = Coalescer(fetch)
    tasks = [asyncio.ensure_future(coalescer.get(0))]
    await asyncio.sleep(0)  # the first fetch is under way with key 0 alone
    tasks += [asyncio.ensure_future(coalescer.get(k)) for k in (1, 2, 3, 2)]
    release.set()

    assert await asyncio.gather(*tasks) == ["v0", "v1", "v2", None, "v2"]
    assert fetched == [[0], [1, 2, 3]]


async def test_a_failed_fetch_fails_every_request_it_was_for_and_the_next_ones_still_run() -> None:
    calls = 0

    async def fetch(keys: list[int]) -> dict[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database away")
        return {k: k for k in keys}

    coalescer = Coalescer(fetch)
    with pytest.raises(OSError, match="database away"):
        await coalescer.get(1)
    assert await coalescer.get(2) == 2
