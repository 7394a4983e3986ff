"""Reading one Bot API update (raw getUpdates or webhook JSON) into what the bot acts on: a pure function."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import mimetypes
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from gateway.addresses import Address, AddressError
from gateway.domain import ChannelKind
from gateway.messages import InboundMessage


class UnreadableUpdate(ValueError):
    """The update is not shaped like a Bot API update; str() names the field and what was wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileRef:
    """A file Telegram keeps for us: fetch it with getFile(file_id). `size` is Telegram's announced size."""

    file_id: str
    file_unique_id: str
    filename: str
    content_type: str
    size: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerMessage:
    """A customer wrote to the bot in a private chat; `files` are still to be fetched from Telegram."""

    message: InboundMessage
    files: tuple[FileRef, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Greeting:
    """A customer opened the bot ("/start"); `payload` is what a t.me/bot?start=... deep link carried."""

    chat_id: int
    user_id: int
    language: str | None
    payload: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentMessage:
    """An agent wrote in a desk chat. `thread_id` is the forum topic, None outside topics.

    `command` is set for "/word" text meant for this bot (lowercased, no "/" or "@bot"), with
    `args` the rest; `reply_to_message_id` is None for a plain message in a topic.
    """

    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    username: str | None
    text: str
    command: str | None
    args: str
    reply_to_message_id: int | None
    files: tuple[FileRef, ...]
    date: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerButton:
    """A customer pressed an inline button under one of the bot's messages in their private chat."""

    callback_id: str
    chat_id: int
    user_id: int
    user_name: str
    data: str


@dataclasses.dataclass(frozen=True, slots=True)
class ButtonPress:
    """An agent pressed an inline button under one of the bot's messages in a desk chat."""

    callback_id: str
    chat_id: int
    thread_id: int | None
    message_id: int
    user_id: int
    user_name: str
    data: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing for the gateway to do; `reason` is for the debug log."""

    reason: str


Parsed = CustomerMessage | Greeting | AgentMessage | ButtonPress | CustomerButton | Ignored


def parse_update(
    update: Mapping[str, Any], *, desk_chats: Collection[int], bot_username: str | None = None,
) -> Parsed:
    """What `update` asks of the bot; raises only `UnreadableUpdate`.

    `desk_chats` are the agents' group chats; `bot_username` (with or without "@") tells commands
    for this bot from commands for other bots in the same group (without it, all are ours).
    """
    try:
        return _parse(_Fields(update, "update"), update, _Desk(frozenset(desk_chats), _bot(bot_username)))
    except UnreadableUpdate:
        raise
    except Exception as exc:  # a shape the typed reads below did not foresee; callers catch one type
        raise UnreadableUpdate(f"update: unexpected shape: {type(exc).__name__}: {exc}") from exc


# -- typed reads -----------------------------------------------------------------------------------


class _Fields:
    """Typed reads of one JSON object: a missing or mistyped field raises UnreadableUpdate with its path."""

    __slots__ = ("data", "path")

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise UnreadableUpdate(f"{path}: expected an object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UnreadableUpdate(f"{self.path}.{key}: expected {what}, got {type(value).__name__}")
        return value

    def _need(self, key: str, value: Any) -> Any:
        if value is None:
            raise UnreadableUpdate(f"{self.path}.{key}: missing")
        return value

    def optional_integer(self, key: str) -> int | None:
        return self._get(key, int, "an integer")

    def integer(self, key: str) -> int:
        return self._need(key, self.optional_integer(key))

    def optional_string(self, key: str) -> str | None:
        return self._get(key, str, "a string")

    def string(self, key: str) -> str:
        return self._need(key, self.optional_string(key))

    def flag(self, key: str) -> bool:
        return bool(self._get(key, bool, "true or false"))

    def number(self, key: str) -> float:
        value = self._need(key, self._get(key, (int, float), "a number"))
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise UnreadableUpdate(f"{self.path}.{key}: not a finite number")
        return number

    def optional_child(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        return None if value is None else _Fields(value, f"{self.path}.{key}")

    def child(self, key: str) -> _Fields:
        return self._need(key, self.optional_child(key))

    def children(self, key: str) -> list[_Fields]:
        items = self._get(key, list, "a list") or []
        return [_Fields(item, f"{self.path}.{key}[{index}]") for index, item in enumerate(items)]

    def timestamp(self, key: str) -> dt.datetime:
        seconds = self.integer(key)
        try:
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise UnreadableUpdate(f"{self.path}.{key}: not a Unix time: {seconds}") from None


# -- updates ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Desk:
    chats: frozenset[int]
    bot: str | None  # lowercased, no "@"


def _bot(username: str | None) -> str | None:
    name = (username or "").strip().lstrip("@").lower()
    return name or None


def _parse(root: _Fields, update: Mapping[str, Any], desk: _Desk) -> Parsed:
    root.integer("update_id")
    kind = next((key for key in update if key != "update_id"), None)
    if kind is None:
        raise UnreadableUpdate("update: carries nothing besides its update_id")
    if kind in ("message", "edited_message"):
        return _message(root.child(kind), update, desk, edited=kind == "edited_message")
    if kind == "callback_query":
        return _button(root.child(kind), desk)
    return Ignored(f"{kind} update")


def _message(msg: _Fields, update: Mapping[str, Any], desk: _Desk, *, edited: bool) -> Parsed:
    chat = msg.child("chat")
    chat_id, chat_type = chat.integer("id"), chat.string("type")
    msg.integer("message_id")
    msg.timestamp("date")
    user = msg.optional_child("from")
    if user is None:
        return Ignored("message without a sender")
    user.integer("id")
    if user.flag("is_bot"):
        return Ignored("message from a bot (anonymous group admins write as one)")
    # A flag that is false is no service message (libraries that re-serialise updates write them out).
    service = next((key for key in _SERVICE_KINDS if msg.has(key) and msg.data[key] is not False), None)
    if service:
        return Ignored(f"service message: {service}")
    if chat_type == "private":
        return _from_customer(msg, user, update, desk, edited=edited)
    if chat_id in desk.chats:
        return _from_agent(msg, user, desk, edited=edited)
    return Ignored(f"message in {chat_type} chat {chat_id}, which is not a desk chat")


def _button(query: _Fields, desk: _Desk) -> Parsed:
    callback_id = query.string("id")
    user = query.child("from")
    user_id = user.integer("id")
    msg = query.optional_child("message")
    if msg is None:
        return Ignored("button under an inline-mode message")
    chat = msg.child("chat")
    chat_id = chat.integer("id")
    data = query.optional_string("data")
    if data is None:
        return Ignored("button without callback data (a game)")
    if chat_id not in desk.chats:
        if chat.string("type") == "private":
            return CustomerButton(callback_id=callback_id, chat_id=chat_id, user_id=user_id,
                                  user_name=_name(user) or str(user_id), data=data)
        return Ignored(f"button in chat {chat_id}, which is not a desk chat")
    return ButtonPress(
        callback_id=callback_id, chat_id=chat_id, thread_id=_topic(msg), message_id=msg.integer("message_id"),
        user_id=user_id, user_name=_name(user) or str(user_id), data=data,
    )


# -- customers -------------------------------------------------------------------------------------


def _from_customer(msg: _Fields, user: _Fields, update: Mapping[str, Any], desk: _Desk, *, edited: bool) -> Parsed:
    chat_id, message_id, user_id = msg.child("chat").integer("id"), msg.integer("message_id"), user.integer("id")
    command = _command(msg.optional_string("text") or "")
    if command and command[0] == "start" and _for_us(command[1], desk):
        if edited:
            return Ignored("edited /start")
        return Greeting(chat_id=chat_id, user_id=user_id, language=_language(user), payload=command[2])
    kind = _content_kind(msg)
    if edited and kind == "location":
        return Ignored("live location update")  # a shared live location arrives as an edit every few seconds
    text, files = _content(msg, kind)
    key = f"{chat_id}:{message_id}"
    message = InboundMessage(
        channel=ChannelKind.TELEGRAM,
        provider_id=f"{key}:edit:{msg.integer('edit_date')}" if edited else key,
        sender=_address(user), text=f"[edited] {text}" if edited else text,
        received_at=msg.timestamp("edit_date" if edited else "date"), sender_name=_name(user),
        thread_key=key, in_reply_to=_reply_keys(msg, chat_id, edit_of=key if edited else None),
        also_known_as=_own_phone(msg, user_id) if kind == "contact" else (),
        language=_language(user), raw=update,
    )
    return CustomerMessage(message, files)


def _address(user: _Fields) -> Address:
    try:
        return Address.parse("telegram", str(user.integer("id")))
    except AddressError as exc:
        raise UnreadableUpdate(f"{user.path}.id: {exc}") from None


def _reply_keys(msg: _Fields, chat_id: int, *, edit_of: str | None) -> tuple[str, ...]:
    """The edited message's own key first (its ticket is certain), then the message it replies to."""
    keys = [edit_of] if edit_of else []
    reply = msg.optional_child("reply_to_message")
    if reply is not None:
        keys.append(f"{chat_id}:{reply.integer('message_id')}")
    return tuple(keys)


def _language(user: _Fields) -> str | None:
    primary = (user.optional_string("language_code") or "").lower().split("-")[0]
    return primary if primary in ("fa", "en") else None


def _name(user: _Fields) -> str | None:
    name = " ".join(filter(None, (user.optional_string("first_name"), user.optional_string("last_name"))))
    username = user.optional_string("username")
    return " ".join(name.split()) or (f"@{username}" if username else None)


def _own_phone(msg: _Fields, user_id: int) -> tuple[Address, ...]:
    """The customer's number when they shared their own contact; someone else's number links nothing."""
    contact = msg.child("contact")
    if contact.optional_integer("user_id") != user_id:
        return ()
    try:
        return (Address.parse("phone", _international(contact.string("phone_number"))),)
    except AddressError:
        return ()


def _international(phone: str) -> str:
    # Telegram writes international numbers without the "+" ("989121234567"); as digits alone they
    # would be read as a national number of the default region.
    digits = phone.strip()
    return f"+{digits}" if digits.isdigit() and not digits.startswith("0") else digits


# -- agents ----------------------------------------------------------------------------------------


def _from_agent(msg: _Fields, user: _Fields, desk: _Desk, *, edited: bool) -> Parsed:
    if edited:
        return Ignored("edit in a desk chat")
    if msg.flag("is_automatic_forward"):
        return Ignored("automatic forward from a linked channel")
    kind = _content_kind(msg)
    text = msg.optional_string("text") or msg.optional_string("caption") or ""
    files = _content(msg, kind)[1]
    if not text.strip() and not files:
        return Ignored(f"desk message with no text or file: {kind}")
    command = _command(text)
    if command and not _for_us(command[1], desk):
        return Ignored(f"command for another bot: @{command[1]}")
    user_id, thread_id = user.integer("id"), _topic(msg)
    return AgentMessage(
        chat_id=msg.child("chat").integer("id"), thread_id=thread_id, message_id=msg.integer("message_id"),
        user_id=user_id, user_name=_name(user) or str(user_id), username=user.optional_string("username"),
        text=text, command=command[0] if command else None, args=command[2] if command else "",
        reply_to_message_id=_reply_id(msg, thread_id), files=files, date=msg.timestamp("date"),
    )


def _topic(msg: _Fields) -> int | None:
    # Outside forum topics, message_thread_id names a reply chain's first message, not a topic.
    return msg.optional_integer("message_thread_id") if msg.flag("is_topic_message") else None


def _reply_id(msg: _Fields, thread_id: int | None) -> int | None:
    """The message an agent answered; None when the "reply" is only the topic's creation message.

    Telegram marks every plain message in a topic as a reply to the message that created the topic.
    """
    reply = msg.optional_child("reply_to_message")
    if reply is None or reply.has("forum_topic_created"):
        return None
    reply_id = reply.integer("message_id")
    return None if thread_id is not None and reply_id == thread_id else reply_id


_COMMAND = re.compile(r"/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?", re.DOTALL)


def _command(text: str) -> tuple[str, str | None, str] | None:
    """(command, addressed bot or None, args) of a "/command@bot args" text; None for other text."""
    match = _COMMAND.fullmatch(text.strip())
    if not match:
        return None
    return match.group(1).lower(), match.group(2), (match.group(3) or "").strip()


def _for_us(addressee: str | None, desk: _Desk) -> bool:
    return addressee is None or desk.bot is None or addressee.lower() == desk.bot


# -- message content -------------------------------------------------------------------------------

#: Content keys in the order they are looked for: an animation also carries a `document`, a venue a
#: `location`.
_CONTENT_KINDS = (
    "text", "animation", "photo", "document", "voice", "video", "audio", "video_note", "sticker",
    "venue", "location", "contact", "poll", "dice",
)
_SERVICE_KINDS = (
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo", "delete_chat_photo",
    "group_chat_created", "supergroup_chat_created", "channel_chat_created", "migrate_to_chat_id",
    "migrate_from_chat_id", "pinned_message", "message_auto_delete_timer_changed", "forum_topic_created",
    "forum_topic_edited", "forum_topic_closed", "forum_topic_reopened", "general_forum_topic_hidden",
    "general_forum_topic_unhidden", "video_chat_scheduled", "video_chat_started", "video_chat_ended",
    "video_chat_participants_invited", "write_access_allowed", "users_shared", "chat_shared",
    "successful_payment", "refunded_payment", "connected_website", "proximity_alert_triggered",
    "boost_added", "chat_background_set", "giveaway_created", "giveaway_completed", "web_app_data",
    "passport_data", "gift", "unique_gift",
)
#: Fields about a message rather than its content: what is left names an unknown kind of content.
_ABOUT = frozenset({
    "message_id", "message_thread_id", "from", "sender_chat", "sender_boost_count", "sender_business_bot",
    "date", "edit_date", "business_connection_id", "chat", "forward_origin", "forward_from",
    "forward_from_chat", "forward_from_message_id", "forward_signature", "forward_sender_name",
    "forward_date", "is_topic_message", "is_automatic_forward", "reply_to_message", "external_reply",
    "quote", "reply_to_story", "via_bot", "has_protected_content", "is_from_offline", "media_group_id",
    "author_signature", "entities", "caption", "caption_entities", "link_preview_options", "reply_markup",
    "has_media_spoiler", "show_caption_above_media", "effect_id", "paid_star_count",
})


def _content_kind(msg: _Fields) -> str:
    known = next((key for key in _CONTENT_KINDS if msg.has(key)), None)
    return known or next((key for key in msg.data if key not in _ABOUT), "empty message")


def _content(msg: _Fields, kind: str) -> tuple[str, tuple[FileRef, ...]]:
    """The text agents read for this message (a bracketed line for media, then any caption) and its files."""
    if kind == "text":
        return msg.string("text"), ()
    describe = _DESCRIBE.get(kind)
    line, file = describe(msg) if describe else (f"[unsupported message: {kind}]", None)
    caption = msg.optional_string("caption")
    return (f"{line}\n{caption}" if caption else line), ((file,) if file else ())


def _photo(msg: _Fields) -> tuple[str, FileRef | None]:
    sizes = msg.children("photo")
    if not sizes:
        return "[photo]", None
    largest = max(sizes, key=lambda size: (size.integer("width") * size.integer("height"),
                                          size.optional_integer("file_size") or 0))
    return "[photo]", _file(largest, f"photo_{msg.integer('message_id')}.jpg", "image/jpeg")


def _document(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("document")
    name = part.optional_string("file_name")
    return (f"[document: {name}]" if name else "[document]"), _named_file(msg, part, "document", None)


def _voice(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("voice")
    file = _file(part, f"voice_{msg.integer('message_id')}.ogg", "audio/ogg")
    return f"[voice message {_duration(part)}]", file


def _video(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("video")
    return f"[video {_duration(part)}]", _named_file(msg, part, "video", "video/mp4")


def _audio(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("audio")
    title = " – ".join(filter(None, (part.optional_string("performer"), part.optional_string("title"))))
    title = title or part.optional_string("file_name")
    line = f"[audio: {title}]" if title else f"[audio {_duration(part)}]"
    return line, _named_file(msg, part, "audio", "audio/mpeg")


def _video_note(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("video_note")
    file = _file(part, f"video_note_{msg.integer('message_id')}.mp4", "video/mp4")
    return f"[video note {_duration(part)}]", file


def _animation(msg: _Fields) -> tuple[str, FileRef | None]:
    return "[animation]", _named_file(msg, msg.child("animation"), "animation", "video/mp4")


_STICKER_FORMATS = {  # (is_video, is_animated) -> (extension, content type)
    (False, False): (".webp", "image/webp"),
    (True, False): (".webm", "video/webm"),
    (False, True): (".tgs", "application/x-tgsticker"),
}


def _sticker(msg: _Fields) -> tuple[str, FileRef | None]:
    part = msg.child("sticker")
    extension, content_type = _STICKER_FORMATS.get((part.flag("is_video"), part.flag("is_animated")),
                                                   _STICKER_FORMATS[True, False])
    emoji = part.optional_string("emoji")
    file = _file(part, f"sticker_{msg.integer('message_id')}{extension}", content_type)
    return (f"[sticker {emoji}]" if emoji else "[sticker]"), file


def _location(msg: _Fields) -> tuple[str, FileRef | None]:
    place = msg.child("location")
    lat, lon = f"{place.number('latitude'):.6f}", f"{place.number('longitude'):.6f}"
    return f"[location {lat}, {lon}] https://www.openstreetmap.org/?mlat={lat}&mlon={lon}", None


def _venue(msg: _Fields) -> tuple[str, FileRef | None]:
    venue = msg.child("venue")
    where = ", ".join(filter(None, (venue.optional_string("title"), venue.optional_string("address"))))
    return (f"[venue: {where}]" if where else "[venue]"), None


def _contact(msg: _Fields) -> tuple[str, FileRef | None]:
    contact = msg.child("contact")
    phone = contact.string("phone_number")
    try:
        phone = Address.parse("phone", _international(phone)).value
    except AddressError:
        pass  # shown as the customer's app sent it
    name = " ".join(filter(None, (contact.optional_string("first_name"), contact.optional_string("last_name"))))
    return f"[contact: {', '.join(filter(None, (name.strip(), phone)))}]", None


def _poll(msg: _Fields) -> tuple[str, FileRef | None]:
    return f"[poll: {msg.child('poll').string('question')}]", None


def _dice(msg: _Fields) -> tuple[str, FileRef | None]:
    dice = msg.child("dice")
    return f"[dice {dice.optional_string('emoji') or '🎲'} {dice.integer('value')}]", None


_DESCRIBE: dict[str, Callable[[_Fields], tuple[str, FileRef | None]]] = {
    "photo": _photo, "document": _document, "voice": _voice, "video": _video, "audio": _audio,
    "video_note": _video_note, "animation": _animation, "sticker": _sticker, "location": _location,
    "venue": _venue, "contact": _contact, "poll": _poll, "dice": _dice,
}


def _duration(part: _Fields) -> str:
    minutes, seconds = divmod(max(part.optional_integer("duration") or 0, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: the same names on every machine
#: Files customers often send that the built-in table does not know.
_MORE_TYPES = {
    ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4", ".heic": "image/heic",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".rar": "application/vnd.rar", ".7z": "application/x-7z-compressed",
}
for _extension, _type in _MORE_TYPES.items():
    _MIME_TYPES.add_type(_type, _extension)
_EXTENSIONS = {"image/jpeg": ".jpg"}  # the built-in table would say ".jpe"


def _named_file(msg: _Fields, part: _Fields, prefix: str, default_type: str | None) -> FileRef:
    """A file with the sender's name and type when given, else `<prefix>_<message id>` and a guess."""
    name = part.optional_string("file_name")
    content_type = part.optional_string("mime_type") or (name and _MIME_TYPES.guess_type(name)[0])
    content_type = content_type or default_type or "application/octet-stream"
    if not name:
        extension = _EXTENSIONS.get(content_type) or _MIME_TYPES.guess_extension(content_type) or ""
        name = f"{prefix}_{msg.integer('message_id')}{extension}"
    return _file(part, name, content_type)


def _file(part: _Fields, filename: str, content_type: str) -> FileRef:
    return FileRef(
        file_id=part.string("file_id"), file_unique_id=part.string("file_unique_id"), filename=filename,
        content_type=content_type, size=part.optional_integer("file_size"),
    )
