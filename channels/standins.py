"""What the providers' loopback stand-ins (Telegram, Kavenegar) share: a way for their test side to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Signal:
    """Wakes every waiter; plain (non-async) code can fire it, where a Condition needs its lock held."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """True once `predicate()` holds, rechecked at each fire; False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            return False
        return True
