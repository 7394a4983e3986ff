"""Pacing the bot's sends within Telegram's limits, so steady traffic never meets a 429."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable


#: Windows a little longer than Telegram's: our clock starts a send before Telegram's does, and the
#: next one may reach it sooner than this one did; without a margin a full window meets a 429.
_MARGIN = 1.04


class Window:
    """At most `count` events in any `seconds`: when the next one may happen, and noting it."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds = count, seconds
        self._times: collections.deque[float] = collections.deque()

    def free_at(self, now: float) -> float:
        while self._times and self._times[0] <= now - self.seconds:
            self._times.popleft()
        return now if len(self._times) < self.count else self._times[0] + self.seconds

    def note(self, at: float) -> None:
        self._times.append(at)

    @property
    def waiting(self) -> int:
        return len(self._times)


class Pacer:
    """Spaces sends: one per `chat_interval` into a customer's chat, `group_count` per `group_window`
    into one group (all its topics together), `bot_per_second` in all; and after a 429, nothing to
    that chat (or, for a bot-wide one, anywhere) before its retry_after.

    Sends to one chat leave in the order they asked (a FIFO lock per chat): a customer's answers and
    a ticket's posts never overtake each other.
    """

    def __init__(self, *, chat_interval: float, group_count: int, group_window: float, bot_per_second: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chat_interval = chat_interval
        self.group_count, self.group_window = group_count, group_window
        self.clock = clock
        self._bot = Window(bot_per_second, _MARGIN)
        self._chats: dict[int, Window] = {}
        self._locks: dict[int, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._paused: dict[int | None, float] = {}
        self._queued: collections.Counter[int] = collections.Counter()

    async def wait(self, chat_id: int, *, group: bool) -> None:
        """Return when a send to `chat_id` is within every limit, and count it as sent."""
        self._queued[chat_id] += 1
        try:
            async with self._locks[chat_id]:
                await self._turn(chat_id, self._window(chat_id, group))
        finally:
            self._queued[chat_id] -= 1

    async def _turn(self, chat_id: int, window: Window) -> None:
        while True:
            now = self.clock()
            ready = max(now, window.free_at(now), self._bot.free_at(now),
                        self._paused.get(chat_id, 0.0), self._paused.get(None, 0.0))
            if ready <= now:
                window.note(now)
                self._bot.note(now)
                return
            await asyncio.sleep(ready - now)

    def expected_wait(self, chat_id: int, *, group: bool) -> float:
        """Roughly how long a send to `chat_id` asked for now would wait: the sends queued before it
        at the chat's rate, then its window, a pause after a 429."""
        now = self.clock()
        window = self._window(chat_id, group)
        rate = window.seconds / window.count
        start = max(now, window.free_at(now), self._paused.get(chat_id, 0.0), self._paused.get(None, 0.0))
        return start - now + self.backlog(chat_id) * rate

    def back_off(self, chat_id: int | None, seconds: float) -> None:
        """Telegram answered 429: hold sends to `chat_id` (None: every chat) for `seconds`."""
        until = self.clock() + seconds
        self._paused[chat_id] = max(self._paused.get(chat_id, 0.0), until)

    def backlog(self, chat_id: int) -> int:
        """Sends waiting for their turn in this chat (the one being paced included)."""
        return self._queued[chat_id]

    def _window(self, chat_id: int, group: bool) -> Window:
        window = self._chats.get(chat_id)
        if window is None:
            window = self._chats[chat_id] = (Window(self.group_count, self.group_window * _MARGIN) if group
                                             else Window(1, self.chat_interval * _MARGIN))
        return window
