"""The loopback channel: an in-process provider for the demo and for tests of the core.

Its provider side is a pair of in-memory mailboxes: `write()` is a customer sending a message (answered
once the gateway committed it, as a real provider is acknowledged), and `received` is what customers got.
It behaves as providers do: a message the gateway failed to take is offered again, and `fail_next_send`
makes the next sends fail the way a provider can.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging

from gateway.channel import Deliver
from gateway.domain import ChannelKind
from gateway.errors import ChannelError
from gateway.messages import InboundMessage, IngestResult, OutboundMessage, Receipt
from gateway.settings import ChannelSettings

log = logging.getLogger("kartabl.channels.loopback")

#: Seconds before a message the gateway did not take is offered again.
REDELIVERY_DELAY_S = 0.5
_CONCURRENCY = 64


@dataclasses.dataclass(frozen=True)
class LoopbackSettings(ChannelSettings):
    """No credentials: the loopback channel runs only where `enabled = true` (the demo, tests)."""


class LoopbackChannel:
    kind = ChannelKind.LOOPBACK

    def __init__(self, settings: LoopbackSettings | None = None) -> None:
        self.settings = settings or LoopbackSettings(enabled=True)
        self.received: list[OutboundMessage] = []
        self.receipts: list[Receipt] = []  # what the provider answered for each of `received`
        self._waiting: collections.deque[tuple[InboundMessage, asyncio.Future[IngestResult]]] = collections.deque()
        self._arrived = asyncio.Event()
        self._sent = asyncio.Condition()
        self._failures: collections.deque[ChannelError] = collections.deque()
        self._stopping = asyncio.Event()
        self._sequence = 0

    # -- the customer's side ------------------------------------------------------------------

    async def write(self, message: InboundMessage) -> IngestResult:
        """A customer sends `message`; returns once the gateway has committed it."""
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        self._arrived.set()
        return await future

    async def next_received(self, count: int = 1, timeout: float = 10.0) -> list[OutboundMessage]:
        """Wait until customers have received `count` more messages than were read so far."""
        async with self._sent:
            await asyncio.wait_for(self._sent.wait_for(lambda: len(self.received) >= count), timeout)
            return list(self.received)

    def fail_next_send(self, *errors: ChannelError) -> None:
        """The next sends raise these errors, one each, as a provider might."""
        self._failures.extend(errors)

    # -- the Channel contract -----------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        self._stopping.clear()
        slots = asyncio.Semaphore(_CONCURRENCY)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                if not self._waiting:
                    self._arrived.clear()
                    stop = asyncio.create_task(self._stopping.wait())
                    arrive = asyncio.create_task(self._arrived.wait())
                    await asyncio.wait({stop, arrive}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    arrive.cancel()
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._offer(deliver, *self._waiting.popleft(), slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _offer(self, deliver: Deliver, message: InboundMessage,
                     future: asyncio.Future[IngestResult], slots: asyncio.Semaphore) -> None:
        try:
            result = await deliver(message)
        except Exception as exc:  # not acknowledged: the provider keeps it and offers it again
            log.warning("gateway did not take %s (%s); offering it again", message.provider_id, exc)
            await asyncio.sleep(REDELIVERY_DELAY_S)
            self._waiting.append((message, future))
            self._arrived.set()
        else:
            if not future.done():
                future.set_result(result)
        finally:
            slots.release()

    async def stop(self) -> None:
        self._stopping.set()

    async def send(self, message: OutboundMessage) -> Receipt:
        if self._failures:
            raise self._failures.popleft()
        self._sequence += 1
        receipt = Receipt(provider_id=f"loop-out-{self._sequence}", thread_key=f"loop-out-{self._sequence}")
        async with self._sent:
            self.received.append(message)
            self.receipts.append(receipt)
            self._sent.notify_all()
        return receipt
