"""The Telegram channel and desk against the Bot API stand-in, driven by the real python-telegram-bot."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from channels.email.channel import EmailChannel
from channels.telegram.channel import OFFSET_STATE, TelegramChannel
from channels.telegram.desk import digest_html, named_refs
from channels.telegram.settings import TelegramSettings
from channels.telegram.standin import Limits, StandInTelegram, User
from gateway import staff
from gateway.compose import build_runtime
from gateway.domain import ChannelKind, DeliveryState, Direction, TicketStatus
from gateway.messages import InboundMessage, utcnow
from gateway.addresses import Address
from gateway.schema import agents, attachments, channel_state, desk_topics, events, messages, tickets
from gateway.settings import HttpSettings, Secret
from gateway.tickets import TicketSummary
from tests.conftest import Gateway, eventually, make_settings
from tests.servers.smtp_sink import SmtpSink
from tests.test_email import email_settings

TOKEN = "123456:TEST-token"
DESK = -1001
SARA = User(5001, "سارا", "احمدی", username="sara_c", language_code="fa")
AGENT = User(700, "Reza", username="reza")
STRANGER = User(701, "Mallory", username="mallory")
# Telegram's limits with the windows shrunk, on both sides: the stand-in enforces them, the bot paces to them.
LIMITS = Limits(per_chat=1, per_chat_window=0.2, per_group=20, per_group_window=2.0, per_bot=30, per_bot_window=1.0)


def telegram_settings(server: StandInTelegram, **overrides: Any) -> TelegramSettings:
    values: dict[str, Any] = dict(
        enabled=True, token=Secret(TOKEN), agents_chat_id=DESK, base_url=server.base_url,
        base_file_url=server.base_file_url, poll_timeout=1.0, chat_interval=0.2, group_per_minute=20,
        group_window=2.0, timeout=5.0)
    values.update(overrides)
    return TelegramSettings(**values)


@dataclasses.dataclass
class BotGateway(Gateway):
    telegram: TelegramChannel
    server: StandInTelegram

    async def ticket_of(self, provider_id: str) -> int:
        async def find() -> Any:
            return await self.scalar(sa.select(messages.c.ticket_id).where(messages.c.provider_id == provider_id))
        return await eventually(find, lambda t: t is not None)


@pytest.fixture
async def bot_server() -> AsyncIterator[StandInTelegram]:
    server = StandInTelegram(TOKEN, limits=LIMITS)
    await server.start()
    server.add_chat(DESK, type="supergroup", title="پشتیبانی", is_forum=True)
    for user in (AGENT, STRANGER):
        server.set_member(DESK, user, "member")
    yield server
    await server.stop()


@pytest.fixture
async def start_bot_gateway(db_url: str, tmp_path: Path, bot_server: StandInTelegram) -> AsyncIterator[Callable[..., Any]]:
    started = []

    async def start(*, email: Any = None, http: HttpSettings | None = None, **overrides: Any) -> BotGateway:
        cfg = telegram_settings(bot_server, **overrides)
        channel = TelegramChannel(cfg)
        channels: dict[ChannelKind, Any] = {ChannelKind.TELEGRAM: channel}
        sections: dict[str, Any] = {"telegram": cfg}
        if email is not None:
            channels[ChannelKind.EMAIL], sections["email"] = EmailChannel(email), email
        extra = {"http": http} if http is not None else {}
        runtime = build_runtime(make_settings(db_url, tmp_path, channels=sections, **extra), channels=channels)
        await runtime.start()
        started.append(runtime)
        await staff.add_agent(runtime.db, "Reza", telegram_user_id=AGENT.id, username="reza")
        if cfg.webhook_url:
            await eventually(lambda: _value(bot_server.webhook.get("url")), lambda url: url == cfg.webhook_url)
        else:
            await bot_server.wait_polling()
        return BotGateway(runtime, None, None, channel, bot_server)  # type: ignore[arg-type]

    yield start
    for runtime in started:
        if runtime.running:
            await runtime.stop()


async def _value(value: Any) -> Any:
    return value


def _in_desk(thread: int | None = None) -> Callable[[Any], bool]:
    return lambda s: s.chat_id == DESK and (thread is None or s.thread_id == thread)


def _named_by(post: Any) -> set[str]:
    """The tickets a post in the agents' group names: every one listed by a digest, or a card's own."""
    if "new ticket" in post.text and post.thread_id is None:
        return named_refs(post.text.split("\n", 1)[-1])
    return named_refs(post.text[:12]) if post.reply_markup is not None else set()


async def test_a_customer_message_opens_a_ticket_with_its_own_topic_card_and_acknowledgement(
        start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway()
    message_id = gw.server.customer_text(SARA, "سلام، سفارش ۱۲۳ من هنوز نرسیده <b>فوری</b> & مهم")

    ticket_id = await gw.ticket_of(f"{SARA.id}:{message_id}")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    posted = await gw.server.wait_sent(lambda s: _in_desk(card.thread_id)(s) and s.reply_markup is None)
    ack = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id)

    assert card.thread_id is not None and card.text.startswith(f"T-{1000 + ticket_id}")
    assert "سارا احمدی" in card.text and "telegram" in card.text
    assert [b["callback_data"] for b in card.reply_markup["inline_keyboard"][0]] == [
        f"take:{ticket_id}", f"close:{ticket_id}", f"escalate:{ticket_id}", f"transfer:{ticket_id}"]
    # The customer's markup-looking text is shown literally, not as formatting.
    assert posted.text.endswith("سلام، سفارش ۱۲۳ من هنوز نرسیده <b>فوری</b> & مهم")
    assert f"T-{1000 + ticket_id}" in ack.text


async def test_an_agent_answers_in_the_topic_and_the_customer_gets_it_on_telegram(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "کد رهگیری مرسوله را می‌خواهم")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)

    gw.server.group_text(DESK, AGENT, "کد رهگیری: 123456 <i>نه ایتالیک</i>", thread_id=card.thread_id)
    answer = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id)

    assert answer.text == "کد رهگیری: 123456 <i>نه ایتالیک</i>" and answer.parse_mode is None
    rows = await gw.rows(sa.select(messages.c.direction, messages.c.delivery_state, messages.c.agent_id)
                         .where(messages.c.direction == Direction.OUTBOUND))
    agent_id = await gw.scalar(sa.select(agents.c.id).where(agents.c.telegram_user_id == AGENT.id))
    await eventually(lambda: gw.rows(sa.select(messages.c.delivery_state).where(
        messages.c.direction == Direction.OUTBOUND)), lambda r: r and r[0][0] == DeliveryState.SENT)
    assert rows[0].agent_id == agent_id


async def test_an_agent_reply_reaches_an_email_customer_through_smtp(start_bot_gateway, dovecot,
                                                                     smtp_sink: SmtpSink) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False, email=email_settings(dovecot, smtp_sink, acknowledge=False))
    result = await gw.runtime.deliver(InboundMessage(
        channel=ChannelKind.EMAIL, provider_id="m1@example.ir", sender=Address("email", "maryam@example.ir"),
        text="فاکتور را لطفاً دوباره بفرستید", subject="فاکتور"))
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    assert "email" in card.text

    gw.server.group_text(DESK, AGENT, "فاکتور پیوست شد. با احترام", thread_id=card.thread_id)
    received = await smtp_sink.wait_for(1)

    mail = received[0].message
    assert mail["To"] == "maryam@example.ir" and f"[T-{1000 + result.ticket_id}]" in mail["Subject"]
    assert mail.get_body(("plain",)).get_content().strip() == "فاکتور پیوست شد. با احترام"


async def test_commands_act_on_the_ticket_and_strangers_change_nothing(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    await staff.add_department(gw.runtime.db, "billing")
    await staff.add_agent(gw.runtime.db, "Sara Agent", telegram_user_id=702, username="sara")
    gw.server.customer_text(SARA, "مشکل پرداخت")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    ticket_id = await gw.scalar(sa.select(tickets.c.id))
    topic = card.thread_id

    async def say(user: User, text: str, expect: str) -> None:
        gw.server.group_text(DESK, user, text, thread_id=topic)
        await gw.server.wait_sent(lambda s: _in_desk(topic)(s) and expect in s.text)

    await say(STRANGER, "/close", "only registered agents")
    assert await gw.scalar(sa.select(tickets.c.status)) == TicketStatus.NEW
    await say(AGENT, "/take", "is yours now")
    await say(AGENT, "/priority high", "priority: high")
    await say(AGENT, "/note مشتری VIP است", "Noted")
    await say(AGENT, "/transfer billing", "referred to billing")
    await say(AGENT, "/assign @sara", "assigned to Sara Agent")
    await say(AGENT, "/close", "closed")
    await say(AGENT, "/reopen", "reopened")
    await say(AGENT, "/history", "first request")
    await say(AGENT, "/help", "/transfer")

    row = (await gw.rows(sa.select(tickets.c.status, tickets.c.priority, tickets.c.department_id,
                                   tickets.c.assignee_id).where(tickets.c.id == ticket_id)))[0]
    assert (row.status, row.priority) == (TicketStatus.OPEN, "high")
    assert row.department_id is not None and row.assignee_id is not None
    notes = await gw.rows(sa.select(messages.c.text).where(messages.c.direction == Direction.NOTE))
    assert [n.text for n in notes] == ["مشتری VIP است"]
    assert not any(s.chat_id == SARA.id for s in gw.server.sent)  # nothing of it reached the customer
    kinds = [k for (k,) in await gw.rows(sa.select(events.c.kind).where(events.c.actor.like("agent:%")))]
    assert {"ticket.assignee", "ticket.priority", "ticket.department", "ticket.status"} <= set(kinds)


async def test_a_button_press_takes_the_ticket(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "سلام")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    ticket_id = await gw.scalar(sa.select(tickets.c.id))

    query = gw.server.press(DESK, AGENT, card.message_id, f"take:{ticket_id}")
    await gw.server.wait_sent(lambda s: _in_desk(card.thread_id)(s) and "is yours now" in s.text)
    assert gw.server.answered[query] and "is yours now" in gw.server.answered[query]
    assert await gw.scalar(sa.select(tickets.c.assignee_id)) is not None


async def test_a_blocked_customer_fails_the_reply_and_the_topic_says_so(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "سلام")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    await gw.server.wait_sent(lambda s: _in_desk(card.thread_id)(s) and s.reply_markup is None)
    gw.server.fail_next("sendMessage", error_code=403, description="Forbidden: bot was blocked by the user")

    gw.server.group_text(DESK, AGENT, "پاسخ ما", thread_id=card.thread_id)
    notice = await gw.server.wait_sent(lambda s: _in_desk(card.thread_id)(s) and "could not be delivered" in s.text)

    assert "blocked" in notice.text
    assert await gw.scalar(sa.select(messages.c.delivery_state).where(
        messages.c.direction == Direction.OUTBOUND)) == DeliveryState.FAILED


async def test_a_deleted_topic_is_opened_again_on_the_next_message(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "اول")
    first = await gw.server.wait_sent(lambda s: _in_desk()(s) and "اول" in s.text)
    gw.server.delete_topic(DESK, first.thread_id)

    gw.server.customer_text(SARA, "دوم")
    second = await gw.server.wait_sent(lambda s: _in_desk()(s) and "دوم" in s.text)

    assert second.thread_id not in (None, first.thread_id)
    cards = [s for s in gw.server.sent if _in_desk()(s) and s.reply_markup is not None]
    assert [c.thread_id for c in cards] == [first.thread_id, second.thread_id]


async def test_updates_read_before_a_crash_are_read_again_and_stored_once(start_bot_gateway, db_url: str) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    await gw.runtime.stop()  # "crashed": the next updates are on Telegram's side, unconfirmed
    sent = [gw.server.customer_text(User(6000 + n, f"c{n}"), f"پیام {n}") for n in range(30)]
    offset_before = gw.server.confirmed_offset

    again = await start_bot_gateway(acknowledge=False)
    await eventually(lambda: again.count(messages, messages.c.direction == Direction.INBOUND), lambda n: n == 30)

    ids = sorted(r[0] for r in await again.rows(sa.select(messages.c.provider_id)))
    assert ids == sorted(f"{6000 + n}:{m}" for n, m in enumerate(sent))
    assert gw.server.confirmed_offset > offset_before
    # The stored offset is the one the last getUpdates confirmed with: nothing is left unconfirmed.
    await eventually(lambda: again.scalar(sa.select(channel_state.c.value).where(
        channel_state.c.name == OFFSET_STATE)), lambda v: v == gw.server.confirmed_offset)
    assert gw.server.pending_updates == []


async def test_a_photo_and_a_shared_contact_are_kept_and_the_phone_finds_the_customer(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    photo = b"\xff\xd8\xff\xe0JFIF-" + bytes(range(256)) * 40
    gw.server.customer_update(SARA, photo=photo, caption="عکس بسته‌ی خراب")
    gw.server.customer_update(SARA, contact={"phone_number": "989121234567", "first_name": "سارا", "user_id": SARA.id})
    await eventually(lambda: gw.count(messages, messages.c.direction == Direction.INBOUND), lambda n: n == 2)

    rows = await gw.rows(sa.select(attachments.c.filename, attachments.c.size, attachments.c.sha256))
    assert len(rows) == 1 and rows[0].size == len(photo)
    assert gw.runtime.files.path_for(rows[0].sha256).read_bytes() == photo
    texts = [r[0] for r in await gw.rows(sa.select(messages.c.text).order_by(messages.c.id))]
    assert texts[0] == "[photo]\nعکس بسته‌ی خراب" and texts[1].startswith("[contact: سارا, +989121234567]")
    # An SMS from that phone later is the same customer.
    later = await gw.runtime.deliver(InboundMessage(ChannelKind.SMS, "sms-1", Address.parse("phone", "09121234567"),
                                                    "سلام"))
    assert later.customer_id == await gw.scalar(sa.select(tickets.c.customer_id).where(tickets.c.channel == "telegram"))


async def test_a_document_an_agent_sends_in_the_topic_reaches_the_customer(start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "فاکتور را بفرستید")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)
    invoice = b"%PDF-1.4 invoice 551"
    gw.server.group_update(DESK, AGENT, thread_id=card.thread_id,
                           document={"data": invoice, "file_name": "فاکتور.pdf", "mime_type": "application/pdf"},
                           caption="فاکتور شما")

    got = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id and s.method == "sendDocument")
    assert (got.filename, got.data) == ("فاکتور.pdf", invoice)
    text = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id and s.method == "sendMessage")
    assert text.text == "فاکتور شما"


# A burst's limits: Telegram's ratios, the group's window shrunk so that 300 tickets (900 posts) drain in
# about 20 s; the bot paces to the same numbers.
BURST = Limits(per_chat=1, per_chat_window=0.2, per_group=40, per_group_window=1.0, per_bot=60, per_bot_window=1.0)


@pytest.mark.slow
async def test_a_burst_of_300_new_tickets_is_listed_at_once_and_each_gets_its_topic_without_a_429(
        start_bot_gateway, bot_server) -> None:  # noqa: ANN001
    bot_server.limits = BURST
    gw = await start_bot_gateway(acknowledge=False, group_per_minute=40, group_window=1.0, bot_per_second=60)
    for n in range(300):
        gw.server.customer_text(User(9000 + n, f"Customer {n}"), f"order {n} is late")

    first_digest = await gw.server.wait_sent(lambda s: _in_desk()(s) and "new ticket" in s.text, timeout=30)
    taken_ref = sorted(named_refs(first_digest.text.split("\n", 1)[-1]))[-1]
    gw.server.group_text(DESK, AGENT, f"/take {taken_ref}")  # from the General topic, under the digest
    await gw.server.wait_sent(lambda s: _in_desk()(s) and f"{taken_ref} is yours now" in s.text, timeout=10)
    await eventually(lambda: gw.count(desk_topics), lambda n: n == 300, timeout=90)
    # The last topic's card and customer post go out after the topic is made: wait for them too.
    async def cards_and_posts() -> tuple[int, int]:
        desk = [s for s in gw.server.sent if _in_desk()(s) and s.thread_id is not None]
        return (sum(1 for s in desk if s.reply_markup is not None),
                sum(1 for s in desk if s.reply_markup is None and "order" in s.text))
    await eventually(cards_and_posts, lambda n: n == (300, 300), timeout=30)
    await eventually(lambda: gw.runtime.queue.stats(), lambda q: q.due == 0, timeout=30)  # SLA timers wait

    group = [s for s in gw.server.sent if _in_desk()(s)]
    cards = [s for s in group if s.reply_markup is not None]
    digests = [s for s in group if "new ticket" in s.text and s.thread_id is None]
    assert gw.server.too_many == 0 and len(cards) == 300 and digests
    # Every ticket was named in the group (a digest or its card) within one window of the first digest:
    # the digest names the head of the queue too when the head's own card would wait for the next window.
    named: set[str] = set()
    for post in group:
        named.update(_named_by(post))
        if len(named) == 300:
            break
    assert len(named) == 300 and sum(1 for c in cards if group.index(c) < group.index(post)) < 100
    assert group.index(post) - group.index(digests[0]) < BURST.per_group
    # The taken ticket opened out of turn, and every customer message is in its own topic, once.
    taken_card = next(c for c in cards if c.text.startswith(taken_ref))
    assert cards.index(taken_card) < 150
    topics = dict((await gw.rows(sa.select(desk_topics.c.ticket_id, desk_topics.c.thread_id))))
    for ticket_id, thread in topics.items():
        posts = [s.text for s in group if s.thread_id == thread and s.reply_markup is None and "order" in s.text]
        assert len(posts) == 1, (ticket_id, posts)


async def test_in_a_full_group_window_the_digest_names_every_waiting_ticket_at_once(
        start_bot_gateway, bot_server) -> None:  # noqa: ANN001
    # Telegram's own group window (20 a minute): once a few tickets used it up, the rest wait up to a
    # minute for their cards. The digest, sent from the window's reserve, names every one of them,
    # the head of the queue too: its card is "next", but next is most of a minute away.
    bot_server.limits = Limits(per_chat=1, per_chat_window=0.2, per_group=20, per_group_window=60.0)
    gw = await start_bot_gateway(acknowledge=False, group_per_minute=20, group_window=60.0)
    for n in range(20):
        gw.server.customer_text(User(9500 + n, f"Customer {n}"), f"invoice {n} is wrong")

    async def named() -> set[str]:
        return {ref for post in gw.server.sent if _in_desk()(post) for ref in _named_by(post)}
    assert len(await eventually(named, lambda refs: len(refs) == 20, timeout=15)) == 20
    assert gw.server.too_many == 0


async def test_a_department_with_its_own_group_gets_the_referred_ticket_and_answers_from_there(
        start_bot_gateway, bot_server) -> None:  # noqa: ANN001
    billing_chat = -1002
    bot_server.add_chat(billing_chat, type="supergroup", title="مالی", is_forum=True)
    bot_server.set_member(billing_chat, AGENT, "member")
    gw = await start_bot_gateway(acknowledge=False)
    await staff.add_department(gw.runtime.db, "billing", chat_id=billing_chat)
    gw.server.customer_text(SARA, "صورتحساب من اشتباه است")
    card = await gw.server.wait_sent(lambda s: _in_desk()(s) and s.reply_markup is not None)

    gw.server.group_text(DESK, AGENT, "/transfer billing", thread_id=card.thread_id)
    there = await gw.server.wait_sent(lambda s: s.chat_id == billing_chat and s.reply_markup is not None)
    so_far = await gw.server.wait_sent(lambda s: s.chat_id == billing_chat and "conversation so far" in s.text)
    assert "Department: billing" in there.text and "صورتحساب من اشتباه است" in so_far.text
    assert so_far.thread_id == there.thread_id is not None

    gw.server.customer_text(SARA, "منتظر هستم")
    await gw.server.wait_sent(lambda s: s.chat_id == billing_chat and s.thread_id == there.thread_id
                              and "منتظر هستم" in s.text)
    gw.server.group_text(billing_chat, AGENT, "اصلاح شد", thread_id=there.thread_id)
    answer = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id)
    assert answer.text == "اصلاح شد"
    assert not any(s.chat_id == DESK and "منتظر هستم" in s.text for s in gw.server.sent)


async def test_in_a_group_without_topics_posts_carry_the_reference_and_agents_answer_by_replying(
        start_bot_gateway, bot_server) -> None:  # noqa: ANN001
    plain = -1003
    bot_server.add_chat(plain, type="group", title="Support")
    bot_server.set_member(plain, AGENT, "member")
    gw = await start_bot_gateway(acknowledge=False, agents_chat_id=plain)
    gw.server.customer_text(SARA, "کارت من مسدود شده")
    card = await gw.server.wait_sent(lambda s: s.chat_id == plain and s.reply_markup is not None)
    posted = await gw.server.wait_sent(lambda s: s.chat_id == plain and "مسدود" in s.text)
    ref = card.text.split(" ", 1)[0]
    assert card.thread_id is None and posted.text.startswith(ref) and ref.startswith("T-")

    gw.server.group_text(plain, AGENT, "بررسی می‌کنیم", reply_to_message_id=posted.message_id)
    answer = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id)
    gw.server.group_text(plain, AGENT, "/close", reply_to_message_id=card.message_id)
    await gw.server.wait_sent(lambda s: s.chat_id == plain and f"{ref} closed" in s.text)
    gw.server.group_text(plain, AGENT, "/take")  # no ticket named, none replied to
    await gw.server.wait_sent(lambda s: s.chat_id == plain and "Which ticket?" in s.text)

    assert answer.text == "بررسی می‌کنیم"
    assert await gw.scalar(sa.select(tickets.c.status)) == TicketStatus.CLOSED


def test_a_digest_names_a_whole_burst_in_one_message_within_telegrams_limit() -> None:
    burst = [TicketSummary(id=n, ref=f"T-{1000 + n}", subject=f"سفارش {n} <b>دیر</b>", status="new",
                           priority="normal", channel="email", reply_to=f"email:c{n}@example.ir", customer_id=n,
                           customer_name=None, customer_addresses=(), created_at=utcnow(), earlier=(),
                           earlier_count=0) for n in [*range(1, 301), 305, 307]]
    text, shown = digest_html(burst[:25], [t.id for t in burst[25:]])
    assert shown == [t.id for t in burst] and len(text) <= 4096
    assert text.startswith("🔔 <b>302 new tickets</b>") and "سفارش 1 &lt;b&gt;دیر&lt;/b&gt;" in text
    assert text.endswith("and 277 more: T-1026–T-1300, T-1305, T-1307")
    assert named_refs(text) == {t.ref for t in burst}
    # Beyond what one message holds, the rest are left for the next.
    text, shown = digest_html(burst[::2][:25], [t.id for t in burst[::2][25:]], room=600)
    assert len(text) < 900 and 0 < len(shown) < 151 and shown == [t.id for t in burst[::2]][:len(shown)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_in_webhook_mode_a_push_is_answered_200_only_once_stored_and_a_wrong_secret_changes_nothing(
        start_bot_gateway, bot_server) -> None:  # noqa: ANN001
    port = _free_port()
    url = f"http://127.0.0.1:{port}/webhooks/telegram"
    gw = await start_bot_gateway(acknowledge=False, webhook_url=url, webhook_secret=Secret("s3cret_Token-1"),
                                 http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
    # Telegram pushes a customer's message; it becomes a ticket, and Telegram holds nothing more.
    first = gw.server.customer_text(SARA, "از طریق وب‌هوک")
    await gw.ticket_of(f"{SARA.id}:{first}")
    await eventually(lambda: _value(gw.server.pending_updates), lambda pending: pending == [])

    update = {"update_id": 990001, "message": {
        "message_id": 77, "date": 1795000000, "text": "پیام مستقیم",
        "chat": {"id": SARA.id, "type": "private", "first_name": "سارا"},
        "from": {"id": SARA.id, "is_bot": False, "first_name": "سارا"}}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        refused = [await client.post("/webhooks/telegram", json=update, headers=headers) for headers in (
            {}, {"X-Telegram-Bot-Api-Secret-Token": "s3cret_Token-2"})]
        stored_before = await gw.count(messages)
        bad = await client.post("/webhooks/telegram", content=b"{not json",
                                headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret_Token-1"})
        ok = await client.post("/webhooks/telegram", json=update,
                               headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret_Token-1"})
        # The 200 came after the commit: the message is there the moment the answer is.
        assert ok.status_code == 200 and await gw.count(messages, messages.c.provider_id == f"{SARA.id}:77") == 1
        again = await client.post("/webhooks/telegram", json=update,
                                  headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret_Token-1"})

    assert [r.status_code for r in refused] == [403, 403] and stored_before == 1
    assert bad.status_code == 400 and again.status_code == 200
    assert await gw.count(messages) == 2  # pushed twice, stored once


async def test_a_resolved_telegram_ticket_asks_for_a_score_with_buttons_and_a_press_answers(
        start_bot_gateway) -> None:  # noqa: ANN001
    gw = await start_bot_gateway(acknowledge=False)
    gw.server.customer_text(SARA, "سلام، مشکل حل شد؟")
    ticket_id = await eventually(lambda: gw.scalar(sa.select(tickets.c.id)), lambda t: t is not None)
    await gw.runtime.tickets.set_status(ticket_id, TicketStatus.RESOLVED, actor="agent:1")

    survey = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id and s.reply_markup is not None)
    row = survey.reply_markup["inline_keyboard"][0]
    assert [b["text"] for b in row] == ["1", "2", "3", "4", "5"] and "دکمه" in survey.text
    gw.server.press(SARA.id, SARA, survey.message_id, row[3]["callback_data"])

    await eventually(lambda: gw.scalar(sa.select(tickets.c.csat_score)), lambda s: s == 4)
    assert await gw.scalar(sa.select(tickets.c.status)) == TicketStatus.RESOLVED
    thanks = await gw.server.wait_sent(lambda s: s.chat_id == SARA.id and "امتیاز" in s.text)
    assert f"T-{1000 + ticket_id}" in thanks.text
