"""TelegramChannel: the customer bot's getUpdates loop, stored before confirmed, and replies to customers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any, Protocol

import telegram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from channels.telegram.bot import BotApi
from channels.telegram.settings import TelegramSettings
from channels.telegram.text import TEXT_LIMIT, greeting, split_text
from channels.telegram.updates import (
    AgentMessage, ButtonPress, CustomerButton, CustomerMessage, Greeting, Ignored, Parsed, UnreadableUpdate,
    parse_update,
)
from gateway.domain import ChannelKind
from gateway.errors import AuthError, ChannelError, KartablError, PermanentError, TransientError, Unavailable
from gateway.http import TooLarge, body_within, caller, secret_matches
from gateway.inlet import Inlet
from gateway.addresses import Address
from gateway.domain import AddressKind
from gateway.messages import InboundAttachment, InboundMessage, OutboundMessage, Receipt

log = logging.getLogger("kartabl.channels.telegram")

#: Where Telegram pushes updates in webhook mode (behind the operator's TLS proxy).
WEBHOOK_PATH = "/webhooks/telegram"
#: A pushed update larger than this is refused: Telegram's are a few KB (files come by file_id).
_WEBHOOK_MAX_BYTES = 1 << 20
#: Where the loop keeps the next update id to ask for (Telegram's offset), in channel_state.
OFFSET_STATE = "telegram:offset"
_BACKOFF_CAP_S = 60.0


def _chat_of(update: dict[str, Any]) -> int:
    """The chat an update happened in (its own id, negated, when it names none or names it oddly): the
    unit of order. Read before the parser, so it trusts no shape: the parser names what is wrong."""
    own = update.get("update_id")
    own = -own if isinstance(own, int) else 0
    message = next((update[f] for f in ("message", "edited_message", "channel_post", "edited_channel_post")
                    if isinstance(update.get(f), dict)), None)
    query = update.get("callback_query")
    if message is None and isinstance(query, dict) and isinstance(query.get("message"), dict):
        message = query["message"]
    chat = message.get("chat") if message is not None else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return chat_id if isinstance(chat_id, int) else own


class AgentDesk(Protocol):
    """What the channel hands the agents' updates to (channels.telegram.desk.TelegramDesk)."""

    chats: frozenset[int]

    async def refresh(self) -> None: ...

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

    @property
    def exclusive(self) -> bool:
        """getUpdates has one consumer (a second call ends the first); pushed webhooks go to any process."""
        return not self.settings.webhook_url

    def attach_desk(self, desk: AgentDesk) -> None:
        self.desk = desk

    def describe(self) -> dict[str, object]:
        if self.state in ("polling", "starting", "webhook"):
            return {"updates": self.state}
        return {"state": self.state, "updates": self.state, "last_error": self.last_error}

    async def start(self, deliver: Inlet) -> None:
        self._stopping.clear()
        await self.api.open()
        if self.settings.webhook_url:
            secret = self.settings.webhook_secret.reveal() if self.settings.webhook_secret else ""
            self._inlet = deliver
            await self.api.set_webhook(self.settings.webhook_url, secret)
            self.state = "webhook"
            log.info("telegram: updates are pushed to the webhook")
            await self._stopping.wait()
            return
        await self.api.delete_webhook()  # getUpdates is refused while one is set
        self._inlet = deliver
        await self._poll(deliver)

    def routes(self) -> list[BaseRoute]:
        """The webhook, in webhook mode: Telegram pushes each update there."""
        return [Route(WEBHOOK_PATH, self._pushed, methods=["POST"])] if self.settings.webhook_url else []

    async def _pushed(self, request: Request) -> Response:
        """One update from Telegram: 200 only once it is handled (stored, or acted on), so a crash before
        that leaves it with Telegram, which pushes it again; a wrong secret token changes nothing."""
        if not secret_matches(request.headers.get("x-telegram-bot-api-secret-token", ""), self.settings.webhook_secret):
            log.warning("telegram: a webhook push without the right secret token from %s; ignored", caller(request))
            return Response("wrong secret token", status_code=403)
        if self._inlet is None or self.state != "webhook":
            return Response("not ready", status_code=503)
        try:
            body = await body_within(request, _WEBHOOK_MAX_BYTES)
        except TooLarge:
            return Response("too large for a Telegram update", status_code=413)
        try:
            update = json.loads(body)
        except ValueError:
            update = None
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            log.warning("telegram: a webhook push that is not an update (%d bytes); refused", len(body))
            return Response("not a Telegram update", status_code=400)
        try:
            await self._handle_batch([update])
        except KartablError as exc:  # not handled: Telegram pushes it again
            log.log(logging.DEBUG if isinstance(exc, Unavailable) else logging.WARNING,  # the former said once
                    "telegram: update %s not handled yet: %s", update["update_id"], exc)
            return Response("try again", status_code=503)
        return Response(status_code=200)

    async def _poll(self, deliver: Inlet) -> None:
        offset = await deliver.load_state(OFFSET_STATE)
        failures = 0
        while not self._stopping.is_set():
            try:
                updates = await self._next(offset)
                if updates is None:
                    break
                if self.desk is not None and updates:
                    await self.desk.refresh()  # a department's new chat is a desk chat too
                await self._handle_batch(updates)
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
        parts = split_text(message.text, TEXT_LIMIT) or ([] if message.attachments else ["…"])
        buttons = telegram.InlineKeyboardMarkup([[telegram.InlineKeyboardButton(label, callback_data=data)
                                                  for label, data in message.buttons]]) if message.buttons else None
        for n, part in enumerate(parts):
            sent = await self.api.send_text(chat_id, part, group=False,
                                            reply_markup=buttons if n == len(parts) - 1 else None)
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

    async def _handle_batch(self, updates: list[dict[str, Any]]) -> None:
        """Every update of a batch handled: each chat's in order, different chats at once (a burst of
        customers is stored in a few shared commits instead of one commit after another)."""
        chains: dict[int, list[dict[str, Any]]] = {}
        for update in updates:
            chains.setdefault(_chat_of(update), []).append(update)

        async def run(chain: list[dict[str, Any]]) -> None:
            for update in chain:
                await self._handle(update)
        failed = [r for r in await asyncio.gather(*map(run, chains.values()), return_exceptions=True) if r]
        if failed:  # the batch is read again; what was done is recorded, so not done twice
            raise failed[0]

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
        elif isinstance(parsed, CustomerButton):
            await self._quick_reply(parsed)
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

    async def _quick_reply(self, press: CustomerButton) -> None:
        """A customer's button under one of our messages (`reply:<ticket>:<text>`, e.g. a survey's score)
        is their answer, as if typed, on that ticket; the button's spinner stops after it is stored."""
        kind, _, rest = press.data.partition(":")
        ref, _, text = rest.partition(":")
        if kind != "reply" or not ref or not text:
            log.info("telegram: a customer's button with data %r we did not make; ignored", press.data[:64])
        else:
            assert self._inlet is not None
            await self._inlet(InboundMessage(
                channel=self.kind, provider_id=f"{press.chat_id}:button:{press.callback_id}",
                sender=Address(AddressKind.TELEGRAM, str(press.user_id)), text=text, sender_name=press.user_name,
                ticket_ref=ref))
        with contextlib.suppress(ChannelError):  # only the spinner: the answer is stored already
            await self.api.answer_button(press.callback_id, "✓")

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
