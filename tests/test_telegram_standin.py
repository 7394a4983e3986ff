"""The Telegram Bot API stand-in, driven by the real python-telegram-bot client over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import (
    Bot, ChatMemberAdministrator, ChatMemberLeft, ChatMemberMember, ChatMemberOwner, InlineKeyboardButton,
    InlineKeyboardMarkup,
)
from telegram.error import BadRequest, Conflict, EndPointNotFound, Forbidden, InvalidToken, RetryAfter

from channels.telegram.standin import Limits, StandInTelegram, User, html_to_text
from gateway.http import EmbeddedServer, listen_socket

TOKEN = "123456:standin-token"
SARA = User(42, "Sara", "Karimi", username="sara_k", language_code="fa")
REZA = User(43, "Reza")
DESK = -1001234567890  # a forum supergroup where agents work


@pytest.fixture
async def api() -> AsyncIterator[StandInTelegram]:
    standin = StandInTelegram(TOKEN)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def bot(api: StandInTelegram) -> AsyncIterator[Bot]:
    async with Bot(TOKEN, base_url=api.base_url, base_file_url=api.base_file_url) as bot:
        yield bot


@pytest.fixture
def desk(api: StandInTelegram) -> int:
    api.add_chat(DESK, type="supergroup", title="Support desk", is_forum=True)
    return DESK


async def test_get_me_describes_the_bot(bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (123456, True, "KartablBot")
    assert bot.username == "KartablBot"  # cached by initialize(), which called getMe


async def test_customer_text_arrives_until_its_update_is_confirmed(api: StandInTelegram, bot: Bot) -> None:
    message_id = api.customer_text(SARA, "سلام، سفارشم نرسیده")

    [update] = await bot.get_updates()
    assert update.message is not None and update.message.message_id == message_id
    assert update.message.text == "سلام، سفارشم نرسیده"
    assert update.message.chat.type == "private" and update.message.chat.id == SARA.id
    user = update.message.from_user
    assert user is not None and (user.id, user.first_name, user.last_name, user.username, user.is_bot) == (
        42, "Sara", "Karimi", "sara_k", False)

    again = await bot.get_updates()  # no offset: nothing was confirmed, so Telegram gives it again
    assert [u.update_id for u in again] == [update.update_id]

    assert await bot.get_updates(offset=update.update_id + 1) == ()
    assert api.confirmed_offset == update.update_id + 1 and api.pending_updates == []


async def test_a_long_poll_answers_as_soon_as_an_update_arrives(api: StandInTelegram, bot: Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=0.3) == ()  # nothing: the poll held on for its timeout
    assert time.monotonic() - started >= 0.25

    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=20))
    await api.wait_polling()
    api.customer_text(SARA, "are you there?")
    updates = await poll
    assert time.monotonic() - started < 5
    assert [u.message.text for u in updates if u.message] == ["are you there?"]


async def test_a_second_poller_ends_the_first_with_conflict(api: StandInTelegram, bot: Bot) -> None:
    async with Bot(TOKEN, base_url=api.base_url, base_file_url=api.base_file_url) as other:
        first = asyncio.create_task(bot.get_updates(timeout=20))
        await api.wait_polling()
        assert await other.get_updates() == ()
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await asyncio.wait_for(first, 10)


async def test_allowed_updates_are_remembered(api: StandInTelegram, bot: Bot) -> None:
    assert await bot.get_updates(allowed_updates=["callback_query"]) == ()
    api.customer_text(SARA, "not asked for")
    assert await bot.get_updates() == ()  # Telegram does not even queue the other kinds
    assert await bot.get_updates(allowed_updates=[]) == ()  # an empty list: every kind again
    api.customer_text(SARA, "now")
    assert [u.message.text for u in await bot.get_updates() if u.message] == ["now"]


async def test_json_and_query_string_requests_are_read_too(api: StandInTelegram) -> None:
    api.customer_text(SARA, "hi")
    async with httpx.AsyncClient(base_url=api.base_url + TOKEN) as client:
        keyboard = {"inline_keyboard": [[{"text": "Take", "callback_data": "take"}]]}
        answer = await client.post("/sendMessage", json={
            "chat_id": SARA.id, "text": "<b>x</b>", "parse_mode": "HTML", "reply_markup": keyboard})
        assert answer.json()["result"]["text"] == "x" and answer.json()["result"]["reply_markup"] == keyboard
        chat = await client.get("/getChat", params={"chat_id": SARA.id})
        assert chat.json()["result"]["first_name"] == "Sara"
        too_long = await client.post("/sendMessage", json={"chat_id": SARA.id, "text": "x" * 4097})
    assert too_long.status_code == 400
    assert too_long.json() == {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}


async def test_html_is_recorded_as_sent_and_as_shown(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    raw = '<b>Ticket</b> <a href="https://example.com/t?a=1&b=2">#12</a> &amp; <i>more</i> &#128512;'

    message = await bot.send_message(SARA.id, raw, parse_mode="HTML")

    assert message.text == "Ticket #12 & more 😀"
    assert message.from_user is not None and message.from_user.is_bot
    sent = await api.wait_sent(lambda s: s.chat_id == SARA.id)
    assert (sent.method, sent.text, sent.html, sent.parse_mode) == ("sendMessage", message.text, raw, "HTML")


async def test_escaped_customer_text_is_shown_literally(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    await bot.send_message(SARA.id, html.escape("<b>hi</b> & co"), parse_mode="HTML")
    assert api.sent[-1].text == "<b>hi</b> & co"


async def test_without_parse_mode_text_is_taken_literally(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    message = await bot.send_message(SARA.id, "<b>not bold</b> & <oops")
    assert message.text == "<b>not bold</b> & <oops"


@pytest.mark.parametrize(("text", "reason"), [
    ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
    ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
    ("a < b", 'Unsupported start tag "" at byte offset 2'),
    ("<div>x</div>", 'Unsupported start tag "div" at byte offset 0'),
    ("x</b>", "Unexpected end tag at byte offset 1"),
    ("AT&T", 'Unsupported HTML entity "&T" at byte offset 2'),
    ('<span class="x">x</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
    ("سلام <b", "Unclosed start tag at byte offset 9"),  # offsets count UTF-8 bytes
])
async def test_malformed_html_is_refused(api: StandInTelegram, bot: Bot, text: str, reason: str) -> None:
    api.customer_text(SARA, "hi")
    with pytest.raises(BadRequest, match="Can't parse entities") as caught:
        await bot.send_message(SARA.id, text, parse_mode="HTML")
    assert reason.lower() in caught.value.message.lower()  # PTB lower-cases all but the first letter
    assert api.sent == []


def test_html_that_telegram_accepts() -> None:
    text = ('<strong>s</strong><em>e</em><ins>i</ins><strike>k</strike><del>d</del><tg-spoiler>t</tg-spoiler>'
            '<span class="tg-spoiler">p</span><pre><code class="language-python">x &lt; 1</code></pre>'
            '<blockquote expandable>q</blockquote><tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>'
            '<u>&quot;&gt;&#x41;</u>')
    assert html_to_text(text) == 'seikdtpx < 1q👍">A'
    with pytest.raises(ValueError, match='Unsupported start tag "br" at byte offset 4'):
        html_to_text("line<br>line")


async def test_length_is_counted_in_utf16_after_parsing(api: StandInTelegram, bot: Bot) -> None:
    api.add_chat(-100, type="group", title="Lengths")
    await bot.send_message(-100, "&amp;" * 4096, parse_mode="HTML")  # 20480 characters sent, 4096 shown
    assert len(api.sent[-1].text) == 4096
    for too_long in ("x" * 4097, "😀" * 2049):  # 2049 emoji are 4098 UTF-16 code units
        with pytest.raises(BadRequest, match="Message is too long"):
            await bot.send_message(-100, too_long)
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(-100, "<b> </b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match="Message caption is too long"):
        await bot.send_document(-100, b"x", filename="a.txt", caption="c" * 1025)
    assert len(api.sent) == 1


async def test_a_customers_photo_can_be_downloaded(api: StandInTelegram, bot: Bot) -> None:
    picture = bytes(range(256)) * 40
    api.customer_update(SARA, photo=picture, caption="the broken part")

    [update] = await bot.get_updates()
    assert update.message is not None and update.message.caption == "the broken part"
    smallest, largest = update.message.photo
    assert smallest.file_size is not None and largest.file_size == len(picture) > smallest.file_size
    file = await largest.get_file()
    assert file.file_path is not None and file.file_path.startswith(api.base_file_url + TOKEN + "/photos/")
    assert await file.download_as_bytearray() == picture


async def test_a_customers_voice_and_document_arrive_with_their_fields(api: StandInTelegram, bot: Bot) -> None:
    api.customer_update(SARA, voice=b"OggS...", caption="listen")
    api.customer_update(SARA, document={"data": b"%PDF-1.7", "file_name": "invoice.pdf",
                                        "mime_type": "application/pdf"})
    api.customer_update(SARA, location={"latitude": 35.7, "longitude": 51.4})

    voice, document, location = [u.message for u in await bot.get_updates()]
    assert voice is not None and voice.voice is not None and voice.voice.file_size == 7
    assert document is not None and document.document is not None
    assert (document.document.file_name, document.document.mime_type) == ("invoice.pdf", "application/pdf")
    assert await (await document.document.get_file()).download_as_bytearray() == b"%PDF-1.7"
    assert location is not None and location.location is not None and location.location.latitude == 35.7


async def test_an_uploaded_document_is_recorded_and_can_be_sent_again(api: StandInTelegram, bot: Bot) -> None:
    data = b"%PDF\r\n--boundary-like\r\n\x00\xff" * 100
    api.customer_text(SARA, "hi")
    api.customer_text(REZA, "hi")

    message = await bot.send_document(SARA.id, data, filename="رسید.pdf", caption="<i>your receipt</i>",
                                      parse_mode="HTML")

    sent = api.sent[-1]
    assert (sent.method, sent.filename, sent.data, sent.text) == ("sendDocument", "رسید.pdf", data, "your receipt")
    assert message.document is not None and message.document.file_name == "رسید.pdf"
    again = await bot.send_document(REZA.id, message.document.file_id)
    assert again.document is not None and api.sent[-1].data == data
    with pytest.raises(BadRequest, match="Wrong file identifier"):
        await bot.send_photo(REZA.id, "no-such-file")


async def test_a_topic_is_created_in_a_forum_and_messages_land_in_it(api: StandInTelegram, bot: Bot,
                                                                   desk: int) -> None:
    topic = await bot.create_forum_topic(desk, "Ticket #12 · Sara")
    assert topic.name == "Ticket #12 · Sara"

    message = await bot.send_message(desk, "new ticket", message_thread_id=topic.message_thread_id)

    assert message.message_thread_id == topic.message_thread_id and message.is_topic_message
    assert api.sent[-1].thread_id == topic.message_thread_id
    agent = User(7, "Agent")
    reply_id = api.group_text(desk, agent, "on it", thread_id=topic.message_thread_id)
    [update] = await bot.get_updates()
    assert update.message is not None and update.message.message_id == reply_id
    assert update.message.message_thread_id == topic.message_thread_id
    # Telegram makes every message in a topic a reply to the topic's first message.
    assert update.message.reply_to_message is not None
    assert update.message.reply_to_message.forum_topic_created is not None

    assert await bot.edit_forum_topic(desk, topic.message_thread_id, name="Ticket #12 · closed")
    with pytest.raises(BadRequest, match="Topic_not_modified"):
        await bot.edit_forum_topic(desk, topic.message_thread_id, name="Ticket #12 · closed")


async def test_topics_only_in_forums_and_not_after_deletion(api: StandInTelegram, bot: Bot, desk: int) -> None:
    api.add_chat(-200, type="supergroup", title="Not a forum")
    with pytest.raises(BadRequest, match="The chat is not a forum"):
        await bot.create_forum_topic(-200, "x")

    topic = await bot.create_forum_topic(desk, "Ticket #13")
    api.delete_topic(desk, topic.message_thread_id)
    with pytest.raises(BadRequest, match="Message thread not found"):
        await bot.send_message(desk, "still there?", message_thread_id=topic.message_thread_id)


async def test_a_burst_to_a_private_chat_is_refused_with_retry_after(api: StandInTelegram, bot: Bot,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter() itself reads retry_after, which warns (PTB 22.2+)
    api.customer_text(SARA, "hi")
    await bot.send_message(SARA.id, "one")

    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(SARA.id, "two")

    assert caught.value.retry_after >= dt.timedelta(seconds=1)
    assert api.too_many == 1 and api.too_many_by_chat[SARA.id] == 1
    assert [s.text for s in api.sent] == ["one"]


async def test_a_group_window_frees_after_it_slides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter() itself reads retry_after, which warns (PTB 22.2+)
    api = StandInTelegram(TOKEN, limits=Limits(per_group=2, per_group_window=0.3))
    await api.start()
    try:
        api.add_chat(-300, type="group", title="Agents")
        async with Bot(TOKEN, base_url=api.base_url, base_file_url=api.base_file_url) as bot:
            await bot.send_message(-300, "1")
            await bot.send_message(-300, "2")
            with pytest.raises(RetryAfter):
                await bot.send_message(-300, "3")
            await asyncio.sleep(0.35)  # the window is made of time: let it pass
            await bot.send_message(-300, "3")
        assert [s.text for s in api.sent] == ["1", "2", "3"] and api.too_many == 1
    finally:
        await api.stop()


async def test_chat_member_statuses(api: StandInTelegram, bot: Bot, desk: int) -> None:
    api.set_member(desk, User(1, "Owner"), "creator")
    api.set_member(desk, User(2, "Lead"), "administrator")
    api.set_member(desk, 3, "member")

    kinds = [type(await bot.get_chat_member(desk, user_id)) for user_id in (1, 2, 3, 4)]

    assert kinds == [ChatMemberOwner, ChatMemberAdministrator, ChatMemberMember, ChatMemberLeft]
    assert (await bot.get_chat_member(desk, 1)).user.first_name == "Owner"


async def test_get_chat(api: StandInTelegram, bot: Bot, desk: int) -> None:
    chat = await bot.get_chat(desk)
    assert (chat.id, chat.type, chat.title, chat.is_forum) == (desk, "supergroup", "Support desk", True)
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.get_chat(-999)


async def test_a_button_press_arrives_and_is_answered(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    buttons = InlineKeyboardMarkup([[InlineKeyboardButton("Solved", callback_data="solve:12")]])
    message = await bot.send_message(SARA.id, "Did this help?", reply_markup=buttons)
    assert message.reply_markup == buttons
    assert api.sent[-1].reply_markup == buttons.to_dict()
    [hi] = await bot.get_updates()

    query_id = api.press(SARA.id, SARA, message.message_id, "solve:12")

    [update] = await bot.get_updates(offset=hi.update_id + 1)
    query = update.callback_query
    assert query is not None and (query.id, query.data, query.from_user.id) == (query_id, "solve:12", SARA.id)
    assert query.message is not None and query.message.message_id == message.message_id
    assert await bot.answer_callback_query(query.id, text="Thanks!")
    assert api.answered == {query_id: "Thanks!"}
    with pytest.raises(BadRequest, match="Query is too old"):
        await bot.answer_callback_query(query.id)


async def test_the_bot_edits_only_its_own_messages(api: StandInTelegram, bot: Bot, desk: int) -> None:
    buttons = InlineKeyboardMarkup([[InlineKeyboardButton("Take", callback_data="take")]])
    own = await bot.send_message(desk, "ticket #12", reply_markup=buttons)

    edited = await bot.edit_message_text("ticket #12 — <b>taken</b>", desk, own.message_id, parse_mode="HTML")
    assert edited.text == "ticket #12 — taken" and edited.edit_date is not None
    assert edited.reply_markup is None  # an edit without reply_markup removes the buttons, as on Telegram
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("ticket #12 — <b>taken</b>", desk, own.message_id, parse_mode="HTML")
    await bot.edit_message_reply_markup(desk, own.message_id, reply_markup=buttons)
    assert [s.method for s in api.sent] == ["sendMessage", "editMessageText", "editMessageReplyMarkup"]

    customers = api.group_text(desk, REZA, "my own words")
    with pytest.raises(BadRequest, match="Message can't be edited"):
        await bot.edit_message_text("changed", desk, customers)


async def test_replies_and_customer_edits(api: StandInTelegram, bot: Bot) -> None:
    first = api.customer_text(SARA, "order 77 is late")
    answer = await bot.send_message(SARA.id, "looking", reply_to_message_id=first)
    assert answer.reply_to_message is not None and answer.reply_to_message.text == "order 77 is late"
    assert api.sent[-1].reply_to == first

    api.edited(SARA, first, "order 78 is late")
    _, update = await bot.get_updates()
    assert update.edited_message is not None and update.edited_message.text == "order 78 is late"


async def test_wait_sent_waits_for_a_send_to_come(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    sending = asyncio.create_task(bot.send_message(SARA.id, "x"))
    sent = await api.wait_sent(lambda s: s.text == "x")
    assert sent.chat_id == SARA.id and sent.message_id == (await sending).message_id
    with pytest.raises(TimeoutError):
        await api.wait_sent(lambda s: s.text == "never", timeout=0.1)


async def test_injected_provider_errors(api: StandInTelegram, bot: Bot) -> None:
    api.customer_text(SARA, "hi")
    api.fail_next("sendMessage", error_code=403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(SARA.id, "hello?")
    await bot.send_message(SARA.id, "hello?")  # only the next one failed
    assert [s.text for s in api.sent] == ["hello?"]


@pytest.mark.parametrize("token", ["999:AAwrong-but-well-formed", "not a token"])  # 401, and 404 as Telegram
async def test_a_wrong_token_is_refused(api: StandInTelegram, token: str) -> None:
    with pytest.raises(InvalidToken, match="was rejected by the server"):
        async with Bot(token, base_url=api.base_url, base_file_url=api.base_file_url):
            pass


async def test_an_unknown_method_is_not_found(bot: Bot) -> None:
    with pytest.raises(EndPointNotFound, match="noSuchMethod"):  # PTB's name for a 404 once getMe worked
        await bot.do_api_request("noSuchMethod")
    # Any other call PTB maps 404 to InvalidToken; the description at least names the method.
    with pytest.raises(InvalidToken, match="does not implement sendChatAction"):
        await bot.send_chat_action(SARA.id, "typing")


async def test_a_webhook_gets_updates_pushed_until_it_answers_2xx(api: StandInTelegram, bot: Bot) -> None:
    answers = [500, 200]
    received: list[tuple[dict, str | None]] = []
    arrived = asyncio.Event()

    async def hook(request: Request) -> Response:
        received.append((await request.json(), request.headers.get("x-telegram-bot-api-secret-token")))
        arrived.set()
        return Response(status_code=answers.pop(0) if answers else 200)

    sock = listen_socket("127.0.0.1", 0)
    config = uvicorn.Config(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), log_config=None,
                            access_log=False, lifespan="off", ws="none")
    server = EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    api.webhook_retry = 0.05
    try:
        await bot.set_webhook(f"http://127.0.0.1:{sock.getsockname()[1]}/hook", secret_token="s3cret")
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()
        api.customer_text(SARA, "pushed")
        api.customer_text(SARA, "next")
        async with asyncio.timeout(5):
            while len(received) < 3:
                arrived.clear()
                await arrived.wait()
        # Refused with 500, pushed again; once taken, never again: the next update follows.
        texts = [(u["message"]["text"], secret) for u, secret in received]
        assert texts == [("pushed", "s3cret"), ("pushed", "s3cret"), ("next", "s3cret")]
        info = await bot.get_webhook_info()
        assert info.url.endswith("/hook") and "500" in (info.last_error_message or "")
        assert await bot.delete_webhook()
        assert await bot.get_updates() == ()
    finally:
        server.should_exit = True
        await serving
