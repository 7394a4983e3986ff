"""TelegramChannel: the customer bot's getUpdates loop, stored before confirmed, and replies to customers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Protocol

from channels.telegram.bot import BotApi
from channels.telegram.settings import TelegramSettings
from channels.telegram.text import TEXT_LIMIT, split_text
from channels.telegram.updates import (
    AgentMessage, ButtonPress, CustomerMessage, Greeting, Ignored, Parsed, UnreadableUpdate, parse_update,
)
from gateway.domain import ChannelKind
from gateway.errors import AuthError, ChannelError, KartablError, PermanentError, TransientError
from gateway.inlet import Inlet
from gateway.messages import InboundAttachment, OutboundMessage, Receipt
from workflows.templates import greeting

log = logging.getLogger("kartabl.channels.telegram")

#: Where the loop keeps the next update id to ask for (Telegram's offset), in channel_state.
OFFSET_STATE = "telegram:offset"
_BACKOFF_CAP_S = 60.0


class AgentDesk(Protocol):
    """What the channel hands the agents' updates to (channels.telegram.desk.TelegramDesk)."""

    chats: frozenset[int]

    async def handle(self, update: AgentMessage | ButtonPress, update_id: int) -> None: ...


class TelegramChannel:
    """Customers write to the bot; the bot answers them. Agents' group updates go to the desk.

    python-telegram-bot's own polling confirms updates to Telegram before its handlers run, so a
    crash would lose them. Here each batch from getUpdates is handled (customer messages committed
    as tickets, agents' actions done) before the next call's offset confirms it; the offset is
    stored only after that, and a batch read again after a crash is harmless: ingest drops messages
    it has, and agents' actions are recorded with the update they came from.
    """

    kind = ChannelKind.TELEGRAM

    def __init__(self, settings: TelegramSettings) -> None:
        self.settings = settings
        self.api = BotApi(settings)
        self.desk: AgentDesk | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self._inlet: Inlet | None = None
        self._stopping = asyncio.Event()

    def attach_desk(self, desk: AgentDesk) -> None:
        self.desk = desk

    def describe(self) -> dict[str, object]:
        if self.state in ("polling", "starting"):
            return {"updates": self.state}
        return {"state": self.state, "updates": self.state, "last_error": self.last_error}

    async def start(self, deliver: Inlet) -> None:
        self._inlet = deliver
        self._stopping.clear()
        await self.api.open()
        await self._poll(deliver)

    async def _poll(self, deliver: Inlet) -> None:
        offset = await deliver.load_state(OFFSET_STATE)
        failures = 0
        while not self._stopping.is_set():
            try:
                updates = await self._next(offset)
                if updates is None:
                    break
                for update in updates:
                    await self._handle(update)
                if updates:
                    offset = updates[-1]["update_id"] + 1
                    await deliver.save_state(OFFSET_STATE, offset)
                self.state, failures = "polling", 0
            except AuthError:
                self.state = "stopped"
                raise
            except ChannelError as exc:  # Telegram away or a Conflict: say so, wait, go on
                failures += 1
                self.state, self.last_error = "reconnecting", str(exc)
                log.warning("telegram: %s; retrying", exc)
                await self._pause(min(_BACKOFF_CAP_S, 2 ** failures) * random.uniform(0.5, 1.0))

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """After the job workers stopped: their sends (replies, desk posts) use the bot until then."""
        await self.api.close()

    async def send(self, message: OutboundMessage) -> Receipt:
        """The reply as plain text (never parsed as markup), split at Telegram's limit; files after it."""
        chat_id = int(message.to.value)
        sent = None
        for part in split_text(message.text, TEXT_LIMIT) or ([] if message.attachments else ["…"]):
            sent = await self.api.send_text(chat_id, part, group=False)
        for attachment in message.attachments:
            data = await asyncio.to_thread(Path(attachment.path).read_bytes)
            sent = await self.api.send_file(chat_id, data, attachment.filename, attachment.content_type, group=False)
        if sent is None:
            raise PermanentError("nothing to send: the reply has no text and no files")
        key = f"{chat_id}:{sent.message_id}"
        return Receipt(provider_id=key, thread_key=key)

    async def _next(self, offset: int | None) -> list[dict[str, Any]] | None:
        """The next batch, or None when stopping; waits at most poll_timeout for news."""
        poll = asyncio.ensure_future(self.api.updates(offset))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([poll, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not poll.done():  # stopping: updates it would bring stay unconfirmed for the next start
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            return None
        return poll.result()

    async def _handle(self, update: dict[str, Any]) -> None:
        try:
            parsed: Parsed = parse_update(update, desk_chats=self.desk.chats if self.desk else frozenset(),
                                          bot_username=self.api.username)
        except UnreadableUpdate as exc:
            raw = repr(update).encode("utf-8", "replace")
            await self._inlet.quarantine(str(self.kind), raw, str(exc), f"update {update.get('update_id')}")
            return
        if isinstance(parsed, CustomerMessage):
            await self._customer(parsed)
        elif isinstance(parsed, Greeting):
            await self._greet(parsed)
        elif isinstance(parsed, (AgentMessage, ButtonPress)) and self.desk is not None:
            try:
                await self.desk.handle(parsed, update["update_id"])
            except TransientError:
                raise  # the batch is read again; what was done is recorded, so not done twice
            except KartablError as exc:  # acting again would fail the same way: say so, go on
                log.warning("telegram: could not act on the agents' update %s: %s", update["update_id"], exc)
        elif isinstance(parsed, Ignored):
            log.debug("telegram: update %s ignored: %s", update.get("update_id"), parsed.reason)

    async def _customer(self, parsed: CustomerMessage) -> None:
        files = []
        for ref in parsed.files:
            try:
                data = await self.api.download(ref)
            except PermanentError as exc:  # Telegram will not hand it over: the message goes in without it
                log.warning("telegram: could not download %s: %s", ref.filename, exc)
                data = None
            files.append(InboundAttachment(ref.filename, ref.content_type, data, ref.size))
        message = parsed.message
        if files:
            message = dataclasses.replace(message, attachments=tuple(files))
        await self._inlet(message)

    async def _greet(self, parsed: Greeting) -> None:
        """/start: a hello in the customer's language. Not a ticket, so not through the outbox: a greeting
        that fails is logged, not retried."""
        try:
            await self.api.send_text(parsed.chat_id, greeting(parsed.language or self.settings.default_language),
                                     group=False)
        except ChannelError as exc:
            log.warning("telegram: could not greet chat %s: %s", parsed.chat_id, exc)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):  # the pause ran out: time to try again
            await asyncio.wait_for(self._stopping.wait(), seconds)
