"""The Telegram update parser on Bot API updates as getUpdates returns them: customers, agents, the rest."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest

from channels.telegram.updates import (
    AgentMessage,
    ButtonPress,
    CustomerButton,
    CustomerMessage,
    FileRef,
    Greeting,
    Ignored,
    UnreadableUpdate,
    parse_update,
)
from gateway.addresses import Address
from gateway.domain import ChannelKind
from gateway.messages import InboundMessage

CORPUS = Path(__file__).parent / "data" / "telegram"
DESK = -1001987654321  # a forum supergroup: one topic per ticket
PLAIN_DESK = -1002223334445  # a supergroup without topics
DESK_CHATS = (DESK, PLAIN_DESK)
BOT = "KartablBot"
MARYAM, JOHN, ALI = 123456789, 987654321, 444555666


def load(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def parse(update: Any, *, bot_username: str | None = BOT) -> Any:
    return parse_update(update, desk_chats=DESK_CHATS, bot_username=bot_username)


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def tg(user_id: int) -> Address:
    return Address.parse("telegram", str(user_id))


# What each customer sample must become: the InboundMessage's fields (raw is the update itself) and files.
CUSTOMER_CASES: dict[str, dict[str, Any]] = {
    "01-text-persian.json": dict(
        provider_id=f"{MARYAM}:1001", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="سلام، سفارش شماره ۴۵۶۷ من هنوز نرسیده. می‌خواستم پیگیری کنم.", received_at=at(1732283052),
    ),
    "02-text-english-reply.json": dict(
        provider_id=f"{JOHN}:2002", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="Thanks! Any update on T-1043?", received_at=at(1732283400), in_reply_to=(f"{JOHN}:2001",),
    ),
    "03-photo-caption.json": dict(
        provider_id=f"{MARYAM}:1002", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[photo]\nاین هم رسید پرداخت", received_at=at(1732283110),
        files=(FileRef("AgACAgQAAxkBAAIDcmdAq1Fx0hVYbYJ7cQABZ2hS3mQAAr-6MRt3gQhRZ7QW9vEAAQMAAgADeQADNgQ",
                       "AQADv7oxG3eBCFF-", "photo_1002.jpg", "image/jpeg", 98311),),
    ),
    "04-document-pdf.json": dict(
        provider_id=f"{MARYAM}:1003", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[document: فاکتور-۱۴۰۳.pdf]", received_at=at(1732283170),
        files=(FileRef("BQACAgQAAxkBAAIDc2dAq4p3oXcYzJzAAQABpF2nAAKsFgACd4EIUb8Pz0kAAQ0qNgQ", "AgADrBYAAneBCFE",
                       "فاکتور-۱۴۰۳.pdf", "application/pdf", 245873),),
    ),
    "05-voice.json": dict(
        provider_id=f"{MARYAM}:1004", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[voice message 0:12]", received_at=at(1732283230),
        files=(FileRef("AwACAgQAAxkBAAIDdGdAq8Q9r1m7k2P1AAFxYwVHAAKtFgACd4EIURr3gM1mAAENNgQ", "AgADrRYAAneBCFE",
                       "voice_1004.ogg", "audio/ogg", 38211),),
    ),
    "06-video.json": dict(
        provider_id=f"{JOHN}:2003", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="[video 1:05]\nThe box arrived like this", received_at=at(1732283500),
        files=(FileRef("BAACAgQAAxkBAAIDdWdArAABi6U9MKsoTd8AAWRowpkAAq4WAAJ3gQhRAAHzLRnQAQ02BA", "AgADrhYAAneBCFE",
                       "unboxing.mp4", "video/mp4", 7340032),),
    ),
    "07-audio.json": dict(
        provider_id=f"{MARYAM}:1005", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[audio: Marzieh – Gole Sangam]", received_at=at(1732283290),
        files=(FileRef("CQACAgQAAxkBAAIDdmdArCl3w7gAAZ7rF0xUAAFQ9QACrxYAAneBCFH5CYgMAAENNgQ", "AgADrxYAAneBCFE",
                       "track01.mp3", "audio/mpeg", 3431200),),
    ),
    "08-video-note.json": dict(
        provider_id=f"{MARYAM}:1006", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[video note 0:09]", received_at=at(1732283350),
        files=(FileRef("DQACAgQAAxkBAAIDd2dArGE2c5VgAAGN1bUAAXS6AAKwFgACd4EIUR6AAAH_AQ02BA", "AgADsBYAAneBCFE",
                       "video_note_1006.mp4", "video/mp4", 512004),),
    ),
    "09-animation.json": dict(  # Telegram repeats an animation as a `document`: one file, not two
        provider_id=f"{JOHN}:2004", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="[animation]", received_at=at(1732283560),
        files=(FileRef("CgACAgQAAxkBAAIDeGdArJQAAXfM8FZ3AAHtVQABXmXkAAKxFgACd4EIUfA0DwABAQ02BA", "AgADsRYAAneBCFE",
                       "mp4.mp4", "video/mp4", 112640),),
    ),
    "10-sticker.json": dict(
        provider_id=f"{MARYAM}:1007", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[sticker 😀]", received_at=at(1732283410),
        files=(FileRef("CAACAgIAAxkBAAIDeWdArMZP1SOjmQABcQUwS3d9AAFzRR0AAqU7cEl1RAQkzg0WAjYE", "AgADQR0AAqU7cEk",
                       "sticker_1007.webm", "video/webm", 24870),),
    ),
    "11-location.json": dict(
        provider_id=f"{MARYAM}:1008", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[location 35.699700, 51.337700] https://www.openstreetmap.org/?mlat=35.699700&mlon=51.337700",
        received_at=at(1732283470),
    ),
    "12-venue.json": dict(
        provider_id=f"{MARYAM}:1009", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[venue: مرکز خرید تندیس, تهران، خیابان ولیعصر، تجریش]", received_at=at(1732283530),
    ),
    "13-contact-own.json": dict(
        provider_id=f"{MARYAM}:1010", sender=tg(MARYAM), sender_name="مریم احمدی", language="fa",
        text="[contact: مریم احمدی, +989121234567]", received_at=at(1732283590),
        also_known_as=(Address.parse("phone", "+989121234567"),),
    ),
    "14-contact-other.json": dict(
        provider_id=f"{JOHN}:2005", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="[contact: Ahmad, +989351112233]", received_at=at(1732283620),
    ),
    "15-poll.json": dict(
        provider_id=f"{JOHN}:2006", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="[poll: Which delivery slot works?]", received_at=at(1732283680),
    ),
    "16-dice.json": dict(
        provider_id=f"{JOHN}:2007", sender=tg(JOHN), sender_name="John Miller", language="en",
        text="[dice 🎲 5]", received_at=at(1732283740),
    ),
    "17-edited-text.json": dict(
        provider_id=f"{MARYAM}:1001:edit:1732283801", thread_key=f"{MARYAM}:1001", sender=tg(MARYAM),
        sender_name="مریم احمدی", language="fa", received_at=at(1732283801), in_reply_to=(f"{MARYAM}:1001",),
        text="[edited] سلام، سفارش شماره ۴۵۶۸ من هنوز نرسیده. می‌خواستم پیگیری کنم.",
    ),
    "20-unsupported-story.json": dict(
        provider_id=f"{ALI}:3001", sender=tg(ALI), sender_name="علی", language=None,
        text="[unsupported message: story]", received_at=at(1732283900),
    ),
    "21-text-arabic-client.json": dict(  # language_code "ar": neither Persian nor English is certain
        provider_id=f"{ALI}:3002", sender=tg(ALI), sender_name="علی", language=None,
        text="سلام 👋 لطفاً کمک کنید", received_at=at(1732283960),
    ),
}

SARA = dict(user_id=55501, user_name="Sara Karimi", username="sara_k")
REZA = dict(user_id=55502, user_name="رضا", username="reza_support")

OTHER_CASES: dict[str, object] = {
    "18-start.json": Greeting(chat_id=JOHN, user_id=JOHN, language="en"),
    "19-start-deep-link.json": Greeting(chat_id=MARYAM, user_id=MARYAM, language="fa", payload="site_order_4567"),
    "22-edited-live-location.json": Ignored("live location update"),
    "23-private-button.json": CustomerButton(callback_id="530220389374912345", chat_id=MARYAM, user_id=MARYAM,
                                             user_name="مریم احمدی", data="csat:42:5"),
    "30-desk-close-command.json": AgentMessage(
        chat_id=DESK, thread_id=7, message_id=901, **SARA, text="/close@KartablBot", command="close", args="",
        reply_to_message_id=None, files=(), date=at(1732284200),
    ),
    "31-desk-assign-command.json": AgentMessage(
        chat_id=DESK, thread_id=7, message_id=902, **REZA, text="/Assign  @sara_k ", command="assign",
        args="@sara_k", reply_to_message_id=None, files=(), date=at(1732284260),
    ),
    "32-desk-topic-message.json": AgentMessage(
        chat_id=DESK, thread_id=7, message_id=903, **SARA, command=None, args="",
        text="سلام مریم جان، سفارش شما امروز ارسال شد. کد رهگیری: ۱۲۳۴۵۶",
        reply_to_message_id=None, files=(), date=at(1732284320),
    ),
    "33-desk-reply-to-card.json": AgentMessage(
        chat_id=DESK, thread_id=7, message_id=904, **SARA, text="Checking with the warehouse now.", command=None,
        args="", reply_to_message_id=812, files=(), date=at(1732284380),
    ),
    "34-desk-command-other-bot.json": Ignored("command for another bot: @ShopStatsBot"),
    "35-desk-photo.json": AgentMessage(
        chat_id=DESK, thread_id=7, message_id=906, **SARA, text="رسید ارسال مرسوله", command=None, args="",
        reply_to_message_id=None, date=at(1732284500),
        files=(FileRef("AgACAgQAAxkBAAIDemdArTm1AAFBAAFJ9Qs5AAGIqgACshYAAneBCFHxOgABcQEAAwIAA3gAAzYE",
                       "AQADshYAAneBCFF9", "photo_906.jpg", "image/jpeg", 70233),),
    ),
    "36-desk-button.json": ButtonPress(
        callback_id="530220389374987654", chat_id=DESK, thread_id=7, message_id=812, user_id=55502,
        user_name="رضا", data="take:42",
    ),
    "37-desk-edited.json": Ignored("edit in a desk chat"),
    "38-desk-new-members.json": Ignored("service message: new_chat_members"),
    "39-desk-topic-created.json": Ignored("message from a bot (anonymous group admins write as one)"),
    "40-desk-anonymous-admin.json": Ignored("message from a bot (anonymous group admins write as one)"),
    # Outside forum topics, message_thread_id is the reply chain's first message: the reply stays.
    "41-desk-plain-group-reply.json": AgentMessage(
        chat_id=PLAIN_DESK, thread_id=None, message_id=55, **SARA, text="We will send a replacement today.",
        command=None, args="", reply_to_message_id=51, files=(), date=at(1732284940),
    ),
    "50-channel-post.json": Ignored("channel_post update"),
    "51-my-chat-member.json": Ignored("my_chat_member update"),
    "52-other-group.json": Ignored("message in supergroup chat -1005550001111, which is not a desk chat"),
    "53-inline-query.json": Ignored("inline_query update"),
    "54-chat-member.json": Ignored("chat_member update"),
}

SAMPLES = sorted(path.name for path in CORPUS.glob("*.json"))


def test_every_sample_has_an_expected_result() -> None:
    assert SAMPLES == sorted(CUSTOMER_CASES | OTHER_CASES)


@pytest.mark.parametrize("name", sorted(CUSTOMER_CASES))
def test_customer_samples(name: str) -> None:
    update = load(name)
    fields = dict(CUSTOMER_CASES[name])
    files = fields.pop("files", ())
    fields.setdefault("thread_key", fields["provider_id"])
    expected = InboundMessage(channel=ChannelKind.TELEGRAM, raw=update, **fields)
    parsed = parse(update)
    assert parsed == CustomerMessage(expected, files)
    assert parsed.message.raw is update
    assert parsed.message.received_at.tzinfo is dt.UTC


@pytest.mark.parametrize("name", sorted(OTHER_CASES))
def test_other_samples(name: str) -> None:
    assert parse(load(name)) == OTHER_CASES[name]


# -- customers -------------------------------------------------------------------------------------


def _private(text: str | None = None, **fields: Any) -> dict[str, Any]:
    update = load("01-text-persian.json")
    message = update["message"]
    del message["text"]
    if text is not None:
        message["text"] = text
    message.update(fields)
    return update


def test_the_sender_name_falls_back_to_the_username() -> None:
    update = _private("hi")
    update["message"]["from"] = {"id": MARYAM, "is_bot": False, "first_name": " ", "username": "maryam_ah"}
    assert parse(update).message.sender_name == "@maryam_ah"
    del update["message"]["from"]["username"]
    assert parse(update).message.sender_name is None


def test_start_addressed_to_this_bot_is_a_greeting_and_other_commands_are_text() -> None:
    assert parse(_private("/start@KartablBot ref_12")) == Greeting(MARYAM, MARYAM, "fa", "ref_12")
    assert parse(_private("/help")).message.text == "/help"
    assert parse(_private("/start@OtherBot")).message.text == "/start@OtherBot"


def test_an_edited_start_is_not_a_second_greeting() -> None:
    update = load("18-start.json")
    update["edited_message"] = dict(update.pop("message"), edit_date=1732282900)
    assert parse(update) == Ignored("edited /start")


def test_an_edited_reply_points_at_the_original_first_then_the_replied_message() -> None:
    update = load("17-edited-text.json")
    update["edited_message"]["reply_to_message"] = {
        "message_id": 990, "from": {"id": 7012345678, "is_bot": True, "first_name": "Kartabl"},
        "chat": update["edited_message"]["chat"], "date": 1732282000, "text": "T-1042"}
    assert parse(update).message.in_reply_to == (f"{MARYAM}:1001", f"{MARYAM}:990")


@pytest.mark.parametrize(("contact", "text", "linked"), [
    ({"phone_number": "+98 912 123 4567", "first_name": "مریم", "user_id": MARYAM},
     "[contact: مریم, +989121234567]", ("phone", "+989121234567")),
    ({"phone_number": "447911123456", "first_name": "Mary", "user_id": MARYAM},
     "[contact: Mary, +447911123456]", ("phone", "+447911123456")),
    ({"phone_number": "12", "first_name": "مریم", "user_id": MARYAM}, "[contact: مریم, 12]", None),
    ({"phone_number": "09121234567", "first_name": "مریم"}, "[contact: مریم, +989121234567]", None),
])
def test_only_the_customers_own_readable_number_is_linked(
    contact: dict[str, Any], text: str, linked: tuple[str, str] | None,
) -> None:
    message = parse(_private(contact=contact)).message
    assert message.text == text
    assert message.also_known_as == ((Address.parse(*linked),) if linked else ())


@pytest.mark.parametrize(("fields", "text", "file"), [
    ({"audio": {"file_id": "a", "file_unique_id": "u", "duration": 214, "mime_type": "audio/mpeg"}},
     "[audio 3:34]", FileRef("a", "u", "audio_1001.mp3", "audio/mpeg")),
    ({"audio": {"file_id": "a", "file_unique_id": "u", "title": "Track 1", "file_name": "t.mp3"}},
     "[audio: Track 1]", FileRef("a", "u", "t.mp3", "audio/mpeg")),
    ({"audio": {"file_id": "a", "file_unique_id": "u", "duration": 5, "file_name": "زنگ.m4a"}},
     "[audio: زنگ.m4a]", FileRef("a", "u", "زنگ.m4a", "audio/mp4")),
    ({"document": {"file_id": "d", "file_unique_id": "u", "mime_type": "application/pdf"}},
     "[document]", FileRef("d", "u", "document_1001.pdf", "application/pdf")),
    ({"document": {"file_id": "d", "file_unique_id": "u", "file_name": "لیست.xlsx", "file_size": 9}},
     "[document: لیست.xlsx]",
     FileRef("d", "u", "لیست.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", 9)),
    ({"document": {"file_id": "d", "file_unique_id": "u"}},
     "[document]", FileRef("d", "u", "document_1001.bin", "application/octet-stream")),
    ({"video": {"file_id": "v", "file_unique_id": "u", "duration": 3665, "width": 1, "height": 1}},
     "[video 1:01:05]", FileRef("v", "u", "video_1001.mp4", "video/mp4")),
    ({"sticker": {"file_id": "s", "file_unique_id": "u", "is_animated": True, "is_video": False,
                  "type": "regular", "width": 512, "height": 512}},
     "[sticker]", FileRef("s", "u", "sticker_1001.tgs", "application/x-tgsticker")),
    ({"sticker": {"file_id": "s", "file_unique_id": "u", "is_animated": False, "is_video": False,
                  "emoji": "❤️", "type": "regular", "width": 512, "height": 512}},
     "[sticker ❤️]", FileRef("s", "u", "sticker_1001.webp", "image/webp")),
    ({"venue": {"location": {"latitude": 1, "longitude": 2}, "title": "Cafe", "address": ""},
      "location": {"latitude": 1, "longitude": 2}}, "[venue: Cafe]", None),
    ({"location": {"latitude": -33.8688, "longitude": 151.2093}},
     "[location -33.868800, 151.209300] https://www.openstreetmap.org/?mlat=-33.868800&mlon=151.209300", None),
    ({"dice": {"emoji": "🎯", "value": 6}}, "[dice 🎯 6]", None),
    ({"game": {"title": "Lumberjack", "description": "x", "photo": []}}, "[unsupported message: game]", None),
    ({}, "[unsupported message: empty message]", None),
])
def test_media_placeholders_and_files(fields: dict[str, Any], text: str, file: FileRef | None) -> None:
    parsed = parse(_private(**fields))
    assert parsed.message.text == text
    assert parsed.files == ((file,) if file else ())


def test_a_photo_caption_follows_the_placeholder_and_the_largest_size_is_taken() -> None:
    sizes = [{"file_id": f"p{side}", "file_unique_id": f"u{side}", "width": side, "height": side}
             for side in (90, 1280, 320)]
    parsed = parse(_private(photo=sizes, caption="خط اول\nخط دوم"))
    assert parsed.message.text == "[photo]\nخط اول\nخط دوم"
    assert parsed.files == (FileRef("p1280", "u1280", "photo_1001.jpg", "image/jpeg"),)


def test_messages_without_a_sender_or_from_bots_are_ignored() -> None:
    update = _private("hi")
    del update["message"]["from"]
    assert parse(update) == Ignored("message without a sender")
    update["message"]["from"] = {"id": 1, "is_bot": True, "first_name": "x"}
    assert isinstance(parse(update), Ignored)


@pytest.mark.parametrize(("code", "language"), [
    ("fa", "fa"), ("FA-ir", "fa"), ("en", "en"), ("en-GB", "en"), ("ar", None), ("de", None), (None, None),
])
def test_language_from_the_telegram_app(code: str | None, language: str | None) -> None:
    update = _private("hi")
    update["message"]["from"]["language_code"] = code
    assert parse(update).message.language == language


def test_unknown_update_kinds_are_ignored() -> None:
    update = {"update_id": 5, "message_reaction": {"chat": {"id": 1, "type": "private"}, "message_id": 2}}
    assert parse(update) == Ignored("message_reaction update")


# -- agents ----------------------------------------------------------------------------------------


def _desk(text: str | None, **fields: Any) -> dict[str, Any]:
    update = load("32-desk-topic-message.json")
    message = update["message"]
    del message["text"]
    if text is not None:
        message["text"] = text
    message.update(fields)
    return update


@pytest.mark.parametrize(("text", "command", "args"), [
    ("/close@KartablBot", "close", ""),
    ("/close@kartablbot   ", "close", ""),
    ("/assign @sara", "assign", "@sara"),
    ("/assign@KartablBot @sara", "assign", "@sara"),
    ("/NOTE  مشتری پیگیر است\nخط دوم ", "note", "مشتری پیگیر است\nخط دوم"),
    ("/priority_high", "priority_high", ""),
    ("/ not a command", None, ""),
    ("/usr/bin/env", None, ""),
    ("see /close", None, ""),
])
def test_agent_commands(text: str, command: str | None, args: str) -> None:
    parsed = parse(_desk(text))
    assert (parsed.command, parsed.args, parsed.text) == (command, args, text)


def test_commands_for_another_bot_are_ignored_unless_we_do_not_know_our_name() -> None:
    update = _desk("/assign@ShopStatsBot @sara")
    assert parse(update) == Ignored("command for another bot: @ShopStatsBot")
    assert parse(update, bot_username=None).command == "assign"
    assert parse(_desk("/close@kartablbot"), bot_username="@KartablBot").command == "close"


def test_a_caption_can_carry_a_command() -> None:
    photo = [{"file_id": "p", "file_unique_id": "u", "width": 10, "height": 10}]
    parsed = parse(_desk(None, photo=photo, caption="/reply اینم عکس"))
    assert (parsed.command, parsed.args, len(parsed.files)) == ("reply", "اینم عکس", 1)


def test_a_reply_in_a_topic_to_the_topic_creation_message_is_no_reply() -> None:
    update = _desk("ok")
    del update["message"]["reply_to_message"]["forum_topic_created"]  # still the topic's first message
    assert parse(update).reply_to_message_id is None
    update["message"]["reply_to_message"]["message_id"] = 850
    assert parse(update).reply_to_message_id == 850


def test_a_message_in_the_general_topic_has_no_thread() -> None:
    update = _desk("ok")
    for key in ("message_thread_id", "is_topic_message", "reply_to_message"):
        del update["message"][key]
    parsed = parse(update)
    assert (parsed.thread_id, parsed.reply_to_message_id) == (None, None)


def test_desk_messages_with_nothing_to_relay_are_ignored() -> None:
    assert parse(_desk(None, location={"latitude": 1, "longitude": 2})) == Ignored(
        "desk message with no text or file: location")
    assert parse(_desk(None, is_automatic_forward=True)) == Ignored("automatic forward from a linked channel")


def test_buttons_under_inline_messages_or_without_data_are_ignored() -> None:
    update = load("36-desk-button.json")
    del update["callback_query"]["data"]
    assert parse(update) == Ignored("button without callback data (a game)")
    del update["callback_query"]["message"]
    update["callback_query"]["inline_message_id"] = "AAAAAE"
    assert parse(update) == Ignored("button under an inline-mode message")


def test_a_button_on_a_message_too_old_to_read_still_counts() -> None:
    update = load("36-desk-button.json")
    update["callback_query"]["message"] = {"chat": {"id": DESK, "type": "supergroup"}, "message_id": 812, "date": 0}
    assert parse(update) == ButtonPress("530220389374987654", DESK, None, 812, 55502, "رضا", "take:42")


# -- unreadable input ------------------------------------------------------------------------------

_DELETE = object()


def _variant(name: str, path: tuple[Any, ...], value: Any) -> Any:
    update = copy.deepcopy(load(name))
    target = update
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return update


MALFORMED: list[tuple[Any, str]] = [
    ({}, "update.update_id: missing"),
    ([], "update: expected an object, got list"),
    ("x", "update: expected an object"),
    (None, "update: expected an object"),
    ({"update_id": 1}, "carries nothing"),
    ({"update_id": "1", "message": {}}, "update.update_id: expected an integer, got str"),
    ({"update_id": True, "message": {}}, "update.update_id: expected an integer, got bool"),
    ({"update_id": 1, "message": "x"}, "update.message: expected an object, got str"),
    ({"update_id": 1, "message": []}, "update.message: expected an object, got list"),
    ({"update_id": 1, "message": {}}, "update.message.chat: missing"),
    ({"update_id": 1, "callback_query": 7}, "update.callback_query: expected an object, got int"),
    (_variant("01-text-persian.json", ("message", "chat"), _DELETE), "update.message.chat: missing"),
    (_variant("01-text-persian.json", ("message", "chat"), "123"), "update.message.chat: expected an object"),
    (_variant("01-text-persian.json", ("message", "chat", "id"), "123"), "update.message.chat.id: expected an integer"),
    (_variant("01-text-persian.json", ("message", "chat", "id"), 1.5), "update.message.chat.id: expected an integer"),
    (_variant("01-text-persian.json", ("message", "chat", "type"), _DELETE), "update.message.chat.type: missing"),
    (_variant("01-text-persian.json", ("message", "chat", "type"), 3), "update.message.chat.type: expected a string"),
    (_variant("01-text-persian.json", ("message", "message_id"), _DELETE), "update.message.message_id: missing"),
    (_variant("01-text-persian.json", ("message", "message_id"), "1001"), "update.message.message_id: expected"),
    (_variant("01-text-persian.json", ("message", "date"), _DELETE), "update.message.date: missing"),
    (_variant("01-text-persian.json", ("message", "date"), "2024-11-22"), "update.message.date: expected"),
    (_variant("01-text-persian.json", ("message", "date"), 10**20), "update.message.date: not a Unix time"),
    (_variant("01-text-persian.json", ("message", "from"), "maryam"), "update.message.from: expected an object"),
    (_variant("01-text-persian.json", ("message", "from", "id"), _DELETE), "update.message.from.id: missing"),
    (_variant("01-text-persian.json", ("message", "from", "id"), "123"), "update.message.from.id: expected"),
    (_variant("01-text-persian.json", ("message", "from", "id"), -5), "update.message.from.id: not a Telegram"),
    (_variant("01-text-persian.json", ("message", "from", "is_bot"), "no"), "update.message.from.is_bot: expected"),
    (_variant("01-text-persian.json", ("message", "from", "first_name"), ["x"]), "first_name: expected a string"),
    (_variant("01-text-persian.json", ("message", "from", "language_code"), 98), "language_code: expected"),
    (_variant("01-text-persian.json", ("message", "text"), 5), "update.message.text: expected a string"),
    (_variant("01-text-persian.json", ("message", "text"), {"t": 1}), "update.message.text: expected a string"),
    (_variant("02-text-english-reply.json", ("message", "reply_to_message"), "x"), "reply_to_message: expected an"),
    (_variant("02-text-english-reply.json", ("message", "reply_to_message", "message_id"), _DELETE),
     "reply_to_message.message_id: missing"),
    (_variant("03-photo-caption.json", ("message", "photo"), "x"), "update.message.photo: expected a list"),
    (_variant("03-photo-caption.json", ("message", "photo"), [1]), "update.message.photo[0]: expected an object"),
    (_variant("03-photo-caption.json", ("message", "photo", 2, "width"), _DELETE), "photo[2].width: missing"),
    (_variant("03-photo-caption.json", ("message", "photo", 2, "file_id"), 1), "photo[2].file_id: expected"),
    (_variant("03-photo-caption.json", ("message", "caption"), 1), "update.message.caption: expected a string"),
    (_variant("04-document-pdf.json", ("message", "document", "file_id"), _DELETE), "document.file_id: missing"),
    (_variant("04-document-pdf.json", ("message", "document", "file_size"), "1 MB"), "document.file_size: expected"),
    (_variant("04-document-pdf.json", ("message", "document", "file_name"), 7), "document.file_name: expected"),
    (_variant("04-document-pdf.json", ("message", "document"), "x"), "update.message.document: expected an object"),
    (_variant("05-voice.json", ("message", "voice", "duration"), "0:12"), "voice.duration: expected an integer"),
    (_variant("10-sticker.json", ("message", "sticker", "is_video"), 1), "sticker.is_video: expected true or false"),
    (_variant("11-location.json", ("message", "location", "latitude"), "35.6"), "location.latitude: expected a num"),
    (_variant("11-location.json", ("message", "location", "latitude"), float("nan")), "latitude: not a finite"),
    (_variant("11-location.json", ("message", "location", "longitude"), 10**400), "longitude: not a finite"),
    (_variant("11-location.json", ("message", "location", "longitude"), _DELETE), "location.longitude: missing"),
    (_variant("12-venue.json", ("message", "venue"), []), "update.message.venue: expected an object"),
    (_variant("13-contact-own.json", ("message", "contact", "phone_number"), _DELETE), "phone_number: missing"),
    (_variant("13-contact-own.json", ("message", "contact", "user_id"), "123456789"), "contact.user_id: expected"),
    (_variant("15-poll.json", ("message", "poll", "question"), None), "poll.question: missing"),
    (_variant("16-dice.json", ("message", "dice", "value"), "5"), "dice.value: expected an integer"),
    (_variant("17-edited-text.json", ("edited_message", "edit_date"), _DELETE), "edit_date: missing"),
    (_variant("17-edited-text.json", ("edited_message", "edit_date"), 1.5), "edit_date: expected an integer"),
    (_variant("30-desk-close-command.json", ("message", "message_thread_id"), "7"), "message_thread_id: expected"),
    (_variant("30-desk-close-command.json", ("message", "is_topic_message"), "yes"), "is_topic_message: expected"),
    (_variant("33-desk-reply-to-card.json", ("message", "reply_to_message", "message_id"), "812"),
     "reply_to_message.message_id: expected"),
    (_variant("33-desk-reply-to-card.json", ("message", "from", "username"), 5), "from.username: expected"),
    (_variant("36-desk-button.json", ("callback_query", "id"), _DELETE), "update.callback_query.id: missing"),
    (_variant("36-desk-button.json", ("callback_query", "id"), 530220389374987654), "callback_query.id: expected"),
    (_variant("36-desk-button.json", ("callback_query", "from"), _DELETE), "update.callback_query.from: missing"),
    (_variant("36-desk-button.json", ("callback_query", "message", "chat"), _DELETE), "message.chat: missing"),
    (_variant("36-desk-button.json", ("callback_query", "message", "message_id"), None), "message_id: missing"),
    (_variant("36-desk-button.json", ("callback_query", "data"), 42), "callback_query.data: expected a string"),
]


@pytest.mark.parametrize(("update", "reason"), MALFORMED)
def test_malformed_updates_raise_unreadable_update_naming_the_field(update: Any, reason: str) -> None:
    with pytest.raises(UnreadableUpdate) as caught:
        parse(update)
    assert reason in str(caught.value)
    assert "unexpected shape" not in str(caught.value)


_WRONG_VALUES = (None, "x", "", 0, -1, 1.5, True, [], [1], {}, {"id": "1"}, 10**30, float("inf"))


def _mutations(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path inside `node` (object keys and list indexes), deepest first."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = [sub for key, value in children for sub in _mutations(value, (*path, key))]
    return paths + ([path] if path else [])


@pytest.mark.parametrize("name", SAMPLES)
def test_any_field_replaced_by_a_wrong_value_is_read_or_refused_cleanly(name: str) -> None:
    rng = random.Random(name)
    for path in _mutations(load(name)):
        for value in [_DELETE, *rng.sample(_WRONG_VALUES, 5)]:
            try:
                parse(_variant(name, path, value))
            except UnreadableUpdate as exc:
                assert "unexpected shape" not in str(exc), (path, value, exc)
