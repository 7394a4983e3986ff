"""Pacing the bot's sends within Telegram's limits, so steady traffic never meets a 429."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable


#: Sends into a group keep this many of its window's sends for those asked `first` (a digest, an answer
#: to an agent): a burst of posts never leaves them waiting for the whole window to pass.
GROUP_RESERVE = 1
#: Windows a little longer than Telegram's: our clock starts a send before Telegram's does, and the
#: next one may reach it sooner than this one did; without a margin a full window meets a 429.
_MARGIN = 1.04


@dataclasses.dataclass(slots=True)
class _Slot:
    """One send in a window: when it left, and whether its answer is still awaited."""

    at: float
    open: bool = False

    def close(self, at: float) -> None:
        """The answer came at `at`: Telegram counted the send at some moment before it."""
        self.at, self.open = max(self.at, at), False


class Window:
    """At most `count` events in any `seconds`: when the next one may happen, and noting it.

    A send still awaiting its answer counts as made now (Telegram may take it at any moment until it
    answers); once answered, as made when the answer came. A slow network or a busy machine that
    delays one send to Telegram then delays the one `count` sends later too, instead of letting two
    land in one of Telegram's windows.
    """

    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds = count, seconds
        self._slots: collections.deque[_Slot] = collections.deque()

    def free_at(self, now: float, reserve: int = 0) -> float:
        """When an event may happen that leaves `reserve` of the window's events unused."""
        while self._slots and not self._slots[0].open and self._slots[0].at <= now - self.seconds:
            self._slots.popleft()
        allowed = max(1, self.count - reserve)
        if len(self._slots) < allowed:
            return now
        ends = sorted(now if slot.open else slot.at for slot in self._slots)
        return ends[len(ends) - allowed] + self.seconds

    def note(self, at: float, *, open: bool = False) -> _Slot:
        slot = _Slot(at, open)
        self._slots.append(slot)
        return slot

    @property
    def waiting(self) -> int:
        return len(self._slots)


class Pacer:
    """Spaces sends: one per `chat_interval` into a customer's chat, `group_count` per `group_window`
    into one group (all its topics together), `bot_per_second` in all; and after a 429, nothing to
    that chat (or, for a bot-wide one, anywhere) before its retry_after.

    Sends to one chat leave in the order they asked (a queue per chat): a customer's answers and a
    ticket's posts never overtake each other. A send asked `first` (a digest of new tickets) goes
    ahead of those waiting, into a group even past the one whose turn it is, and may use the
    GROUP_RESERVE sends of a group's window that the others leave, so the agents hear of a burst in
    seconds, before the burst's own posts drain.
    """

    def __init__(self, *, chat_interval: float, group_count: int, group_window: float, bot_per_second: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chat_interval = chat_interval
        self.group_count, self.group_window = group_count, group_window
        self.clock = clock
        self._bot = Window(bot_per_second, _MARGIN)
        self._chats: dict[int, Window] = {}
        self._turns: dict[int, _Turns] = collections.defaultdict(_Turns)
        self._paused: dict[int | None, float] = {}
        self._queued: collections.Counter[int] = collections.Counter()

    async def wait(self, chat_id: int, *, group: bool, first: bool = False) -> None:
        """Return when a send to `chat_id` is within every limit, and count it as sent now."""
        for slot in await self._take(chat_id, group, first, open=False):
            slot.close(slot.at)

    @contextlib.asynccontextmanager
    async def sending(self, chat_id: int, *, group: bool, first: bool = False) -> AsyncIterator[None]:
        """Enter when a send to `chat_id` is within every limit; make the request inside. It counts as
        sent until the answer came (when the block ends), however long Telegram took."""
        slots = await self._take(chat_id, group, first, open=True)
        try:
            yield
        finally:
            done = self.clock()
            for slot in slots:
                slot.close(done)

    async def _take(self, chat_id: int, group: bool, first: bool, *, open: bool) -> list[_Slot]:
        self._queued[chat_id] += 1
        turns = self._turns[chat_id]
        try:
            if first and group and self.group_count > GROUP_RESERVE:
                # Not behind the turn's holder: in a full group window it sleeps most of a minute for a
                # slot of the budget, while this one may use the slot every window keeps for it.
                return await self._turn(chat_id, self._window(chat_id, group), 0, open)
            await turns.take(first)
            try:
                return await self._turn(chat_id, self._window(chat_id, group),
                                        0 if first or not group else GROUP_RESERVE, open)
            finally:
                turns.give()
        finally:
            self._queued[chat_id] -= 1

    async def _turn(self, chat_id: int, window: Window, reserve: int, open: bool) -> list[_Slot]:
        while True:
            now = self.clock()
            ready = max(now, window.free_at(now, reserve), self._bot.free_at(now),
                        self._paused.get(chat_id, 0.0), self._paused.get(None, 0.0))
            if ready <= now:
                return [window.note(now, open=open), self._bot.note(now, open=open)]
            await asyncio.sleep(ready - now)

    def expected_wait(self, chat_id: int, *, group: bool) -> float:
        """Roughly how long a send to `chat_id` asked for now would wait: the sends queued before it
        at the chat's rate, then its window, a pause after a 429."""
        now = self.clock()
        window = self._window(chat_id, group)
        rate = window.seconds / window.count
        start = max(now, window.free_at(now, GROUP_RESERVE if group else 0), self._paused.get(chat_id, 0.0),
                    self._paused.get(None, 0.0))
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


class _Turns:
    """One chat's sends, one at a time: in the order they asked, except that a `first` one goes ahead."""

    def __init__(self) -> None:
        self._held = False
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    async def take(self, first: bool) -> None:
        if not self._held and not self._line:
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        (self._line.appendleft if first else self._line.append)(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # the turn was ours already: pass it on
                self.give()
            else:  # give() may have dropped it from the line already, as it drops every cancelled turn
                with contextlib.suppress(ValueError):
                    self._line.remove(turn)
            raise

    def give(self) -> None:
        """The holder is done: the next in line holds the turn now."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._held = False
