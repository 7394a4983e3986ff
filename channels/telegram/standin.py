"""A loopback stand-in of the Telegram Bot API (real HTTP and JSON, in memory), for tests and `kartabl demo`.

Point python-telegram-bot at it with `Bot(token, base_url=s.base_url, base_file_url=s.base_file_url)`. It
keeps the rules clients get wrong: getUpdates offsets and long polls, HTML parsing and lengths counted in
UTF-16 after it, flood limits answered with 429 and retry_after, forum topics. The test side plays the
customers and the groups (`customer_text`, `group_text`, `press`, ...) and reads what the bot sent in `sent`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import itertools
import json
import math
import mimetypes
import re
import socket
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.standins import Signal
from gateway.http import EmbeddedServer

ChatType = Literal["private", "group", "supergroup"]
MemberStatus = Literal["creator", "administrator", "member", "left"]
Json = dict[str, Any]

MAX_TEXT, MAX_CAPTION = 4096, 1024  # UTF-16 code units of the text as shown, after entity parsing
MAX_DOWNLOAD = 20 * 2**20  # getFile refuses bigger files
_TOKEN_SHAPE = re.compile(r"\d+:[\w-]+")
_NO_QUERY = "Bad Request: query is too old and response timeout expired or query ID is invalid"
_NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are "
                 "exactly the same as a current content and reply markup of the message")
#: Fields a media object needs to be read by python-telegram-bot; the caller's fields override them.
_MEDIA_DEFAULTS: dict[str, Json] = {
    "document": {}, "audio": {"duration": 1}, "voice": {"duration": 1, "mime_type": "audio/ogg"},
    "video": {"width": 640, "height": 360, "duration": 1},
    "animation": {"width": 320, "height": 240, "duration": 1},
    "video_note": {"length": 240, "duration": 1},
    "sticker": {"width": 512, "height": 512, "is_animated": False, "is_video": False, "type": "regular"},
}
_ADMIN_RIGHTS = ("can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
                 "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories",
                 "can_edit_stories", "can_delete_stories", "can_pin_messages", "can_manage_topics")
_MEMBER_FIELDS: dict[str, Json] = {
    "creator": {"is_anonymous": False},
    "administrator": {"can_be_edited": False, "is_anonymous": False, **dict.fromkeys(_ADMIN_RIGHTS, True)},
}
_GIFT_TYPES = ("unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription", "gifts_from_channels")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Telegram's flood limits, as sliding windows over successful send*, edit* and createForumTopic calls."""

    per_chat: int = 1  # private chats
    per_chat_window: float = 1.0
    per_group: int = 20  # groups and supergroups, all topics together
    per_group_window: float = 60.0
    per_bot: int = 30
    per_bot_window: float = 1.0


@dataclasses.dataclass(frozen=True)
class User:
    """A person on the customers' side."""

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None

    def to_json(self) -> Json:
        return _present({"is_bot": False, **dataclasses.asdict(self)})


@dataclasses.dataclass(frozen=True)
class Sent:
    """A message the bot sent or edited: `text` as the user sees it, `html` as the bot sent it."""

    method: str
    chat_id: int
    message_id: int
    thread_id: int | None
    text: str
    html: str
    parse_mode: str | None
    reply_markup: Json | None
    reply_to: int | None
    filename: str | None
    data: bytes | None
    at: float


class _ApiError(Exception):
    """A Bot API error answer; raised inside the stand-in, turned into the HTTP answer in one place."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after


@dataclasses.dataclass(frozen=True)
class _Upload:
    filename: str | None
    data: bytes
    mime_type: str | None


@dataclasses.dataclass(frozen=True)
class _File:
    file_id: str
    file_unique_id: str
    path: str
    data: bytes
    filename: str | None
    mime_type: str | None

    def to_json(self) -> Json:
        return {"file_id": self.file_id, "file_unique_id": self.file_unique_id, "file_size": len(self.data)}


@dataclasses.dataclass
class _Chat:
    id: int
    type: ChatType
    title: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    is_forum: bool = False
    next_message_id: int = 1
    topics: dict[int, Json] = dataclasses.field(default_factory=dict)  # live topics by thread id
    members: dict[int, MemberStatus] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Json:
        return _present({"id": self.id, "type": self.type, "title": self.title, "first_name": self.first_name,
                         "last_name": self.last_name, "username": self.username, "is_forum": self.is_forum or None})


@dataclasses.dataclass(frozen=True)
class _Params:
    """A request's parameters: form, multipart and JSON bodies all give strings or JSON values."""

    values: dict[str, Any]
    files: dict[str, _Upload]

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return default if value is None else str(value)

    def number(self, name: str, default: float = 0) -> float:
        value = self.values.get(name)
        try:
            return default if value in (None, "") else float(value)
        except ValueError:
            raise _ApiError(400, f"Bad Request: invalid {name} specified") from None

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.values.get(name)
        try:
            return default if value in (None, "") else int(value)
        except ValueError:
            raise _ApiError(400, f"Bad Request: invalid {name} specified") from None

    def flag(self, name: str) -> bool:
        return self.values.get(name) in (True, "true", "True", "1")

    def json(self, name: str) -> Any:
        value = self.values.get(name)
        try:
            return json.loads(value) if isinstance(value, str) else value
        except ValueError:
            raise _ApiError(400, f"Bad Request: can't parse {name} JSON object") from None


class StandInTelegram:
    """The Bot API for one bot, on loopback; customers, groups and provider failures are driven by the test."""

    def __init__(self, token: str, *, limits: Limits = Limits(), bot_username: str = "KartablBot") -> None:
        self.token, self.limits = token, limits
        bot_id = token.partition(":")[0]
        self.bot: Json = {"id": int(bot_id) if bot_id.isdigit() else 1, "is_bot": True, "first_name": "Kartabl",
                          "username": bot_username}
        self.sent: list[Sent] = []
        self.answered: dict[str, str | None] = {}  # callback query id -> the text the bot answered with
        self.too_many = 0
        self.too_many_by_chat: collections.Counter[int] = collections.Counter()
        self.confirmed_offset = 0  # the highest offset getUpdates was called with
        self.webhook: Json = {}  # url, secret_token, last_error_* while a webhook is set
        self.webhook_retry = 0.5  # seconds before an update the webhook refused is pushed again
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, User] = {}
        self._messages: dict[tuple[int, int], Json] = {}
        self._files: dict[str, _File] = {}
        self._paths: dict[str, _File] = {}
        self._pending: list[Json] = []
        self._allowed: list[str] = []
        self._open_queries: set[str] = set()
        self._faults: dict[str, collections.deque[_ApiError | _Trouble]] = collections.defaultdict(collections.deque)
        self._stamps: dict[int | None, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self.polling = 0  # getUpdates calls waiting for an update now
        self.cut_off = 0  # requests whose body never fully arrived (the client was killed mid-request)
        self._updated, self._sent_signal, self._poll_started = Signal(), Signal(), Signal()
        self._poll_generation = 0
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._host, self._port = "127.0.0.1", 0
        self._methods: dict[str, Callable[[_Params], Any]] = {
            "getme": self._get_me, "getupdates": self._get_updates, "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook, "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message, "sendphoto": lambda p: self._send_media(p, "photo"),
            "senddocument": lambda p: self._send_media(p, "document"), "getfile": self._get_file,
            "createforumtopic": self._create_forum_topic, "editforumtopic": self._edit_forum_topic,
            "answercallbackquery": self._answer_callback_query, "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_message_reply_markup, "getchatmember": self._get_chat_member,
            "getchat": self._get_chat,
        }

    # --- life ---------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> None:
        sock = _listen(host)
        self._host, self._port = host, sock.getsockname()[1]
        app = Starlette(routes=[Route("/bot{token}/{method}", self._handle, methods=["GET", "POST"]),
                                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"])])
        config = uvicorn.Config(app, host=host, port=self._port, log_level="warning", log_config=None,
                                access_log=False, lifespan="off", ws="none", timeout_graceful_shutdown=5)
        self._server = EmbeddedServer(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]), name="telegram-standin")

    async def stop(self) -> None:
        self._closing = True
        self._updated.fire()  # long polls answer now; uvicorn waits for requests in flight
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://{self._host}:{self._port}/file/bot"

    # --- the test's side ----------------------------------------------------------------------------

    def add_chat(self, chat_id: int, *, type: ChatType = "private", title: str | None = None,
                 first_name: str | None = None, is_forum: bool = False) -> None:
        if is_forum and type != "supergroup":
            raise ValueError("only a supergroup can be a forum")
        self._chats[chat_id] = _Chat(chat_id, type, title=title, first_name=first_name, is_forum=is_forum)

    def set_member(self, chat_id: int, user: User | int, status: MemberStatus) -> None:
        if isinstance(user, User):
            self._users[user.id] = user
        self._chats[chat_id].members[user.id if isinstance(user, User) else user] = status

    def delete_topic(self, chat_id: int, thread_id: int) -> None:
        """The topic is gone: sends into it answer 400 "message thread not found"."""
        del self._chats[chat_id].topics[thread_id]

    def customer_text(self, user: User, text: str, *, reply_to: int | None = None) -> int:
        """`user` writes to the bot in their private chat; returns the message id."""
        return self._from_customer(self._private(user), user, {"text": text}, reply_to=reply_to)

    def customer_update(self, user: User, **message_fields: Any) -> int:
        """`user` sends a message with these fields. A media field given as bytes, or as a dict with "data",
        is stored as a file (file_id, file_unique_id, file_size); `photo=bytes` gives two sizes, a thumbnail
        holding a prefix of the bytes (nothing here scales images) and the full one, and `photo=[bytes, ...]`
        one size each, smallest first."""
        fields = {name: self._media_field(name, value) for name, value in message_fields.items()}
        return self._from_customer(self._private(user), user, fields)

    def group_text(self, chat_id: int, user: User, text: str, *, thread_id: int | None = None,
                   reply_to_message_id: int | None = None) -> int:
        chat = self._chats[chat_id]
        if thread_id is not None and thread_id not in chat.topics:
            raise ValueError(f"chat {chat_id} has no topic {thread_id}")
        return self._from_customer(chat, user, {"text": text}, thread=thread_id, reply_to=reply_to_message_id)

    def group_update(self, chat_id: int, user: User, *, thread_id: int | None = None,
                     reply_to_message_id: int | None = None, **message_fields: Any) -> int:
        """`user` posts a message with these fields (media as for `customer_update`) in a group."""
        chat = self._chats[chat_id]
        fields = {name: self._media_field(name, value) for name, value in message_fields.items()}
        return self._from_customer(chat, user, fields, thread=thread_id, reply_to=reply_to_message_id)

    def edited(self, user: User, message_id: int, new_text: str, *, chat_id: int | None = None) -> None:
        key = (user.id if chat_id is None else chat_id, message_id)
        self._messages[key] = {**self._messages[key], "text": new_text, "edit_date": int(time.time())}
        self._emit("edited_message", self._messages[key])

    def press(self, chat_id: int, user: User, message_id: int, data: str) -> str:
        """`user` presses an inline button with `data` under a message; returns the callback query id."""
        query_id = str(next(self._ids))
        self._open_queries.add(query_id)
        self._emit("callback_query", {"id": query_id, "from": user.to_json(), "chat_instance": str(-chat_id),
                                      "message": self._messages[(chat_id, message_id)], "data": data})
        return query_id

    def fail_next(self, method: str, *, error_code: int, description: str, retry_after: int | None = None,
                  times: int = 1) -> None:
        """The next `times` calls of `method` answer this error (403 "Forbidden: bot was blocked by the user")."""
        self._faults[method.lower()].extend([_ApiError(error_code, description, retry_after)] * times)

    def hang_next(self, method: str, *, seconds: float, after: bool = False, times: int = 1) -> None:
        """The next `times` calls of `method` get no answer for `seconds` (a client with a shorter timeout
        gives up). `after`: the method acted first (the message went out), as when the answer is what
        got lost; otherwise it never acts."""
        self._faults[method.lower()].extend([_Trouble("hang", after, seconds)] * times)

    def drop_next(self, method: str, *, after: bool = False, times: int = 1) -> None:
        """The next `times` calls of `method` have their connection cut mid-answer; `after` as in hang_next."""
        self._faults[method.lower()].extend([_Trouble("drop", after)] * times)

    async def wait_sent(self, predicate: Callable[[Sent], bool], timeout: float = 5) -> Sent:
        """The first message sent (already, or from now on) that `predicate` accepts."""
        def found() -> Sent | None:
            return next((s for s in self.sent if predicate(s)), None)
        if not await self._sent_signal.wait_until(found, timeout):
            raise TimeoutError(f"nothing matching was sent in {timeout}s; sent: {[s.text for s in self.sent]}")
        return found()  # type: ignore[return-value]

    async def wait_polling(self, timeout: float = 5) -> None:
        """Return once a getUpdates long poll is waiting: the bot is up and listening."""
        if not await self._poll_started.wait_until(lambda: self.polling > 0, timeout):
            raise TimeoutError(f"no getUpdates long poll in {timeout}s")

    @property
    def pending_updates(self) -> list[Json]:
        """Updates not yet confirmed by a getUpdates offset (nor taken by the webhook)."""
        return list(self._pending)

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            # As Telegram: a token of the wrong shape is not found at all; a well-formed wrong one is refused.
            well_formed = _TOKEN_SHAPE.fullmatch(request.path_params["token"])
            return _answer(_ApiError(401, "Unauthorized") if well_formed else _ApiError(404, "Not Found"))
        method = request.path_params["method"]
        name = method.lower()
        handler = self._methods.get(name)
        if handler is None:
            # Telegram says only "Not Found"; PTB raises InvalidToken for any 404, so name the method.
            return _answer(_ApiError(404, f"Not Found: the stand-in does not implement {method}"))
        params = _Params({}, {})
        try:
            try:
                params = await _read_params(request)
            except ClientDisconnect:  # the bot went away mid-request (killed): Telegram never saw it
                self.cut_off += 1
                return Response(status_code=499)
            trouble = self._faults[name].popleft() if self._faults[name] else None
            if isinstance(trouble, _ApiError):
                raise trouble
            if trouble is not None and not trouble.after:
                return await trouble.answer(None)
            result = handler(params)
            result = await result if inspect.isawaitable(result) else result
        except _ApiError as error:
            if error.code == 429:
                self._count_flood(params)
            return _answer(error)
        answer = JSONResponse({"ok": True, "result": result})
        return await trouble.answer(answer) if trouble is not None else answer

    async def _download(self, request: Request) -> Response:
        file = self._paths.get(request.path_params["path"])
        if request.path_params["token"] != self.token or file is None:
            return _answer(_ApiError(404, "Not Found"))
        return Response(file.data, media_type=file.mime_type or "application/octet-stream")

    def _count_flood(self, params: _Params) -> None:
        self.too_many += 1
        chat_id = params.text("chat_id", "")
        if chat_id and chat_id.lstrip("-").isdigit():
            self.too_many_by_chat[int(chat_id)] += 1

    # --- updates ------------------------------------------------------------------------------------

    async def _get_updates(self, params: _Params) -> list[Json]:
        if self.webhook:
            raise _ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                 "use deleteWebhook to delete the webhook first")
        self._confirm(params.integer("offset", 0) or 0)
        self._allow(params)
        limit = min(max(params.integer("limit", 100) or 100, 1), 100)
        self._poll_generation += 1
        mine = self._poll_generation
        self._updated.fire()  # an older poll still waiting ends with 409, as on Telegram
        timeout = params.number("timeout")
        if not self._pending and not self._closing and timeout > 0:
            await self._long_poll(mine, timeout)
        if self._poll_generation != mine:
            raise _ApiError(409, "Conflict: terminated by other getUpdates request; "
                                 "make sure that only one bot instance is running")
        return self._pending[:limit]

    async def _long_poll(self, generation: int, timeout: float) -> None:
        """Wait up to `timeout` seconds for an update, a newer getUpdates call, or stop()."""
        self.polling += 1
        self._poll_started.fire()
        try:
            await self._updated.wait_until(
                lambda: self._pending or self._closing or self._poll_generation != generation, timeout)
        finally:
            self.polling -= 1

    def _confirm(self, offset: int) -> None:
        # Telegram's rule: an offset confirms every update below it; a negative one keeps only the last few.
        if offset < 0:
            self._pending = self._pending[offset:]
        elif offset:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        self.confirmed_offset = max(self.confirmed_offset, offset)

    def _allow(self, params: _Params) -> None:
        # Remembered across calls, as on Telegram; an empty list is back to every kind.
        allowed = params.json("allowed_updates")
        if allowed is not None:
            self._allowed = list(allowed)

    def _emit(self, kind: str, payload: Json) -> None:
        if self._allowed and kind not in self._allowed:
            return  # Telegram does not even queue the kinds the bot did not ask for
        self._pending.append({"update_id": next(self._update_ids), kind: payload})
        self._updated.fire()

    def _set_webhook(self, params: _Params) -> bool:
        url = params.text("url", "")  # http:// too, unlike Telegram: the receiver is on loopback
        if not url:
            return self._delete_webhook(params)
        if params.flag("drop_pending_updates"):
            self._pending.clear()
        self._allow(params)
        self.webhook = {"url": url, "secret_token": params.text("secret_token")}
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.create_task(self._push(), name="telegram-standin-webhook")
        return True

    def _delete_webhook(self, params: _Params) -> bool:
        if params.flag("drop_pending_updates"):
            self._pending.clear()
        self.webhook = {}
        self._updated.fire()
        return True

    def _get_webhook_info(self, params: _Params) -> Json:
        info = {k: v for k, v in self.webhook.items() if k != "secret_token"}
        return {"url": "", **info, "has_custom_certificate": False, "pending_update_count": len(self._pending)}

    async def _push(self) -> None:
        """Deliver the updates to the webhook one by one, in order, each until it is answered with 2xx."""
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                await self._updated.wait_until(lambda: not self.webhook or self._pending, None)
                if not self.webhook:
                    return
                update, error = self._pending[0], await self._post_update(client, self._pending[0])
                if error is None and self._pending and self._pending[0] is update:
                    self._pending.pop(0)
                elif error is not None and self.webhook:
                    self.webhook.update(last_error_date=int(time.time()), last_error_message=error)
                    await asyncio.sleep(self.webhook_retry)  # a back-off, as Telegram's, not a wait for a server

    async def _post_update(self, client: httpx.AsyncClient, update: Json) -> str | None:
        """None if the webhook took the update, else the error getWebhookInfo reports."""
        secret = self.webhook["secret_token"]
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        try:
            answer = await client.post(self.webhook["url"], json=update, headers=headers)
        except httpx.HTTPError as exc:
            return f"Connection failed: {exc!r}"
        if answer.is_success:
            return None
        return f"Wrong response from the webhook: {answer.status_code} {answer.reason_phrase}"

    # --- sending ------------------------------------------------------------------------------------

    def _get_me(self, params: _Params) -> Json:
        return {**self.bot, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False, "can_connect_to_business": False, "has_main_web_app": False}

    def _send_message(self, params: _Params) -> Json:
        chat, thread, reply = self._target(params)
        html, mode = params.text("text", "") or "", params.text("parse_mode")
        text = _checked(_visible(html, mode), MAX_TEXT, "message is too long")
        if not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        markup = _markup(params)
        self._flood(chat)
        message = self._store(chat, self.bot, {"text": text, **_inline(markup)}, thread=thread, reply=reply)
        self._record("sendMessage", message, html, mode, markup, reply)
        return message

    def _send_media(self, params: _Params, kind: str) -> Json:
        chat, thread, reply = self._target(params)
        file = self._media(params, kind)
        html, mode = params.text("caption", "") or "", params.text("parse_mode")
        caption = _checked(_visible(html, mode), MAX_CAPTION, "message caption is too long")
        markup = _markup(params)
        self._flood(chat)
        media = self._photo_sizes([file]) if kind == "photo" else {
            **file.to_json(), **_present({"file_name": file.filename, "mime_type": file.mime_type})}
        fields = {kind: media, **({"caption": caption} if caption else {}), **_inline(markup)}
        message = self._store(chat, self.bot, fields, thread=thread, reply=reply)
        self._record("send" + kind.title(), message, html, mode, markup, reply, file)
        return message

    def _target(self, params: _Params) -> tuple[_Chat, int | None, Json | None]:
        chat = self._chat(params)
        thread = params.integer("message_thread_id")
        if thread is not None and thread not in chat.topics:
            raise _ApiError(400, "Bad Request: message thread not found")
        wanted = params.json("reply_parameters") or {}
        reply_id = wanted.get("message_id", params.integer("reply_to_message_id"))
        reply = None if reply_id is None else self._messages.get((chat.id, int(reply_id)))
        if reply_id is not None and reply is None and not (
                wanted.get("allow_sending_without_reply") or params.flag("allow_sending_without_reply")):
            raise _ApiError(400, "Bad Request: message to be replied not found")
        return chat, thread, reply

    def _chat(self, params: _Params) -> _Chat:
        chat_id = params.text("chat_id", "") or ""
        if not chat_id:
            raise _ApiError(400, "Bad Request: chat_id is empty")
        chat = self._chats.get(int(chat_id)) if chat_id.lstrip("-").isdigit() else None
        if chat is None:
            raise _ApiError(400, "Bad Request: chat not found")
        return chat

    def _media(self, params: _Params, kind: str) -> _File:
        if upload := params.files.get(kind):
            if not upload.data:
                raise _ApiError(400, "Bad Request: file must be non-empty")
            return self._put(upload.data, kind + "s", filename=upload.filename, mime_type=upload.mime_type)
        file = self._files.get(params.text(kind, "") or "")
        if file is None:
            raise _ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        return file

    def _flood(self, chat: _Chat) -> None:
        """Count this call against the chat's and the bot's windows, or answer 429 if either is full."""
        now, limits = time.monotonic(), self.limits
        count, window = ((limits.per_chat, limits.per_chat_window) if chat.type == "private"
                         else (limits.per_group, limits.per_group_window))
        wait = max(_window_wait(self._stamps[chat.id], count, window, now),
                   _window_wait(self._stamps[None], limits.per_bot, limits.per_bot_window, now))
        if wait > 0:
            retry_after = max(1, math.ceil(wait))  # Telegram gives whole seconds, never 0
            raise _ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        self._stamps[chat.id].append(now)
        self._stamps[None].append(now)

    def _store(self, chat: _Chat, sender: Json, fields: Json, *, thread: int | None = None,
               reply: Json | None = None) -> Json:
        message = {"message_id": chat.next_message_id, "date": int(time.time()), "chat": chat.to_json(),
                   "from": sender}
        chat.next_message_id += 1
        if thread is not None:
            message.update(message_thread_id=thread, is_topic_message=True)
            reply = reply or self._messages[(chat.id, thread)]  # Telegram: a topic's messages answer its start
        if reply is not None:
            message["reply_to_message"] = {k: v for k, v in reply.items() if k != "reply_to_message"}
        message.update(fields)
        self._messages[(chat.id, message["message_id"])] = message
        return message

    def _record(self, method: str, message: Json, html: str | None, mode: str | None, markup: Json | None,
                reply: Json | None, file: _File | None = None) -> None:
        text = message.get("text", message.get("caption", ""))
        self.sent.append(Sent(method, message["chat"]["id"], message["message_id"],
                              message.get("message_thread_id"), text, text if html is None else html, mode, markup,
                              None if reply is None else reply["message_id"], file and file.filename,
                              file and file.data, time.monotonic()))
        self._sent_signal.fire()

    # --- files --------------------------------------------------------------------------------------

    def _put(self, data: bytes, folder: str, *, filename: str | None = None, mime_type: str | None = None) -> _File:
        number = next(self._ids)
        suffix = ("." + filename.rpartition(".")[2] if filename and "." in filename
                  else mimetypes.guess_extension(mime_type or "") or ".bin")
        file = _File(f"AgAC-standin-{number}", f"AQAD{number}", f"{folder}/file_{number}{suffix}", data,
                     filename, mime_type)
        self._files[file.file_id] = self._paths[file.path] = file
        return file

    def _photo_sizes(self, files: list[_File]) -> list[Json]:
        if len(files) == 1:  # Telegram always sends several sizes; clients must pick the largest
            thumbnail = files[0].data[: max(1, len(files[0].data) // 8)]
            files = [self._put(thumbnail, "photos", mime_type=files[0].mime_type), files[0]]
        return [{**f.to_json(), "width": 90 * 4**i, "height": 90 * 4**i} for i, f in enumerate(files)]

    def _media_field(self, name: str, value: Any) -> Any:
        if name == "photo" and isinstance(value, (bytes, list)):
            datas = [value] if isinstance(value, bytes) else value
            return self._photo_sizes([self._put(d, "photos", mime_type="image/jpeg") for d in datas])
        if name not in _MEDIA_DEFAULTS or not isinstance(value, (bytes, dict)):
            return value
        fields = {"data": value} if isinstance(value, bytes) else dict(value)
        if "data" not in fields:
            return value
        data = fields.pop("data")
        file = self._put(data, name + "s", filename=fields.get("file_name"), mime_type=fields.get("mime_type"))
        return {**_MEDIA_DEFAULTS[name], **fields, **file.to_json()}

    def _get_file(self, params: _Params) -> Json:
        file = self._files.get(params.text("file_id", "") or "")
        if file is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if len(file.data) > MAX_DOWNLOAD:
            raise _ApiError(400, "Bad Request: file is too big")
        return {**file.to_json(), "file_path": file.path}

    # --- topics, buttons, edits, chats --------------------------------------------------------------

    def _create_forum_topic(self, params: _Params) -> Json:
        chat = self._chat(params)
        if not chat.is_forum:
            raise _ApiError(400, "Bad Request: the chat is not a forum")
        topic = _present({"name": params.text("name", ""), "icon_color": params.integer("icon_color", 0x6FB9F0),
                          "icon_custom_emoji_id": params.text("icon_custom_emoji_id")})
        self._flood(chat)
        message = self._store(chat, self.bot, {"forum_topic_created": topic})
        thread = message["message_id"]
        message.update(message_thread_id=thread, is_topic_message=True)
        chat.topics[thread] = {"message_thread_id": thread, **topic}
        return chat.topics[thread]

    def _edit_forum_topic(self, params: _Params) -> bool:
        chat = self._chat(params)
        topic = chat.topics.get(params.integer("message_thread_id", 0) or 0)
        if topic is None:
            raise _ApiError(400, "Bad Request: message thread not found")
        changes = _present({"name": params.text("name"),
                            "icon_custom_emoji_id": params.text("icon_custom_emoji_id")})
        if {**topic, **changes} == topic:
            raise _ApiError(400, "Bad Request: TOPIC_NOT_MODIFIED")
        self._flood(chat)
        topic.update(changes)
        return True

    def _answer_callback_query(self, params: _Params) -> bool:
        query_id = params.text("callback_query_id", "") or ""
        if query_id not in self._open_queries:
            raise _ApiError(400, _NO_QUERY)
        self._open_queries.discard(query_id)
        self.answered[query_id] = params.text("text")
        return True

    def _edit_message_text(self, params: _Params) -> Json:
        chat, message = self._own_message(params)
        if "text" not in message:
            raise _ApiError(400, "Bad Request: there is no text in the message to edit")
        html, mode = params.text("text", "") or "", params.text("parse_mode")
        text = _checked(_visible(html, mode), MAX_TEXT, "message is too long")
        if not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        return self._edit(chat, message, "editMessageText", {"text": text}, _markup(params), html, mode)

    def _edit_message_reply_markup(self, params: _Params) -> Json:
        chat, message = self._own_message(params)
        return self._edit(chat, message, "editMessageReplyMarkup", {}, _markup(params), None, None)

    def _own_message(self, params: _Params) -> tuple[_Chat, Json]:
        if params.text("inline_message_id"):
            raise _ApiError(400, "Bad Request: the stand-in does not keep inline messages")
        chat = self._chat(params)
        message = self._messages.get((chat.id, params.integer("message_id", 0) or 0))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot["id"]:
            raise _ApiError(400, "Bad Request: message can't be edited")
        return chat, message

    def _edit(self, chat: _Chat, message: Json, method: str, fields: Json, markup: Json | None,
              html: str | None, mode: str | None) -> Json:
        edited = {k: v for k, v in message.items() if k != "reply_markup"} | fields | _inline(markup)
        if edited == message:
            raise _ApiError(400, _NOT_MODIFIED)
        self._flood(chat)
        edited["edit_date"] = int(time.time())
        self._messages[(chat.id, message["message_id"])] = edited
        self._record(method, edited, html, mode, markup, None)
        return edited

    def _get_chat_member(self, params: _Params) -> Json:
        chat, user_id = self._chat(params), params.integer("user_id", 0) or 0
        status = chat.members.get(user_id, "left")
        known = self._users.get(user_id)
        user = (self.bot if user_id == self.bot["id"] else known.to_json() if known
                else {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"})
        return {"status": status, "user": user, **_MEMBER_FIELDS.get(status, {})}

    def _get_chat(self, params: _Params) -> Json:
        return {**self._chat(params).to_json(), "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": dict.fromkeys(_GIFT_TYPES, False)}

    # --- customers ----------------------------------------------------------------------------------

    def _private(self, user: User) -> _Chat:
        if user.id not in self._chats:
            self._chats[user.id] = _Chat(user.id, "private", first_name=user.first_name, last_name=user.last_name,
                                         username=user.username)
        return self._chats[user.id]

    def _from_customer(self, chat: _Chat, user: User, fields: Json, *, thread: int | None = None,
                       reply_to: int | None = None) -> int:
        self._users[user.id] = user
        reply = None if reply_to is None else self._messages[(chat.id, reply_to)]
        message = self._store(chat, user.to_json(), fields, thread=thread, reply=reply)
        self._emit("message", message)
        return message["message_id"]


def _listen(host: str) -> socket.socket:
    """A socket on port 0, listening before uvicorn runs: a client that connects at once waits in the
    backlog, so start() has nothing to wait for."""
    # Made with IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer stalls 40 ms on a delayed ACK (uvicorn writes headers and body apart).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


# --- requests and answers ----------------------------------------------------------------------------

async def _read_params(request: Request) -> _Params:
    body, kind = await request.body(), request.headers.get("content-type", "")
    values: dict[str, Any] = dict(request.query_params)
    files: dict[str, _Upload] = {}
    try:
        if kind.startswith("application/json") and body:
            values.update(json.loads(body))
        elif kind.startswith("multipart/form-data"):
            fields, files = _multipart(body, kind)
            values.update(fields)
        elif body:
            values.update(parse_qsl(body.decode(), keep_blank_values=True))
    except ValueError as exc:
        raise _ApiError(400, f"Bad Request: can't parse the request: {exc}") from None
    return _Params(values, files)


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_DISPOSITION = re.compile(r'\b(name|filename)="((?:[^"\\]|\\.)*)"')
_PART_TYPE = re.compile(r"^content-type:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, _Upload]]:
    """multipart/form-data by hand: the bytes of an upload exactly, without another dependency."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ValueError("no multipart boundary")
    fields: dict[str, str] = {}
    files: dict[str, _Upload] = {}
    for part in body.split(b"--" + match.group(1).encode())[1:-1]:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = head.decode("utf-8", "replace")
        names = {k: v.replace("%22", '"') for k, v in _DISPOSITION.findall(headers)}
        data = data.removesuffix(b"\r\n")
        if "filename" in names:
            mime = _PART_TYPE.search(headers)
            files[names["name"]] = _Upload(names["filename"], data, mime.group(1) if mime else None)
        elif "name" in names:
            fields[names["name"]] = data.decode()
    return fields, files


@dataclasses.dataclass(frozen=True)
class _Trouble:
    """A network fault in place of an answer (see `hang_next`, `drop_next`)."""

    kind: Literal["hang", "drop"]
    after: bool  # the method acted before the fault
    seconds: float = 0.0

    async def answer(self, answer: Response | None) -> Response | _CutShort:
        if self.kind == "drop":
            return _CutShort()
        await asyncio.sleep(self.seconds)  # the client has given up by now
        return answer or _answer(_ApiError(504, "Gateway Timeout"))


class _CutShort:
    """An answer whose connection is cut after a few bytes of its body: the application ends before the
    body does, so uvicorn closes the connection (logging one line, "ASGI callable returned without
    completing response"), and the client reads a truncated response."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"ok": tr', "more_body": True})


def _answer(error: _ApiError) -> JSONResponse:
    body: Json = {"ok": False, "error_code": error.code, "description": error.description}
    if error.retry_after is not None:
        body["parameters"] = {"retry_after": error.retry_after}
    return JSONResponse(body, status_code=error.code)


def _present(fields: Json) -> Json:
    return {k: v for k, v in fields.items() if v is not None}


def _inline(markup: Json | None) -> Json:
    """Messages carry only inline keyboards; reply keyboards are not echoed, as on Telegram."""
    return {"reply_markup": markup} if markup and "inline_keyboard" in markup else {}


def _markup(params: _Params) -> Json | None:
    markup = params.json("reply_markup")
    for row in (markup or {}).get("inline_keyboard", []):
        for button in row:
            if "callback_data" in button and not 1 <= len(button["callback_data"].encode()) <= 64:
                raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return markup


def _window_wait(stamps: collections.deque[float], count: int, window: float, now: float) -> float:
    """Seconds until the sliding window has room for one more call (0 if it has now)."""
    while stamps and stamps[0] <= now - window:
        stamps.popleft()
    return stamps[-count] + window - now if len(stamps) >= count else 0.0


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _checked(text: str, limit: int, too_long: str) -> str:
    """The text as Telegram keeps it (stripped), if within `limit` UTF-16 code units."""
    text = text.strip()
    if _utf16_length(text) > limit:
        raise _ApiError(400, f"Bad Request: {too_long}")
    return text


def _visible(raw: str, parse_mode: str | None) -> str:
    if not parse_mode:
        return raw
    if parse_mode.lower() != "html":
        raise _ApiError(400, f"Bad Request: the stand-in parses only HTML, not {parse_mode}")
    try:
        return html_to_text(raw)
    except ValueError as refused:
        raise _ApiError(400, f"Bad Request: can't parse entities: {refused}") from None


# --- HTML, as Telegram parses it ------------------------------------------------------------------------

_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
                   "pre", "blockquote", "tg-emoji"})
_PLAIN = re.compile(r"[^<&]+")
_TAG_NAME = re.compile(r"</?([^\s>]*)")
_START_TAG = re.compile(r"""<[a-zA-Z][\w-]*((?:\s+[\w-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'>]+))?)*)\s*>""")
_ATTRIBUTE = re.compile(r"""([\w-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_END_TAG = re.compile(r"</[a-zA-Z][\w-]*\s*>")
_ENTITY = re.compile(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|(lt|gt|amp|quot)(?![a-zA-Z]));?")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def html_to_text(html: str) -> str:
    """What the user sees of `html` sent with parse_mode HTML; ValueError (Telegram's reason) where it refuses."""
    out: list[str] = []
    open_tags: list[str] = []
    i = 0
    while i < len(html):
        if plain := _PLAIN.match(html, i):
            out.append(plain.group())
            i = plain.end()
        elif html[i] == "&":
            char, i = _entity(html, i)
            out.append(char)
        else:
            i = _tag(html, i, open_tags)
    if open_tags:
        raise _parse_error(f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"')
    return "".join(out)


def _entity(html: str, i: int) -> tuple[str, int]:
    # Telegram itself shows an unknown "&..." literally; its documentation says to escape every "&", and
    # the stand-in holds senders to that, so text that was never escaped fails here and not in production.
    match = _ENTITY.match(html, i)
    if match is not None and match.group(3):
        return _NAMED[match.group(3)], match.end()
    code = 0 if match is None else int(match.group(1)) if match.group(1) else int(match.group(2), 16)
    if match is None or not 0 < code < 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise _parse_error(f'Unsupported HTML entity "{html[i:i + 8]}" {_at(html, i)}')
    return chr(code), match.end()


def _tag(html: str, i: int, open_tags: list[str]) -> int:
    name = _TAG_NAME.match(html, i).group(1).lower()  # type: ignore[union-attr]
    if html.startswith("</", i):
        end = _END_TAG.match(html, i)
        if end is None:
            raise _parse_error(f"Unclosed end tag {_at(html, i)}")
        if not open_tags:
            raise _parse_error(f"Unexpected end tag {_at(html, i)}")
        if name != open_tags[-1]:
            expected = open_tags[-1]
            raise _parse_error(f'Unmatched end tag {_at(html, i)}, expected "</{expected}>", found "</{name}>"')
        open_tags.pop()
        return end.end()
    if name not in _TAGS:
        raise _parse_error(f'Unsupported start tag "{name}" {_at(html, i)}')
    start = _START_TAG.match(html, i)
    if start is None:
        raise _parse_error(f"Unclosed start tag {_at(html, i)}")
    attributes = {a.group(1).lower(): next((v for v in a.groups()[1:] if v is not None), "")
                  for a in _ATTRIBUTE.finditer(start.group(1))}
    if name == "span" and attributes.get("class") != "tg-spoiler":
        raise _parse_error(f'Tag "span" must have class "tg-spoiler" {_at(html, i)}')
    open_tags.append(name)
    return start.end()


def _at(html: str, i: int) -> str:
    return f"at byte offset {len(html[:i].encode('utf-8', 'surrogatepass'))}"


def _parse_error(reason: str) -> ValueError:
    return ValueError(reason)
