"""Property tests: the parsers, the address reader and the rule engine on whatever a customer, a provider
or an admin can send. Each says the function raises nothing but its module's own clear error and, where
there is one, what must hold of what it returns.

`derandomize=True`: every run tries the same examples, so a failure reproduces as it was seen; examples
that once found a bug stay as `@example`s.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json
import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from channels.email.parse import ParsedEmail, UnparseableEmail, parse_email
from channels.sms.callbacks import CallbackError, DeliveryReport, InboundSms, parse_delivery, parse_inbound
from channels.telegram.updates import (
    AgentMessage, ButtonPress, CustomerButton, CustomerMessage, Greeting, Ignored, UnreadableUpdate, parse_update,
)
from gateway.addresses import Address, AddressError
from gateway.attachments import safe_filename
from gateway.domain import AddressKind, ChannelKind
from workflows.persian import fold
from workflows.rules import ACTIONS, CONDITIONS, RULE_KEYS, Decision, Facts, RuleError, RuleSet, load_rules
from workflows.survey import button_data, parse_button, parse_score


def sized(examples: int) -> settings:
    """Hypothesis settings for one property: reproducible, no per-example deadline (CI machines stall)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def one_line(text: str) -> bool:
    return len(text.splitlines()) <= 1


# == email ==============================================================================================

CHARSETS = ["utf-8", "UTF-8", "windows-1256", "iso-8859-6", "koi8-r", "latin-1", "utf-16", "utf-32", "utf-7",
            "us-ascii", "gb2312", "shift_jis", "x-unknown", "unknown-8bit", "", "base64", "rot13", "zlib", "hex",
            "uu", "idna", "punycode", "utf-8*fa", "undefined", "unicode-escape", "raw-unicode-escape", "cp1256",
            "utf_8_sig", "mbcs", "x-mac-arabic"]
charsets = st.sampled_from(CHARSETS) | st.text(st.characters(codec="ascii", exclude_characters="?\r\n"), max_size=10)
#: Charset names an encoded word may carry (RFC 2047 tokens: no specials), known or not.
token_charsets = st.sampled_from(CHARSETS) | st.from_regex(r"[A-Za-z0-9!#$%&'*+^_`{|}~-]{0,10}", fullmatch=True)


@st.composite
def encoded_words(draw: st.DrawFn, charsets: st.SearchStrategy[str] = charsets) -> bytes:
    """An RFC 2047 encoded word with a random charset and a payload that may or may not fit it."""
    charset = draw(charsets)
    encoding = draw(st.sampled_from("BbQqX"))
    data = draw(st.binary(max_size=24) | st.text(max_size=12).map(lambda t: t.encode("utf-8")))
    if encoding in "Bb":
        payload = base64.b64encode(data)
        if draw(st.booleans()):
            payload = payload.rstrip(b"=")  # missing padding, as some mailers write it
    else:
        payload = b"".join(bytes([c]) if chr(c).isalnum() else b"=%02X" % c for c in data)
    return b"=?" + charset.encode("ascii", "replace") + b"?" + encoding.encode() + b"?" + payload + b"?="


header_piece = st.one_of(
    encoded_words(),
    st.text(max_size=16).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=12),
    st.sampled_from([b" ", b"\r\n ", b"\n\t", b'"', b"<", b">", b",", b";", b"=?", b"?=", b"\\", b"(", b")",
                     b":", b"@", b"=?utf-8?Q?", b"''", b"%D9%81", b"*"]),
)


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    """A header value of encoded words, raw 8-bit text and syntax characters, folded only as RFC 5322 allows."""
    value = b"".join(draw(st.lists(header_piece, max_size=8)))
    value = value.replace(b"\r\n ", b"\x00FOLD").replace(b"\n\t", b"\x00FOLD")
    value = value.replace(b"\r", b" ").replace(b"\n", b" ")
    return value.replace(b"\x00FOLD", b"\r\n ")


HEADER_NAMES = ["To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version",
                "Auto-Submitted", "Precedence", "List-Id", "List-Unsubscribe", "Return-Path", "X-Loop",
                "X-Autoreply", "Sender", "Received", "X-Mailer"]
header_names = st.sampled_from(HEADER_NAMES) | st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)

_local = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,8})?", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]{1,10}\.(com|ir|example|co\.uk)", fullmatch=True)
mailbox_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
# Words a display name may hold without turning into another address: atoms and encoded words.
display_words = st.lists(encoded_words(token_charsets) | st.from_regex(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", fullmatch=True),
                         max_size=4).map(b" ".join)

FILENAMES = ["../../etc/passwd", "/etc/passwd", "..\\..\\Windows\\win.ini", "C:\\boot.ini", "a\x00b.txt",
             "فاکتور.pdf", ".htaccess", "..", "x" * 300, "=?utf-8?B?2YHYp9qp2KrZiNixLnBkZg==?=", "",
             "<b>x</b>.html", "evil\u202egnp.exe"]
filenames = st.sampled_from(FILENAMES) | st.text(max_size=20)


def _param(name: str, value: str) -> bytes:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'; {name}="{quoted}"'.encode("utf-8", "surrogatepass")


@st.composite
def leaf_parts(draw: st.DrawFn) -> tuple[str, Any]:
    content_type = draw(st.sampled_from([
        "text/plain", "text/html", "application/pdf", "image/png", "application/octet-stream", "text/calendar",
        "message/delivery-status", "text/rfc822-headers", "message/rfc822", "multipart/mixed", "x/y", "text",
        "", ";;;", "TEXT/PLAIN", "message/global"]))
    params = b""
    for name in draw(st.lists(st.sampled_from(["charset", "name", "format", "delsp", "boundary", "name*",
                                               "report-type", "filename"]), max_size=3)):
        value = draw(charsets) if name == "charset" else draw(st.sampled_from(["flowed", "yes", "fixed"]) | filenames)
        if name == "name*":
            params += b"; name*=utf-8''" + urllib.parse.quote(value, safe="").encode("ascii")
        else:
            params += _param(name, value)
    head = b"Content-Type: " + content_type.encode() + params + b"\r\n"
    encoding = draw(st.sampled_from([None, "base64", "quoted-printable", "7bit", "8bit", "binary", "x-uuencode",
                                     "BASE64 ", "garbage"]))
    if encoding:
        head += b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n"
    disposition = draw(st.sampled_from([None, "attachment", "inline", "form-data", "attachment; filename*0*=utf-8''%D9%81"
                                        "; filename*1=a.txt"]))
    if disposition:
        head += b"Content-Disposition: " + disposition.encode()
        if draw(st.booleans()):
            head += _param("filename", draw(filenames))
        head += b"\r\n"
    data = draw(st.binary(max_size=200) | st.text(max_size=120).map(lambda t: t.encode("utf-8"))
                | st.binary(max_size=150).map(base64.encodebytes)
                | st.sampled_from([b"<html><body><p>Hi <b>there</b></p><blockquote cite=x>old</blockquote>",
                                   b"Action: failed\r\nFinal-Recipient: rfc822; a@b.example\r\n",
                                   b"Message-ID: <x@support.example.com>\r\n", b"> quoted\r\n-- \r\nsig"]))
    return ("leaf", head + b"\r\n" + data)


def _multipart(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.tuples(st.just("multipart"), st.sampled_from(["mixed", "alternative", "related", "report", "signed",
                                                            "digest", "x-weird"]),
                     st.from_regex(r"[A-Za-z0-9'()+_,./:=?-]{1,20}", fullmatch=True),
                     st.lists(children, max_size=4), st.binary(max_size=20), st.booleans())


mime_trees = st.recursive(
    leaf_parts(),
    lambda children: _multipart(children) | st.tuples(st.just("message"), st.lists(
        st.tuples(header_names, header_values()), max_size=3), children),
    max_leaves=8,
)


def render(node: Any) -> bytes:
    """A MIME tree as the bytes of an entity: its own header lines, a blank line, its body."""
    if node[0] == "leaf":
        return node[1]
    if node[0] == "message":
        _, headers, inner = node
        fields = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        return b"Content-Type: message/rfc822\r\n\r\n" + fields + render(inner)
    _, subtype, boundary, children, preamble, closed = node
    body = preamble + b"\r\n" + b"".join(b"--" + boundary.encode() + b"\r\n" + render(c) + b"\r\n" for c in children)
    if closed:
        body += b"--" + boundary.encode() + b"--\r\n"
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body


@st.composite
def hostile_emails(draw: st.DrawFn) -> tuple[str, bytes]:
    """(the sender's address, an email from it): hostile headers and a random MIME tree."""
    address = draw(mailbox_addresses)
    display = draw(display_words)
    sender = display + b" <" + address.encode() + b">" if display else address.encode()
    headers = draw(st.lists(st.tuples(header_names, header_values()), max_size=8))
    raw = b"From: " + sender + b"\r\n" + b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    return address, raw + render(draw(mime_trees))


RECEIVED = dt.datetime(2024, 3, 4, 10, 15, tzinfo=dt.UTC)


def check_parsed(parsed: ParsedEmail) -> None:
    """What the core relies on in every parsed email."""
    message = parsed.message
    assert message.channel is ChannelKind.EMAIL and message.sender.kind is AddressKind.EMAIL
    assert not any(unicodedata.category(c) == "Cc" for c in message.sender.value)
    assert isinstance(message.text, str) and "\r" not in message.text
    assert message.subject is None or (isinstance(message.subject, str) and one_line(message.subject))
    assert message.provider_id and isinstance(message.provider_id, str)
    assert message.received_at.tzinfo is not None
    assert len(message.in_reply_to) <= 20
    assert all(isinstance(f.filename, str) and f.filename and isinstance(f.data, bytes) for f in message.attachments)
    assert message.language in (None, "fa", "en")
    json.dumps(dict(message.raw), ensure_ascii=False)  # kept on the record as JSON


@sized(300)
@given(st.binary(max_size=3000) | st.binary(max_size=2000).map(lambda b: b"From: a@b.example\r\n" + b))
@example(b"From: sara@exam\x00ple.com\r\n\r\nhi")  # was a ticket from an address PostgreSQL cannot store
def test_parse_email_on_any_bytes_parses_or_raises_unparseable(raw: bytes) -> None:
    try:
        parsed = parse_email(raw, own_domains=["support.example.com"], received_at=RECEIVED)
    except UnparseableEmail as exc:
        assert str(exc)
        return
    check_parsed(parsed)


@sized(250)
@given(hostile_emails())
def test_a_hostile_email_from_a_real_address_is_always_read_and_keeps_its_sender(case: tuple[str, bytes]) -> None:
    # Whatever the headers and the MIME tree hold, a readable From means a ticket: the customer is never
    # told nothing because a part was odd.
    address, raw = case
    parsed = parse_email(raw, own_domains=["support.example.com"], received_at=RECEIVED)
    check_parsed(parsed)
    assert parsed.message.sender == Address.parse("email", address)
    assert parse_email(raw, own_domains=["support.example.com"], received_at=RECEIVED) == parsed  # pure


# == Telegram ===========================================================================================

TELEGRAM_SAMPLES = Path(__file__).parent / "data" / "telegram"
DESK_CHATS = (-1001987654321, -1002223334445)
MARYAM = 123456789
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=10)

INT_KEYS = ("update_id", "message_id", "id", "date", "edit_date", "message_thread_id", "file_size", "width",
            "height", "duration", "user_id", "value")
STR_KEYS = ("type", "text", "caption", "first_name", "last_name", "username", "language_code", "file_id",
            "file_unique_id", "file_name", "mime_type", "emoji", "title", "performer", "address", "question",
            "phone_number", "data")
BOOL_KEYS = ("is_bot", "is_topic_message", "is_automatic_forward", "is_video", "is_animated")
OBJECT_KEYS = ("message", "edited_message", "callback_query", "chat", "from", "reply_to_message", "document",
               "voice", "video", "audio", "video_note", "animation", "sticker", "location", "venue", "contact",
               "poll", "dice", "forum_topic_created", "channel_post")
LIST_KEYS = ("photo", "new_chat_members", "entities")
NUMBER_KEYS = ("latitude", "longitude")
TEXTS = st.text(max_size=16) | st.sampled_from(
    ["/start", "/start site_42", "/start@KartablBot", "/close@KartablBot", "/take T-1042", "/x@OtherBot", "private",
     "group", "supergroup", "channel", "image/jpeg", "a.pdf", "+989121234567", "989121234567", "09121234567"])
INTS = st.sampled_from([*DESK_CHATS, MARYAM, 1, 0, -1, 1732283052]) | st.integers() | st.integers(-2**70, 2**70)


def _typed(key: str, depth: int) -> st.SearchStrategy[Any]:
    """A plausible value for a Bot API field (most of the time), or any JSON (the rest)."""
    if key in INT_KEYS:
        plausible: st.SearchStrategy[Any] = INTS
    elif key in STR_KEYS:
        plausible = TEXTS
    elif key in BOOL_KEYS:
        plausible = st.booleans()
    elif key in NUMBER_KEYS:
        plausible = st.floats() | st.integers(-2**1100, 2**1100)
    elif key in OBJECT_KEYS and depth > 0:
        plausible = bot_objects(depth - 1)
    elif key in LIST_KEYS and depth > 0:
        plausible = st.lists(bot_objects(depth - 1), max_size=3)
    else:
        return json_values
    return st.one_of(plausible, plausible, plausible, json_values)


KNOWN_KEYS = INT_KEYS + STR_KEYS + BOOL_KEYS + OBJECT_KEYS + LIST_KEYS + NUMBER_KEYS


def bot_objects(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of Bot API field names (and others) with values mostly of the field's type."""
    keys = st.lists(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), unique=True, max_size=7)
    return keys.flatmap(lambda names: st.fixed_dictionaries({name: _typed(name, depth) for name in names}))


# Updates shaped as Telegram sends them, any values of the right types in them (mangled ones further down).
IDS = st.sampled_from([*DESK_CHATS, MARYAM, 7, 1732283052]) | INTS
users = st.fixed_dictionaries({"id": st.just(MARYAM) | st.integers(1, 2**52) | IDS}, optional={
    "is_bot": st.sampled_from([False, False, False, True]), "first_name": TEXTS, "last_name": TEXTS,
    "username": TEXTS, "language_code": st.sampled_from(["fa", "en", "fa-IR", "ar"]) | TEXTS})
chats = st.fixed_dictionaries({"id": IDS, "type": st.sampled_from(["private", "supergroup", "group", "channel"])})
files = st.fixed_dictionaries({"file_id": TEXTS, "file_unique_id": TEXTS}, optional={
    **dict.fromkeys(("file_size", "duration", "width", "height"), IDS),
    **dict.fromkeys(("file_name", "mime_type", "emoji", "performer", "title"), TEXTS),
    "is_video": st.booleans(), "is_animated": st.booleans()})
contents = st.one_of(
    st.fixed_dictionaries({"text": TEXTS}),
    st.fixed_dictionaries({"photo": st.lists(files, max_size=3) | json_values}),
    *(st.fixed_dictionaries({kind: files}) for kind in ("document", "voice", "video", "audio", "video_note",
                                                        "animation", "sticker")),
    st.fixed_dictionaries({"location": st.fixed_dictionaries({"latitude": st.floats() | json_values,
                                                              "longitude": st.floats() | json_values})}),
    st.fixed_dictionaries({"contact": st.fixed_dictionaries({"phone_number": TEXTS}, optional={
        "user_id": IDS, "first_name": TEXTS})}),
    st.fixed_dictionaries({"venue": st.fixed_dictionaries({}, optional={"title": TEXTS, "address": TEXTS})}),
    st.fixed_dictionaries({"poll": st.fixed_dictionaries({"question": TEXTS})}),
    st.fixed_dictionaries({"dice": st.fixed_dictionaries({"value": IDS}, optional={"emoji": TEXTS})}),
    st.fixed_dictionaries({"new_chat_members": st.lists(users, max_size=2)}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=2),  # a kind of message not known yet
)
about = st.fixed_dictionaries({}, optional={
    "caption": TEXTS, "message_thread_id": IDS, "is_topic_message": st.booleans() | json_values,
    "edit_date": IDS, "is_automatic_forward": st.booleans(),
    "reply_to_message": st.fixed_dictionaries({"message_id": IDS}, optional={
        "forum_topic_created": json_values}) | json_values})
any_messages = st.builds(lambda base, content, more: {**base, **content, **more}, st.fixed_dictionaries(
    {"message_id": IDS, "date": st.integers(0, 2**33), "chat": chats}, optional={"from": users}), contents, about)


def _sent(message: dict[str, Any], user: dict[str, Any], chat: dict[str, Any], date: int) -> dict[str, Any]:
    return {**message, "from": {**user, "is_bot": False}, "chat": chat, "date": date}


# Where Telegram itself sends most: a person's private chat with the bot, and the desk, at a readable time.
messages = any_messages | st.builds(_sent, any_messages, users, st.one_of(
    st.fixed_dictionaries({"id": st.just(MARYAM) | st.integers(1, 2**52), "type": st.just("private")}),
    st.fixed_dictionaries({"id": st.sampled_from(DESK_CHATS), "type": st.just("supergroup")})),
    st.integers(0, 2**32))
callback_queries = st.fixed_dictionaries({"id": TEXTS, "from": users}, optional={
    "message": messages, "data": st.sampled_from(["take:42", "csat:42:5", "reply:T-1042:5"]) | TEXTS})
message_updates = st.builds(lambda update_id, kind, body: {"update_id": update_id, kind: body}, INTS,
                            st.sampled_from(["message", "message", "edited_message"]), messages)
bot_updates = st.one_of(
    message_updates, message_updates,
    st.builds(lambda update_id, body: {"update_id": update_id, "callback_query": body}, INTS, callback_queries),
    bot_objects(4),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


def check_update(update: Any) -> None:
    """Only UnreadableUpdate escapes, and always from a typed read that names the field (no catch-all)."""
    try:
        parsed = parse_update(update, desk_chats=DESK_CHATS, bot_username="KartablBot")
    except UnreadableUpdate as exc:
        assert "unexpected shape" not in str(exc), exc
        assert str(exc).startswith("update")
        return
    assert isinstance(parsed, (CustomerMessage, Greeting, AgentMessage, ButtonPress, CustomerButton, Ignored))
    if isinstance(parsed, CustomerMessage):
        message = parsed.message
        assert message.channel is ChannelKind.TELEGRAM and message.sender.kind is AddressKind.TELEGRAM
        assert isinstance(message.text, str)
        assert message.provider_id.startswith(f"{update[next(k for k in update if k != 'update_id')]['chat']['id']}:")
        assert all(isinstance(f.file_id, str) and f.filename for f in parsed.files)
    elif isinstance(parsed, (AgentMessage, ButtonPress)):
        assert parsed.chat_id in DESK_CHATS
    elif isinstance(parsed, CustomerButton):
        assert parsed.chat_id not in DESK_CHATS


@sized(400)
@given(bot_updates)
def test_the_update_parser_on_any_json_object_reads_it_or_names_the_bad_field(update: dict[str, Any]) -> None:
    check_update(update)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [path, *(sub for key, value in children for sub in _paths(value, (*path, key)))]


SAMPLES = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(TELEGRAM_SAMPLES.glob("*.json"))}


@st.composite
def mutated_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A recorded update with one to three fields deleted, replaced by any JSON, or added."""
    update = copy.deepcopy(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(update)[1:]
        if not paths:  # every field deleted
            break
        path = draw(st.sampled_from(paths))
        parent = update
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            key = draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6))
            parent[key] = draw(_typed(key, 2))
        else:
            parent[path[-1]] = draw(_typed(str(path[-1]), 2))
    return update


@sized(400)
@given(mutated_updates())
def test_a_recorded_update_with_fields_mangled_is_read_or_refused_naming_the_field(update: dict[str, Any]) -> None:
    check_update(update)


# == Kavenegar callbacks ================================================================================

FORM = "application/x-www-form-urlencoded"
methods = st.sampled_from(["GET", "POST", "get", "post", "PUT", "HEAD", "", "DELETE"]) | st.text(max_size=8)
content_types = st.none() | st.sampled_from([
    FORM, f"{FORM}; charset=windows-1256", "application/json", "application/json; charset=latin-1",
    "text/plain", "multipart/form-data", "application/json; charset=x", "application/vnd.api+json",
    f"{FORM}; charset=utf-16", f"{FORM}; charset=base64", f"{FORM}; charset=punycode", "text/plain; charset=\x00",
    f"{FORM}; charset=\"idna\"", "application/json; charset=undefined"]) | st.text(max_size=30)
form_pieces = st.sampled_from(["messageid=", "msgid=", "from=", "to=", "message=", "status=", "date=", "&", "=",
                               "%", "%D8", "%D8%B3", "%ZZ", "+", "1", "10", "۱۰", "سلام", "%00", "\x00", ";",
                               "Message_Id=", "SENDER=", "date=1e400", "date=-5", "date=nan"])
form_texts = st.lists(form_pieces | st.text(max_size=6), max_size=16).map("".join)
callback_bodies = st.one_of(
    st.binary(max_size=300),
    form_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.dictionaries(st.sampled_from(["messageid", "from", "to", "message", "status", "date", "id"])
                             | st.text(max_size=6), json_values, max_size=5), max_size=3).map(
        lambda v: json.dumps(v if len(v) != 1 else v[0], ensure_ascii=False).encode()),
    st.sampled_from([b"\xef\xbb\xbf{}", b'{"messageid": "\\ud83d"}', b"[" * 5000, b'{"a": 1' + b"0" * 5000 + b"}"]),
)


@sized(500)
@given(methods, form_texts | st.text(max_size=40), content_types, callback_bodies, st.sampled_from([parse_inbound,
                                                                                                 parse_delivery]))
@example("POST", "", f"{FORM}; charset=utf-16", b"messageid=1", parse_inbound)
def test_the_kavenegar_parsers_raise_only_callback_errors_in_one_line(
        method: str, query: str, content_type: str | None, body: bytes, parse: Any) -> None:
    try:
        found = parse(method, query, content_type, body, max_bytes=4096)
    except CallbackError as exc:
        assert str(exc) and one_line(str(exc))
        return
    assert isinstance(found, list)  # an empty JSON list is a call with nothing in it
    for record in found:
        assert isinstance(record, (InboundSms, DeliveryReport))
        assert record.messageid and record.messageid == record.messageid.strip()
        if isinstance(record, InboundSms):
            assert record.sender and (record.received_at is None or record.received_at.tzinfo is dt.UTC)
            assert all(isinstance(v, str) for v in record.extra.values())
        # What was read can be stored: no lone surrogate (PostgreSQL's UTF-8 would refuse it).
        for value in (*dataclasses.astuple(record)[:4], *record.extra):
            if isinstance(value, str):
                value.encode("utf-8")


field_values = st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "\x00" not in t)


@sized(200)
@given(field_values, field_values, st.text(max_size=60), st.sampled_from(["get-query", "post-form", "post-json"]))
def test_a_well_formed_inbound_callback_gives_back_what_was_sent(
        messageid: str, sender: str, text: str, shape: str) -> None:
    fields = {"messageid": messageid, "from": sender, "to": "10004346", "message": text}
    if shape == "get-query":
        found = parse_inbound("GET", urllib.parse.urlencode(fields), None, b"")
    elif shape == "post-form":
        found = parse_inbound("POST", "", FORM, urllib.parse.urlencode(fields).encode())
    else:
        found = parse_inbound("POST", "", "application/json", json.dumps(fields, ensure_ascii=False).encode())
    assert found == [InboundSms(messageid=messageid.strip(), sender=sender.strip(), receptor="10004346",
                                text=text.strip())]


@sized(100)
@given(st.text(alphabet="abcdefghij", min_size=12, max_size=20), st.sampled_from([parse_inbound, parse_delivery]))
def test_an_unreadable_callback_is_explained_without_quoting_the_customers_text(secret: str, parse: Any) -> None:
    body = urllib.parse.urlencode({"to": "10004346", "message": f"my card is {secret}"}).encode()
    try:
        parse("POST", "", FORM, body)
    except CallbackError as exc:
        assert secret not in str(exc)
    else:
        raise AssertionError("a callback without a messageid was read")


# == addresses ==========================================================================================

E164 = re.compile(r"\+[1-9][0-9]{5,14}")


@sized(400)
@given(st.sampled_from(list(AddressKind)), st.text(max_size=40) | st.from_regex(r"[0-9+ ()-]{0,20}", fullmatch=True)
       | st.text("0123456789۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩²³¹𝟙𝟚 +-", max_size=20))
@example(AddressKind.TELEGRAM, "²")  # a digit int() cannot read: was a bare ValueError
@example(AddressKind.TELEGRAM, "1" * 5000)  # past int()'s 4300 digits: was a bare ValueError
@example(AddressKind.EMAIL, "sara@exam\x00ple.com")  # a NUL PostgreSQL cannot store: was accepted
def test_address_parse_gives_one_canonical_spelling_or_an_address_error(kind: AddressKind, raw: str) -> None:
    try:
        address = Address.parse(kind, raw)
    except AddressError:
        return
    value = address.value
    assert address.kind is kind and value == value.strip() and value
    assert not any(c.isspace() or unicodedata.category(c) == "Cc" for c in value)
    assert Address.parse(kind, value) == address  # the canonical spelling reads as itself
    if kind is AddressKind.PHONE:
        assert E164.fullmatch(value), value
    elif kind is AddressKind.TELEGRAM:
        assert value.isascii() and value.isdigit() and not value.startswith("0")
    else:
        assert value == value.lower() and "@" in value


iranian_mobiles = st.from_regex(r"9[0-9]{9}", fullmatch=True)


@sized(200)
@given(iranian_mobiles, st.sampled_from(["0", "+98", "0098", "98", ""]), st.sampled_from([PERSIAN_DIGITS, ARABIC_DIGITS,
                                                                                      str.maketrans({})]),
       st.lists(st.sampled_from([" ", "-", "(", ")", "\u200c"]), max_size=3))
def test_an_iranian_mobile_in_any_digits_and_spelling_is_one_e164_number(
        national: str, prefix: str, digits: dict[int, str], separators: list[str]) -> None:
    if prefix == "98":
        prefix = "+98"  # "98912..." alone is read as a national number: Telegram's contacts get their "+" added
    spelled = (prefix + national[:3] + "".join(separators) + national[3:]).translate(digits)
    assert Address.parse("phone", spelled).value == "+98" + national


# == rules ==============================================================================================

REGEXES = ["سفارش\\\\s*\\\\d+", "(a+)+", "[", "\\\\border\\\\b", "(?P<x>a)(?P=x)", "a{2,}", "(?>a+)+", "a++",
           "(", "\\\\", "(?i)x", "\\\\p{L}", ".*.*=.*", "(a|aa)+", "[\\\\d-]"]


def toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


toml_scalars = st.one_of(
    st.text(max_size=12).map(toml_string),
    st.sampled_from([toml_string(v) for v in ("email", "sms", "telegram", "fa", "high", "urgent", "round_robin",
                                               "@reza", "billing", "vip", "+98912*", "@bigcorp.ir", "telegram:1",
                                               "sara@example.ir", "", " ", "low|high")]),
    st.sampled_from([f'"{r}"' for r in REGEXES]),
    st.sampled_from(["true", "false", "1", "-3", "1.5", "nan", "inf", "1979-05-27", "'lit'", '"""multi\nline"""',
                     "'''a'''", '"\\u00e9"']),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"),
                        st.lists(st.tuples(st.sampled_from(CONDITIONS + ACTIONS), toml_scalars), max_size=2).map(
                            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"))
toml_lines = st.one_of(
    st.sampled_from(["[[rule]]", "[rule.when]", "[rule.then]", "[rule]", "[[rules]]", "[calendar]", "[[rule.then]]",
                     "[rule.when.channel]", "  [[ rule ]]  # again", "", "# comment", "[sla.high]", '"""', "'''"]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(CONDITIONS + ACTIONS + RULE_KEYS + ("when.channel", "rule",
                                                                                             "x", "then.tags")),
              toml_values),
    st.text(max_size=20),
)
toml_texts = st.lists(toml_lines, max_size=24).map("\n".join)


@sized(400)
@given(toml_texts)
@example('[[rule]]\nname = "a"\n[rule.then]\ntags = ["x"]\n[[rule]]\nname = "A"\n[rule.then]\ntags = ["y"]')
def test_load_rules_on_any_text_loads_or_raises_a_one_line_rule_error_with_its_line(text: str) -> None:
    try:
        rules = load_rules(text, "rules.toml")
    except RuleError as exc:
        message = str(exc)
        assert one_line(message) and message.startswith("rules.toml")
        inline = re.search(r"^\s*rule\s*[=.]", text, re.MULTILINE)  # rules not as [[rule]] tables: no lines
        if exc.line is None:
            assert inline is not None and not exc.reason.startswith("TOML syntax error"), message
        else:
            assert 1 <= exc.line <= text.count("\n") + 1, message
            assert message.startswith(f"rules.toml:{exc.line}: ")
        return
    assert isinstance(rules, RuleSet)
    decision = rules.evaluate(Facts(channel="email", text="سلام", subject="فاکتور"))
    assert len(decision.fired) + len(decision.missed) == len(rules.rules)


sender_texts = st.sampled_from(["email:sara@example.ir", "email:ali@bigcorp.ir", "phone:+989121234567", "telegram:12",
                                "", ":", "email:", "phone:+98912*", "EMAIL:SARA@EXAMPLE.IR"])
body_texts = st.text(max_size=60) | st.sampled_from(["فاكتور شماره ۱۲", "my ORDER is late", "سفارش ۱۲۳", "URGENT",
                                                     "1" * 25_000, "سفارش" + "۱" * 20_000])
words = st.text(min_size=1, max_size=10).filter(lambda t: t.strip() and fold(t))
CONDITION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "channel": st.lists(st.sampled_from(["email", "sms", "telegram", "loopback", "SMS"]), min_size=1, max_size=3),
    "sender": st.lists(st.sampled_from(["@bigcorp.ir", "*@bigcorp.ir", "+98912*", "telegram:1*", "sara@example.ir",
                                        "email:*@x.ir", "+98 (912) 123-*"]), min_size=1, max_size=3),
    "subject_any": st.lists(words, min_size=1, max_size=3),
    "text_any": st.lists(words, min_size=1, max_size=3),
    "text_regex": st.lists(st.sampled_from(["سفارش\\s*\\d+", "\\border\\b", "فاکتور", "a{2,}", "(?i)x", "a++"]),
                           min_size=1, max_size=2),
    "language": st.lists(st.sampled_from(["fa", "en", "fa-IR", "EN"]), min_size=1, max_size=2),
    "customer_tags": st.lists(words, min_size=1, max_size=3),
    "has_attachment": st.booleans(), "business_hours": st.booleans(), "first_message": st.booleans(),
}
ACTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "department": words, "priority": st.sampled_from(["low", "normal", "High", "URGENT"]),
    "tags": st.lists(words, min_size=1, max_size=3), "assign": st.sampled_from(["round_robin", "least_open",
                                                                              "manual", "@reza"]),
    "reply_template": words, "review": st.booleans(), "stop": st.booleans(),
}


def toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML wants DEL escaped too


@st.composite
def rule_tables(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    when = draw(st.fixed_dictionaries({}, optional=CONDITION_VALUES))
    then = draw(st.fixed_dictionaries({}, optional=ACTION_VALUES).filter(bool))
    return when, then


def render_rules(rules: list[tuple[dict[str, Any], dict[str, Any]]], styles: list[str]) -> str:
    """A rule file: each rule's conditions and actions as sections, inline tables or dotted keys."""
    lines: list[str] = ["# routing", ""]
    for number, ((when, then), style) in enumerate(zip(rules, styles), 1):
        lines += ["[[rule]]", f'name = "rule {number}"']
        for section, table in (("when", when), ("then", then)):
            if style == "inline":
                lines.append(f"{section} = {{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in table.items()) + "}")
            elif style == "dotted":
                lines += [f"{section}.{k} = {toml_value(v)}" for k, v in table.items()]
        for section, table in (("when", when), ("then", then)):
            if style == "sections" and table:
                lines += [f"[rule.{section}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
        lines.append("")
    return "\n".join(lines)


@sized(150)
@given(st.lists(st.tuples(rule_tables(), st.sampled_from(["sections", "inline", "dotted"])), max_size=5),
       st.builds(Facts, channel=st.sampled_from(["email", "sms", "telegram"]), sender=sender_texts, subject=body_texts,
                 text=body_texts, language=st.sampled_from(["fa", "en", None]), customer_tags=st.just(("vip",)),
                 has_attachment=st.booleans(), business_hours=st.booleans(), first_message=st.booleans()))
def test_a_well_formed_rule_file_loads_with_each_rule_and_action_at_its_line(
        rules: list[tuple[tuple[dict[str, Any], dict[str, Any]], str]], facts: Facts) -> None:
    text = render_rules([tables for tables, _ in rules], [style for _, style in rules])
    lines = text.split("\n")
    loaded = load_rules(text)
    assert [r.name for r in loaded.rules] == [f"rule {n}" for n in range(1, len(rules) + 1)]
    for rule, ((_, then), _) in zip(loaded.rules, rules):
        assert rule.line is not None and lines[rule.line - 1] == "[[rule]]"
        for action in then:
            assert action in lines[rule.line_of(action) - 1], (action, rule.line_of(action))
    decision = loaded.evaluate(facts)
    assert len(decision.fired) + len(decision.missed) == len(rules)


BAD_ENTRIES = [("when", "channel", '"fax"'), ("when", "has_attachment", '"yes"'), ("when", "text_regex", '"(a+)+"'),
               ("when", "text_regex", '"["'), ("when", "sender", '"nobody"'), ("when", "colour", '"red"'),
               ("when", "text_any", "[]"), ("when", "language", "1"), ("then", "priority", '"extreme"'),
               ("then", "assign", '"everyone"'), ("then", "review", '"yes"'), ("then", "tags", "[1]"),
               ("then", "sound", '"beep"'), ("then", "department", '"  "')]


class Raw(str):
    """TOML text written into a rule file as it is."""


@sized(150)
@given(st.lists(rule_tables(), min_size=1, max_size=4), st.data())
def test_a_mistake_in_a_rule_file_is_reported_at_its_line(
        rules: list[tuple[dict[str, Any], dict[str, Any]]], data: st.DataObject) -> None:
    culprit = data.draw(st.integers(0, len(rules) - 1))
    section, key, bad = data.draw(st.sampled_from(BAD_ENTRIES))
    when, then = rules[culprit]
    (when if section == "when" else then)[key] = Raw(bad)
    text = render_rules(rules, ["sections"] * len(rules))
    lines = text.split("\n")
    header = [n for n, line in enumerate(lines) if line == "[[rule]]"][culprit]
    expected = lines.index(f"{key} = {bad}", header) + 1
    try:
        load_rules(text)
    except RuleError as exc:
        assert str(exc).startswith(f'rules.toml:{expected}: rule "rule {culprit + 1}": '), (str(exc), text)
    else:
        raise AssertionError(f"{key} = {bad} was accepted")


# Every condition and action at least once, so evaluate walks every check.
EVERY_CONDITION = """
[[rule]]
name = "channels"
[rule.when]
channel = ["email", "sms", "telegram"]
sender = ["@bigcorp.ir", "+98912*", "telegram:1*", "sara@example.ir"]
[rule.then]
department = "sales"
tags = ["known"]
[[rule]]
name = "words"
[rule.when]
text_any = ["فاکتور", "invoice"]
subject_any = ["urgent"]
text_regex = ["سفارش\\\\s*\\\\d+", "\\\\border\\\\b"]
[rule.then]
priority = "high"
review = true
[[rule]]
name = "who"
[rule.when]
language = ["fa", "en"]
customer_tags = ["vip", "ويژه"]
[rule.then]
assign = "@reza"
reply_template = "ack"
[[rule]]
name = "flags"
[rule.when]
has_attachment = true
business_hours = false
first_message = true
[rule.then]
tags = ["after-hours"]
stop = true
[[rule]]
name = "never reached when flags fire"
[rule.then]
tags = ["last"]
"""
RULES = load_rules(EVERY_CONDITION)
ALL_TAGS = {tag for rule in RULES.rules for tag in rule.actions.tags}
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8), st.text(max_size=30),
                     st.lists(st.text(max_size=6) | st.none() | st.integers(), max_size=3).map(tuple),
                     st.frozensets(st.text(max_size=4), max_size=2), st.builds(object),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@sized(300)
@given(st.builds(Facts, channel=st.sampled_from(["email", "sms", "telegram", "EMAIL"]) | anything,
                 sender=sender_texts | anything, subject=body_texts | anything, text=body_texts | anything,
                 language=st.sampled_from(["fa", "en", "fa-IR", "FA_ir"]) | anything,
                 customer_tags=st.sampled_from([("vip",), ("VIP", "b2b"), ("ویژه",), "vip"]) | anything,
                 has_attachment=anything, business_hours=anything, first_message=anything))
def test_evaluate_on_any_facts_never_raises_and_accounts_for_every_rule(facts: Facts) -> None:
    decision = RULES.evaluate(facts)
    assert isinstance(decision, Decision)
    assert len(decision.fired) + len(decision.missed) == len(RULES.rules)
    assert set(decision.tags) <= ALL_TAGS and len(set(decision.tags)) == len(decision.tags)
    assert all(one_line(line) for line in decision.explain())
    if not decision.fired:
        assert (decision.department, decision.priority, decision.tags, decision.review) == (None, None, (), False)


# == survey answers =====================================================================================

score_pieces = st.sampled_from([
    "1", "2", "3", "4", "5", "6", "0", "10", "۴", "٣", "۵", "⭐", "★", "🌟", "/5", " از ۵", " out of five", "?",
    "؟", "پنج", "سه", "یک", "four", "one", "stars", "ستاره", "امتیاز", "روز", "days", "T-1042", "#3", "4.5", "2-3",
    "10:30", ":", " ", "\n", "\n> ", "\n-- \n", "wrote:", "ممنون", "thanks", "\u200c", "ي", "ك", "٫", "%",
])
score_texts = st.text(max_size=60) | st.lists(score_pieces | st.text(max_size=5), max_size=14).map("".join)


@sized(500)
@given(score_texts)
def test_parse_score_is_none_or_one_to_five(text: str) -> None:
    assert parse_score(text) in (None, 1, 2, 3, 4, 5)


@sized(200)
@given(score_texts, st.text(max_size=40).filter(one_line), st.sampled_from(["\n> ", "\n--\n", "\n-- \n"]))
def test_quoted_lines_and_signatures_below_the_answer_never_change_the_score(
        text: str, below: str, mark: str) -> None:
    assert parse_score(text + mark + below) == parse_score(text)


@sized(100)
@given(st.integers(1, 5), st.sampled_from([PERSIAN_DIGITS, ARABIC_DIGITS, str.maketrans({})]),
       st.sampled_from(["{}", "{} ", " {}", "ممنون {}", "thanks {}", "{}/5", "{} از ۵", "امتیاز: {}", "{} ستاره"]))
def test_a_single_score_in_any_digits_is_read_and_a_question_mark_unsays_it(
        score: int, digits: dict[int, str], shape: str) -> None:
    text = shape.format(str(score).translate(digits))
    assert parse_score(text) == score
    assert parse_score(text + "?") is None and parse_score(text + " ؟") is None
    assert parse_score("⭐" * score) == score


@sized(200)
@given(st.text(max_size=40) | st.from_regex(r"csat:[0-9]{1,20}:[0-9]", fullmatch=True) | anything)
def test_parse_button_is_none_or_a_ticket_and_a_score(data: Any) -> None:
    found = parse_button(data)
    if found is not None:
        ticket_id, score = found
        assert ticket_id >= 1 and score in range(1, 6)
        assert button_data(ticket_id, score) == data


# == attachment names ===================================================================================

@sized(400)
@given(st.none() | st.text(max_size=400) | st.sampled_from(FILENAMES) | st.lists(
    st.sampled_from(["..", ".", "/", "\\", "\x00", "\x85", "\u2028", "\u202e", "\u2066", "a", "فا", "\u200c", " ",
                     "C:", "~"]), max_size=12).map("".join))
@example("evil\u202egnp.exe")  # right-to-left override: was shown as "evilexe.png"
@example("report\x85[not kept: all]")  # NEL, a line break: was kept
@example("a\u2028b")  # LINE SEPARATOR: was kept
@example(". 0")  # a leading dot removed left a leading space: " 0"
def test_a_file_name_is_shown_as_one_harmless_line(name: str | None) -> None:
    shown = safe_filename(name)
    assert shown and len(shown) <= 255 and one_line(shown)
    assert not any(c in "/\\" for c in shown) and not shown.startswith(".")
    assert not any(unicodedata.category(c) == "Cc" for c in shown)
    assert not any(unicodedata.bidirectional(c) in ("LRO", "RLO", "LRE", "RLE", "PDF", "LRI", "RLI", "FSI", "PDI")
                   for c in shown)
    assert safe_filename(shown) == shown  # already safe: kept as it is


@sized(100)
@given(st.from_regex(r"[A-Za-z0-9\u0627-\u06cc][A-Za-z0-9\u0627-\u06cc\u200c _()-]{0,40}\.(pdf|jpg|docx)", fullmatch=True))
def test_an_ordinary_file_name_persian_and_half_spaces_included_is_shown_as_sent(name: str) -> None:
    assert safe_filename(name) == name
