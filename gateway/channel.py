"""What the core expects of a channel adapter and of an agents' desk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.domain import ChannelKind
from gateway.messages import InboundMessage, IngestResult, OutboundMessage, Receipt

if TYPE_CHECKING:
    from gateway.tickets import MessageView, TicketSummary

#: The core's ingest, handed to a channel: returns only after the message is committed. What the runtime
#: actually hands over is a `gateway.inlet.Inlet`, which also takes delivery reports, quarantines
#: unreadable payloads and keeps a channel's cursor; a channel that needs those annotates it so.
Deliver = Callable[[InboundMessage], Awaitable[IngestResult]]


@runtime_checkable
class Channel(Protocol):
    """A provider adapter. Its life: start(deliver) ... stop(); send() at any time in between.

    `start` runs the channel's listening loop and returns only after `stop` (raising if it crashed;
    the runtime restarts it with backoff). It hands each customer message to `deliver` and
    acknowledges the provider only after `deliver` returned. `send` returns a Receipt or raises
    TransientError, PermanentError or AuthError; it never swallows a failure.

    A channel that receives pushes (webhooks) also has `routes() -> Sequence[starlette BaseRoute]`,
    which the gateway's HTTP app serves. A channel that keeps its own connection may have
    `describe() -> dict` for /healthz; a "state" other than "running" there marks the gateway degraded.
    A channel that limits a reply's length (SMS) may have `fits(text) -> bool`: a reply that does not
    fit also goes, whole, to the customer's email or Telegram when they have one.
    A channel whose `send` holds resources (a client session) may have `close()`, which the runtime
    awaits after the job workers stopped, since their sends use the channel until then.
    """

    kind: ChannelKind

    async def start(self, deliver: Deliver) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, message: OutboundMessage) -> Receipt: ...


class Desk(Protocol):
    """Where agents see tickets (the Telegram group; the demo's scripted agent)."""

    async def show(self, ticket: TicketSummary, message: MessageView) -> None:
        """Present one new customer message of `ticket`; raise TransientError to be retried."""
