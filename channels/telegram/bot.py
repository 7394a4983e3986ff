"""The Bot API as the channel uses it: python-telegram-bot calls, paced, with every failure given its meaning."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import telegram
from telegram import error as tg_error
from telegram.request import HTTPXRequest

from channels.telegram.pacing import Pacer
from channels.telegram.settings import TelegramSettings
from channels.telegram.updates import FileRef
from gateway.errors import AuthError, ChannelError, PermanentError, TransientError

log = logging.getLogger("kartabl.channels.telegram")

T = TypeVar("T")

#: What the getUpdates loop asks for; everything else (channel posts, inline queries) is never fetched.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")


class BotApi:
    """One bot: its requests paced within Telegram's limits and its failures mapped in `failure()`."""

    def __init__(self, settings: TelegramSettings) -> None:
        self.settings = settings
        token = settings.token.reveal() if settings.token else ""
        self.bot = telegram.Bot(
            token, base_url=settings.base_url, base_file_url=settings.base_file_url,
            request=HTTPXRequest(connection_pool_size=16, read_timeout=settings.timeout,
                                 write_timeout=settings.timeout, connect_timeout=settings.timeout),
            get_updates_request=HTTPXRequest(read_timeout=settings.poll_timeout + settings.timeout,
                                             connect_timeout=settings.timeout))
        self.pacer = Pacer(chat_interval=settings.chat_interval, group_count=settings.group_per_minute,
                           group_window=settings.group_window, bot_per_second=settings.bot_per_second)
        self.username: str | None = None

    async def open(self) -> None:
        """Check the token (getMe) and learn the bot's username. PTB shuts down (closes its HTTP
        connections) only a bot it initialised, so this is `initialize()`, not a bare getMe."""
        await self.call(self.bot.initialize)
        self.username = self.bot.username

    async def close(self) -> None:
        await self.bot.shutdown()

    async def set_webhook(self, url: str, secret_token: str) -> None:
        """Telegram pushes updates to `url` from now on, with `secret_token`; nothing pending is dropped."""
        await self.call(lambda: self.bot.set_webhook(url, secret_token=secret_token,
                                                     allowed_updates=list(ALLOWED_UPDATES), drop_pending_updates=False))

    async def delete_webhook(self) -> None:
        """Back to getUpdates (which Telegram refuses while a webhook is set); nothing pending is dropped."""
        await self.call(lambda: self.bot.delete_webhook(drop_pending_updates=False))

    async def updates(self, offset: int | None) -> list[dict[str, Any]]:
        """The next updates after `offset` as Telegram sent them (JSON dicts), waiting up to poll_timeout."""
        found = await self.call(lambda: self.bot.get_updates(
            offset=offset, timeout=int(self.settings.poll_timeout), allowed_updates=list(ALLOWED_UPDATES)))
        # As JSON for the parser; PTB writes out false flags Telegram never sent, which the parser allows for.
        return [update.to_dict() for update in found]

    async def send_text(self, chat_id: int, text: str, *, group: bool, thread_id: int | None = None,
                        html: bool = False, reply_markup: telegram.InlineKeyboardMarkup | None = None,
                        reply_to: int | None = None, first: bool = False) -> telegram.Message:
        """One message (the caller splits long text); `html` texts must be escaped already; a `first`
        one goes ahead of the chat's waiting sends."""
        return await self.paced(chat_id, group, lambda: self.bot.send_message(
            chat_id, text, parse_mode="HTML" if html else None, message_thread_id=thread_id,
            reply_markup=reply_markup, reply_to_message_id=reply_to,
            link_preview_options=telegram.LinkPreviewOptions(is_disabled=True)), first=first)

    async def send_file(self, chat_id: int, data: bytes, filename: str, content_type: str, *, group: bool,
                        caption: str | None = None, thread_id: int | None = None,
                        html: bool = False) -> telegram.Message:
        parse_mode = "HTML" if html and caption else None
        if content_type.startswith("image/") and content_type != "image/gif":
            send: Callable[[], Awaitable[telegram.Message]] = lambda: self.bot.send_photo(  # noqa: E731
                chat_id, telegram.InputFile(data, filename=filename), caption=caption, parse_mode=parse_mode,
                message_thread_id=thread_id)
        else:
            send = lambda: self.bot.send_document(  # noqa: E731
                chat_id, telegram.InputFile(data, filename=filename), caption=caption, parse_mode=parse_mode,
                message_thread_id=thread_id)
        return await self.paced(chat_id, group, send)

    async def create_topic(self, chat_id: int, name: str, *, first: bool = False) -> int:
        topic = await self.paced(chat_id, True, lambda: self.bot.create_forum_topic(chat_id, name[:128]),
                                 first=first)
        return topic.message_thread_id

    async def is_forum(self, chat_id: int) -> bool:
        chat = await self.call(lambda: self.bot.get_chat(chat_id))
        return bool(chat.is_forum)

    async def answer_button(self, callback_id: str, text: str | None = None) -> None:
        await self.call(lambda: self.bot.answer_callback_query(callback_id, text=text))

    async def download(self, ref: FileRef) -> bytes | None:
        """The file's bytes; None when it is over max_file_bytes (the Bot API serves at most 20 MB)."""
        if ref.size is not None and ref.size > self.settings.max_file_bytes:
            return None
        file = await self.call(lambda: self.bot.get_file(ref.file_id))
        if file.file_size is not None and file.file_size > self.settings.max_file_bytes:
            return None
        return bytes(await self.call(file.download_as_bytearray))

    async def paced(self, chat_id: int, group: bool, request: Callable[[], Awaitable[T]], *,
                    first: bool = False) -> T:
        """`request` once its chat's turn comes; after a 429 the chat (and only it) waits its retry_after."""
        try:
            async with self.pacer.sending(chat_id, group=group, first=first):
                return await request()
        except tg_error.RetryAfter as exc:
            self.pacer.back_off(chat_id, _seconds(exc.retry_after))
            raise failure(exc) from exc
        except tg_error.TelegramError as exc:
            raise failure(exc) from exc

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        try:
            return await request()
        except tg_error.TelegramError as exc:
            raise failure(exc) from exc


def failure(exc: tg_error.TelegramError) -> ChannelError:
    """What a Bot API failure means for the outbox and the loop: retry (and when), give up, or stop."""
    if isinstance(exc, tg_error.RetryAfter):
        return TransientError(f"Telegram rate limit: retry after {exc.retry_after}", retry_after=_seconds(exc.retry_after))
    if isinstance(exc, tg_error.InvalidToken):
        return AuthError("Telegram refused the bot token")
    if isinstance(exc, tg_error.Forbidden):
        return PermanentError(f"Telegram refused: {exc.message} (the customer may have blocked the bot)")
    if isinstance(exc, tg_error.BadRequest):
        return PermanentError(f"Telegram rejected the request: {exc.message}")
    if isinstance(exc, tg_error.Conflict):
        return TransientError(f"Telegram: {exc.message} (another poller or a webhook holds this bot)")
    return TransientError(f"Telegram unreachable or failing: {type(exc).__name__}: {exc.message}")


def _seconds(retry_after: Any) -> float:
    return float(retry_after.total_seconds() if hasattr(retry_after, "total_seconds") else retry_after)


def thread_missing(exc: BaseException) -> bool:
    """A post into a topic that was deleted: the ticket needs a new topic."""
    return isinstance(exc, PermanentError) and "thread not found" in str(exc).lower()


