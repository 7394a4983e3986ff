"""Security checks against the running gateway: webhook secrets, who may act in the agents' group,
attachment names, markup in what customers send, and oversized input. Each runs on SQLite and PostgreSQL.

A test marked xfail names a gap the code has today; it passes (and so fails the run) once the gap is closed.
"""

from __future__ import annotations

import html
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from channels.email.channel import EmailChannel
from channels.sms.callbacks import MAX_BYTES
from channels.sms.standin import StandInKavenegar
from channels.telegram.channel import TelegramChannel
from channels.telegram.standin import StandInTelegram, User
from gateway import staff
from gateway.compose import build_runtime
from gateway.domain import ChannelKind, DeliveryState, Direction, TicketStatus
from gateway.messages import InboundAttachment, InboundMessage
from gateway.addresses import Address
from gateway.schema import agents, attachments, events, messages, quarantine, tickets
from gateway.settings import AttachmentSettings, HttpSettings, Secret
from tests.conftest import eventually, inbound, make_settings
from tests.servers.smtp_sink import SmtpSink
from tests.test_email import email_settings
from tests import test_sms, test_telegram
from tests.test_sms import SARA as SMS_SARA, SECRET, SmsGateway
from tests.test_telegram import AGENT, DESK, SARA, STRANGER, BotGateway, _free_port, telegram_settings

# The stand-ins and the SMS gateway of those modules' tests, as fixtures here too.
kavenegar, start_sms_gateway, bot_server = test_sms.kavenegar, test_sms.start_sms_gateway, test_telegram.bot_server

WEBHOOK_TOKEN = "s3cret_Token-1"
MARKUP = '<b>فوری</b> <a href="https://evil.example/">click</a> </code> <pre>x & y &amp; &lt;'


@pytest.fixture
async def start_desk(db_url: str, tmp_path: Path, bot_server: StandInTelegram) -> AsyncIterator[Callable[..., Any]]:
    """A gateway with the Telegram channel and desk (no acknowledgements), and Reza as its one registered agent."""
    started = []

    async def start(*, email: Any = None, **sections: Any) -> BotGateway:
        cfg = telegram_settings(bot_server, acknowledge=False, **sections.pop("telegram", {}))
        channels: dict[ChannelKind, Any] = {ChannelKind.TELEGRAM: TelegramChannel(cfg)}
        configured: dict[str, Any] = {"telegram": cfg}
        if email is not None:
            channels[ChannelKind.EMAIL], configured["email"] = EmailChannel(email), email
        runtime = build_runtime(make_settings(db_url, tmp_path, channels=configured, **sections), channels=channels)
        await runtime.start()
        started.append(runtime)
        await staff.add_agent(runtime.db, "Reza", telegram_user_id=AGENT.id, username="reza")
        if cfg.webhook_url:
            await eventually(lambda: _now(bot_server.webhook.get("url")), lambda url: url == cfg.webhook_url)
        else:
            await bot_server.wait_polling()
        return BotGateway(runtime, None, None, channels[ChannelKind.TELEGRAM], bot_server)  # type: ignore[arg-type]

    yield start
    for runtime in started:
        if runtime.running:
            await runtime.stop()


async def _now(value: Any) -> Any:
    return value


def in_desk(thread: int | None = None) -> Callable[[Any], bool]:
    return lambda s: s.chat_id == DESK and (thread is None or s.thread_id == thread)


async def customer_ticket(gw: BotGateway, text: str = "سلام، سفارشم نرسیده") -> tuple[int, Any, Any]:
    """Sara writes; (the ticket, its card in the desk, her message as posted in the topic)."""
    message_id = gw.server.customer_text(SARA, text)
    ticket_id = await gw.ticket_of(f"{SARA.id}:{message_id}")
    card = await gw.server.wait_sent(lambda s: in_desk()(s) and s.reply_markup is not None)
    posted = await gw.server.wait_sent(lambda s: in_desk(card.thread_id)(s) and s.reply_markup is None)
    return ticket_id, card, posted


# == webhook secrets ====================================================================================


def _near_misses(secret: str) -> list[str]:
    return ["wrong-secret-0123456789", secret[:-1], secret + "x", secret.upper(), f"{secret}%2F..", "%20" + secret]


async def test_kavenegar_callbacks_without_the_right_secret_are_404_and_store_nothing(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw: SmsGateway = await start_sms_gateway(callbacks=False)
    ticket_id = await _sms_ticket(gw, kavenegar)
    reply_id = await gw.runtime.tickets.reply(ticket_id, "پاسخ")
    (sent,) = await kavenegar.wait_sent(1)
    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.SENT)
    base = f"http://127.0.0.1:{gw.port}/webhooks/kavenegar"
    sms = {"from": SMS_SARA, "to": kavenegar.line, "message": "جعلی", "messageid": "9001"}
    report = {"messageid": str(sent.messageid), "status": "11"}
    async with httpx.AsyncClient() as client:
        answers = []
        for secret in _near_misses(SECRET):
            answers.append((await client.post(f"{base}/{secret}/inbound", data=sms)).status_code)
            answers.append((await client.get(f"{base}/{secret}/inbound", params=sms)).status_code)
            answers.append((await client.post(f"{base}/{secret}/delivery", data=report)).status_code)
        for path in ("/inbound", "//inbound", "/delivery", "//delivery", f"/{SECRET}"):  # no secret segment at all
            answers.append((await client.post(base + path, data=sms)).status_code)

        assert set(answers) == {404}
        assert await gw.count(messages, messages.c.provider_id == "9001") == 0
        assert await gw.count(quarantine) == 0  # strangers cannot fill the quarantine either
        assert await gw.state(reply_id) == DeliveryState.SENT  # the forged "undelivered" changed nothing
        # The right secret is heard: the same calls now count.
        assert (await client.post(f"{base}/{SECRET}/inbound", data=sms)).status_code == 200
        assert (await client.post(f"{base}/{SECRET}/delivery", data=report)).status_code == 200
    assert await gw.count(messages, messages.c.provider_id == "9001") == 1
    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.FAILED)


async def _sms_ticket(gw: SmsGateway, kavenegar: StandInKavenegar) -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.post(gw.url("inbound"), data={"from": SMS_SARA, "to": kavenegar.line,
                                                            "message": "سلام", "messageid": "1"})
    assert answer.status_code == 200
    return await gw.ticket_of("1")


async def test_without_a_callback_secret_there_are_no_kavenegar_callback_routes(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw: SmsGateway = await start_sms_gateway(callbacks=False, receive="poll", callback_secret=None)
    sms = {"from": SMS_SARA, "to": kavenegar.line, "message": "x", "messageid": "9002"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
        answers = [(await client.post(path, data=sms)).status_code for path in (
            "/webhooks/kavenegar//inbound", "/webhooks/kavenegar/None/inbound", "/webhooks/kavenegar/null/delivery",
            f"/webhooks/kavenegar/{SECRET}/inbound")]
        healthy = (await client.get("/healthz")).status_code
    assert answers == [404] * 4 and healthy == 200  # the server is up; the routes are not there
    assert await gw.count(messages) == 0 and await gw.count(quarantine) == 0


async def test_telegram_pushes_without_the_secret_token_are_403_and_change_nothing(start_desk) -> None:  # noqa: ANN001
    port = _free_port()
    url = f"http://127.0.0.1:{port}/webhooks/telegram"
    gw = await start_desk(telegram={"webhook_url": url, "webhook_secret": Secret(WEBHOOK_TOKEN)},
                          http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    ticket_id, card, _ = await customer_ticket(gw)
    forged_message = {"update_id": 990001, "message": {
        "message_id": 77, "date": 1795000000, "text": "پیام جعلی",
        "chat": {"id": SARA.id, "type": "private", "first_name": "سارا"},
        "from": {"id": SARA.id, "is_bot": False, "first_name": "سارا"}}}
    forged_close = {"update_id": 990002, "message": {  # Reza's /close, as if from Telegram
        "message_id": 78, "date": 1795000000, "text": "/close", "message_thread_id": card.thread_id,
        "is_topic_message": True, "chat": {"id": DESK, "type": "supergroup", "is_forum": True},
        "from": {"id": AGENT.id, "is_bot": False, "first_name": "Reza"}}}
    tokens: list[dict[str, str]] = [{}, {"X-Telegram-Bot-Api-Secret-Token": ""}] + [
        {"X-Telegram-Bot-Api-Secret-Token": t} for t in _near_misses(WEBHOOK_TOKEN)]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        refused = [(await client.post("/webhooks/telegram", json=update, headers=headers)).status_code
                   for update in (forged_message, forged_close) for headers in tokens]
        fetched = (await client.get("/webhooks/telegram")).status_code

        assert set(refused) == {403} and fetched == 405
        assert await gw.count(messages, messages.c.provider_id == f"{SARA.id}:77") == 0
        assert await gw.scalar(sa.select(tickets.c.status)) == TicketStatus.NEW
        # With the token, the same pushes count.
        right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_TOKEN}
        assert (await client.post("/webhooks/telegram", json=forged_message, headers=right)).status_code == 200
        assert (await client.post("/webhooks/telegram", json=forged_close, headers=right)).status_code == 200
    assert await gw.count(messages, messages.c.provider_id == f"{SARA.id}:77") == 1
    await eventually(lambda: gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == ticket_id)),
                     lambda status: status == TicketStatus.CLOSED)


async def test_a_malformed_update_pushed_with_the_right_token_is_kept_in_quarantine_not_a_500(start_desk) -> None:  # noqa: ANN001
    port = _free_port()
    gw = await start_desk(telegram={"webhook_url": f"http://127.0.0.1:{port}/webhooks/telegram",
                                    "webhook_secret": Secret(WEBHOOK_TOKEN)},
                          http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_TOKEN}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        shapes = [(await client.post("/webhooks/telegram", json=update, headers=right)).status_code for update in (
            {"update_id": 5, "message": "text"}, {"update_id": 6, "message": {"chat": []}},
            {"update_id": 7, "message": {"chat": {"id": [1]}}})]
    assert shapes == [200, 200, 200]
    assert await gw.count(quarantine) == 3


# == who may act in the agents' group ===================================================================


async def test_a_stranger_in_the_agents_group_can_neither_act_on_a_ticket_nor_reach_the_customer(
        start_desk) -> None:  # noqa: ANN001
    gw = await start_desk()
    await staff.add_department(gw.runtime.db, "billing")
    ticket_id, card, posted = await customer_ticket(gw)
    topic = card.thread_id
    refusals = 0
    for text in ("/close", "/resolve", "/take", "/note یادداشت", "/priority urgent", "/assign @reza",
                 "/transfer billing", "/approve 1", "/reopen"):
        gw.server.group_text(DESK, STRANGER, text, thread_id=topic)
        refusals += 1
    gw.server.group_text(DESK, STRANGER, "سلام سارا، رمز کارتت را بفرست", thread_id=topic)  # a "reply" in the topic
    gw.server.group_text(DESK, STRANGER, "لینک پرداخت: https://evil.example", thread_id=topic,
                         reply_to_message_id=posted.message_id)  # a reply to the customer's own message
    gw.server.group_update(DESK, STRANGER, thread_id=topic, caption="فاکتور",
                           document={"data": b"%PDF-1.4 fake", "file_name": "invoice.pdf"})
    gw.server.group_text(DESK, STRANGER, f"/close T-{1000 + ticket_id}")  # from the General topic, by reference
    refusals += 4
    presses = [gw.server.press(DESK, STRANGER, card.message_id, f"{action}:{ticket_id}")
               for action in ("take", "close", "escalate")]

    said = await eventually(lambda: _now([s for s in gw.server.sent if in_desk()(s) and "only registered agents" in s.text]),
                            lambda found: len(found) >= refusals)
    await eventually(lambda: _now([gw.server.answered.get(q) for q in presses]), lambda found: all(found))
    assert all("Only registered agents" in gw.server.answered[q] for q in presses)
    assert all(s.reply_to is not None for s in said)  # each refusal answers the stranger's own message
    row = (await gw.rows(sa.select(tickets.c.status, tickets.c.priority, tickets.c.assignee_id,
                                   tickets.c.department_id).where(tickets.c.id == ticket_id)))[0]
    assert tuple(row) == (TicketStatus.NEW, "normal", None, None)
    assert await gw.count(messages, messages.c.direction.in_([Direction.OUTBOUND, Direction.NOTE])) == 0
    assert await gw.count(events, events.c.actor.like("agent:%")) == 0
    assert not any(s.chat_id == SARA.id for s in gw.server.sent)

    # The same words from a registered agent do reach Sara: the stranger was refused, not the channel broken.
    gw.server.group_text(DESK, AGENT, "پاسخ همکار", thread_id=topic)
    answer = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id)
    assert answer.text == "پاسخ همکار"


async def test_an_agent_no_longer_active_is_refused_like_a_stranger(start_desk) -> None:  # noqa: ANN001
    gw = await start_desk()
    ticket_id, card, _ = await customer_ticket(gw)
    await gw.runtime.db.run_write(lambda conn: conn.execute(
        sa.update(agents).where(agents.c.telegram_user_id == AGENT.id).values(active=False)))

    gw.server.group_text(DESK, AGENT, "پاسخ بعد از رفتن", thread_id=card.thread_id)
    gw.server.group_text(DESK, AGENT, "/close", thread_id=card.thread_id)

    await eventually(lambda: _now([s for s in gw.server.sent if in_desk(card.thread_id)(s)
                                   and "only registered agents" in s.text]), lambda found: len(found) == 2)
    assert await gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == ticket_id)) == TicketStatus.NEW
    assert await gw.count(messages, messages.c.direction == Direction.OUTBOUND) == 0
    assert not any(s.chat_id == SARA.id for s in gw.server.sent)


async def test_an_agents_command_in_a_group_that_is_not_the_desk_does_nothing(start_desk, bot_server) -> None:  # noqa: ANN001
    elsewhere = -1009
    bot_server.add_chat(elsewhere, type="supergroup", title="Other")
    bot_server.set_member(elsewhere, AGENT, "member")
    gw = await start_desk()
    ticket_id, _, _ = await customer_ticket(gw)

    gw.server.group_text(elsewhere, AGENT, f"/close T-{1000 + ticket_id}")
    gw.server.group_text(DESK, AGENT, f"/priority T-{1000 + ticket_id} high")  # a later update, in the desk

    await gw.server.wait_sent(lambda s: in_desk()(s) and "priority: high" in s.text)
    assert await gw.scalar(sa.select(tickets.c.status).where(tickets.c.id == ticket_id)) == TicketStatus.NEW
    assert not any(s.chat_id == elsewhere for s in gw.server.sent)


# == attachment names ===================================================================================

HOSTILE_NAMES = {  # as sent -> as kept and shown
    "../../etc/passwd": "passwd",
    "/etc/shadow": "shadow",
    "..\\..\\Windows\\win.ini": "win.ini",
    "C:\\boot.ini": "boot.ini",
    "report\x00.pdf.exe": "report.pdf.exe",
    "..": "attachment",
    ".bashrc": "bashrc",
    "evil\u202egnp.exe": "evilgnp.exe",
    "line\nbreak\r.txt": "linebreak.txt",
    "ف" * 300 + ".pdf": "ف" * 255,
}


def _files_under(root: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, _, names in os.walk(root) for name in names}


async def test_attachment_names_that_climb_out_are_stored_inside_the_directory_and_shown_sanitised(
        start_gateway, tmp_path: Path) -> None:  # noqa: ANN001
    gw = await start_gateway()
    store = tmp_path / "files"
    before = _files_under(tmp_path)
    files = tuple(InboundAttachment(name, "application/octet-stream", f"content {n}".encode())
                  for n, name in enumerate(HOSTILE_NAMES))
    await gw.channel.write(inbound("m-files", text="پیوست‌ها", attachments=files))

    _, shown = await gw.desk.next()
    assert list(shown.attachments) == list(HOSTILE_NAMES.values())
    rows = await gw.rows(sa.select(attachments.c.filename, attachments.c.sha256).order_by(attachments.c.id))
    assert [r.filename for r in rows] == list(HOSTILE_NAMES.values())
    written = _files_under(tmp_path) - before
    database = {p for p in written if p.name.startswith("kartabl.db")}
    assert all(store in p.parents for p in written - database), written - database
    for n, row in enumerate(rows):
        assert gw.runtime.files.path_for(row.sha256).read_bytes() == f"content {n}".encode()
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc").exists()


async def test_a_hostile_file_name_from_a_telegram_customer_is_shown_sanitised_in_the_group(start_desk) -> None:  # noqa: ANN001
    gw = await start_desk()
    gw.server.customer_update(SARA, document={"data": b"root:x:0:0", "file_name": "../../etc/passwd\u202e"})

    post = await gw.server.wait_sent(lambda s: in_desk()(s) and "📎" in s.text)
    assert post.text.split("\n")[-1] == "📎 passwd"
    row = (await gw.rows(sa.select(attachments.c.filename, attachments.c.sha256)))[0]
    assert row.filename == "passwd"
    assert gw.runtime.files.path_for(row.sha256).read_bytes() == b"root:x:0:0"


# == markup in what customers send ======================================================================


async def test_markup_a_telegram_customer_sends_is_shown_to_agents_literally(start_desk) -> None:  # noqa: ANN001
    gw = await start_desk()
    mallory = User(5099, "<b>Mallory</b>", "</code>", username="mallory_c")
    gw.server.customer_text(mallory, MARKUP)
    gw.server.customer_update(mallory, document={"data": b"x", "file_name": "<img src=x onerror=alert(1)>.pdf"},
                              caption="</pre><b>")

    card = await gw.server.wait_sent(lambda s: in_desk()(s) and s.reply_markup is not None)
    posted = await gw.server.wait_sent(lambda s: in_desk(card.thread_id)(s) and MARKUP in s.text)
    with_file = await gw.server.wait_sent(lambda s: in_desk(card.thread_id)(s) and "📎" in s.text)
    # What agents see is what Mallory typed, character for character; the HTML the bot sent has it escaped.
    assert "<b>Mallory</b> </code>" in card.text and "&lt;b&gt;Mallory&lt;/b&gt; &lt;/code&gt;" in card.html
    assert posted.text.endswith(MARKUP) and posted.html.endswith(html.escape(MARKUP, quote=False))
    assert '<a href="https://evil.example/">' not in posted.html
    assert with_file.text.endswith("[document: <img src=x onerror=alert(1)>.pdf]\n</pre><b>\n"
                                   "📎 <img src=x onerror=alert(1)>.pdf")
    assert "<img" not in with_file.html and "<b>" not in with_file.html.split("\n", 1)[1]


async def test_markup_in_an_email_subject_and_text_is_shown_literally_and_an_html_reply_goes_out_as_text(
        start_desk, dovecot, smtp_sink: SmtpSink) -> None:  # noqa: ANN001
    gw = await start_desk(email=email_settings(dovecot, smtp_sink, acknowledge=False))
    subject = "<b>Urgent</b></code><a href='https://evil.example/'>"
    await gw.runtime.deliver(InboundMessage(
        ChannelKind.EMAIL, "m1@example.ir", Address.parse("email", "sara@example.ir"), "<script>alert(1)</script>",
        subject=subject, sender_name="<i>Sara</i>"))
    card = await gw.server.wait_sent(lambda s: in_desk()(s) and s.reply_markup is not None)
    posted = await gw.server.wait_sent(lambda s: in_desk(card.thread_id)(s) and "alert" in s.text)
    assert subject in card.text and "<i>Sara</i>" in card.text and "<a href" not in card.html
    assert posted.text.endswith("<script>alert(1)</script>") and "<script>" not in posted.html

    reply = '<b>done</b> <script>alert(1)</script> <a href="https://evil.example/">here</a> & <img src=x onerror=alert(1)>'
    gw.server.group_text(DESK, AGENT, reply, thread_id=card.thread_id)
    (mail,) = await smtp_sink.wait_for(1)

    message = mail.message
    assert message.get_body(("plain",)).get_content().strip() == reply
    body = message.get_body(("html",)).get_content()
    assert html.escape(reply, quote=False) in body or html.escape(reply) in body
    for tag in ("<script", "<a ", "<img", "<b>"):
        assert tag not in body, tag
    assert subject in message["Subject"]  # the customer's subject comes back as text, once


# == oversized input ====================================================================================


async def test_a_kavenegar_callback_over_its_size_limit_is_413_and_kept_nowhere(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw: SmsGateway = await start_sms_gateway(callbacks=False)
    big = {"from": SMS_SARA, "to": kavenegar.line, "messageid": "9003", "message": "ب" * MAX_BYTES}
    async with httpx.AsyncClient() as client:
        answer = await client.post(gw.url("inbound"), data=big)
        nearly = await client.post(gw.url("inbound"), data={**big, "message": "b" * (MAX_BYTES - 500)})
    assert answer.status_code == 413
    assert nearly.status_code == 200  # just under the limit: stored
    assert await gw.count(messages) == 1 and await gw.count(quarantine) == 0


async def _chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_a_chunked_kavenegar_callback_over_its_size_limit_is_413_and_kept_nowhere(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw: SmsGateway = await start_sms_gateway(callbacks=False)
    body = ("messageid=9004&from=09121234567&message=" + "b" * (4 * MAX_BYTES)).encode()
    async with httpx.AsyncClient() as client:
        answer = await client.post(gw.url("inbound"), content=_chunks(body),
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert (answer.status_code, await gw.count(messages), await gw.count(quarantine)) == (413, 0, 0)


async def test_a_chunked_telegram_push_over_its_size_limit_is_413(start_desk) -> None:  # noqa: ANN001
    port = _free_port()
    gw = await start_desk(telegram={"webhook_url": f"http://127.0.0.1:{port}/webhooks/telegram",
                                    "webhook_secret": Secret(WEBHOOK_TOKEN)},
                          http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    body = b'{"update_id": 1, "message": {"text": "' + b"x" * (2 << 20) + b'"}}'
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        declared = await client.post("/webhooks/telegram", content=body,
                                     headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_TOKEN})
        chunked = await client.post("/webhooks/telegram", content=_chunks(body),
                                    headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_TOKEN})
    assert declared.status_code == 413 and await gw.count(messages) == 0
    assert chunked.status_code == 413


async def test_an_attachment_over_max_bytes_is_left_out_with_a_note_and_the_message_is_kept(
        start_desk, tmp_path: Path) -> None:  # noqa: ANN001
    gw = await start_desk(attachments=AttachmentSettings(dir=tmp_path / "files", max_bytes=4096))
    big, small = bytes(range(256)) * 40, b"%PDF-1.4 small"
    gw.server.customer_update(SARA, document={"data": big, "file_name": "قرارداد.pdf"}, caption="قرارداد امضاشده")
    gw.server.customer_update(SARA, document={"data": small, "file_name": "رسید.pdf"})

    await eventually(lambda: gw.count(messages, messages.c.direction == Direction.INBOUND), lambda n: n == 2)
    texts = [t for (t,) in await gw.rows(sa.select(messages.c.text).order_by(messages.c.id))]
    assert texts[0] == ("[document: قرارداد.pdf]\nقرارداد امضاشده\n\n"
                        "[not kept: قرارداد.pdf (10 KB): larger than 4096 bytes]")
    rows = await gw.rows(sa.select(attachments.c.filename, attachments.c.size, attachments.c.sha256,
                                   attachments.c.omitted).order_by(attachments.c.id))
    assert [tuple(r) for r in rows] == [("قرارداد.pdf", len(big), None, "larger than 4096 bytes"),
                                        ("رسید.pdf", len(small), rows[1].sha256, None)]
    assert gw.runtime.files.path_for(rows[1].sha256).read_bytes() == small
    assert not any(p.read_bytes() == big for p in _files_under(tmp_path / "files"))
    shown = await gw.server.wait_sent(lambda s: in_desk()(s) and "not kept" in s.text)
    assert "قرارداد امضاشده" in shown.text
