"""Coalescing: many concurrent requests for one item each, answered by one query for all of them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """`get(key)` returns `fetch([key, ...])[key]`, or None when the mapping lacks it.

    The first request is fetched at once; requests made while a fetch runs wait for the next one,
    which takes them all (up to `max_batch`). Under load the cost of a query (on SQLite, a thread
    hand-off and a few statements) is shared by every request it answers. An exception from `fetch`
    is raised to every request of that batch.
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 500) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kartabl-coalescer")
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                keys = list(itertools.islice(self._waiting, self._max_batch))
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await self._fetch(keys)
                except asyncio.CancelledError:
                    _settle(batch, error=asyncio.CancelledError())
                    raise
                except Exception as exc:
                    _settle(batch, error=exc)
                else:
                    _settle(batch, found=found)
        finally:
            self._task = None
            if self._waiting:  # cancelled between batches: nobody is left to answer them
                waiting, self._waiting = self._waiting, {}
                _settle(waiting, error=asyncio.CancelledError())


def _settle(batch: Mapping[K, list[asyncio.Future[V | None]]], *, found: Mapping[K, V] | None = None,
            error: BaseException | None = None) -> None:
    for key, futures in batch.items():
        for future in futures:
            if future.done():  # its caller was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(found.get(key) if found is not None else None)
