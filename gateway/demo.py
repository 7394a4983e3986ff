"""`kartabl demo`: the cartable flow end to end on this machine, with no accounts, as a transcript.

Scripted customers write through local stand-ins for the providers (an in-process loopback channel,
a small IMAP server with IDLE plus an SMTP peer for email, the Telegram Bot API, and Kavenegar's SMS
API over HTTPS), the gateway
stores and threads each message, agents answer (a scripted one, and one in the Telegram group, where
every ticket has its topic), and the answers come back to the customers through the durable outbox,
including a provider failure that is retried and an auto-reply that is not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import email.utils
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.addresses import Address
from gateway.domain import ChannelKind, TicketStatus
from gateway.errors import TransientError
from gateway.messages import InboundMessage, IngestResult
from gateway.settings import (
    AttachmentSettings, DatabaseSettings, HttpSettings, JobSettings, Secret, Settings, WorkflowSettings,
)
from gateway.tickets import MessageView, TicketSummary

if TYPE_CHECKING:
    from channels.email.settings import EmailSettings

STEP_TIMEOUT_S = 15.0
#: The example workflow file shipped with the package: its rules route the demo's tickets.
_WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows" / "workflows.toml"


class ScriptedDesk:
    """The agents' desk of the demo: it collects what the gateway shows agents."""

    def __init__(self) -> None:
        self.shown: asyncio.Queue[tuple[TicketSummary, MessageView]] = asyncio.Queue()

    async def show(self, ticket: TicketSummary, message: MessageView) -> None:
        await self.shown.put((ticket, message))

    async def next(self) -> tuple[TicketSummary, MessageView]:
        return await asyncio.wait_for(self.shown.get(), STEP_TIMEOUT_S)


class Transcript:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.began = time.monotonic()

    def __call__(self, who: str, text: str) -> None:
        self.out(f"[{time.monotonic() - self.began:7.3f}s] {who:<9} {text}")


async def run_demo(keep: Path | None = None, out: Callable[[str], None] = print) -> int:
    from channels.email.channel import EmailChannel
    from channels.loopback import LoopbackChannel, LoopbackSettings
    from channels.sms.channel import SmsChannel
    from channels.telegram.channel import TelegramChannel
    from gateway import staff
    from gateway.compose import build_runtime

    with contextlib.ExitStack() as stack:
        workdir = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kartabl-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        mail = EmailDemo()
        await mail.start()
        email_settings = mail.settings()
        bot = TelegramDemo()
        await bot.start()
        telegram_settings = bot.settings()
        sms = SmsDemo()
        await sms.start()
        sms_settings = sms.settings()
        settings = Settings(
            database=DatabaseSettings(url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}"),
            http=HttpSettings(port=0),
            attachments=AttachmentSettings(dir=workdir / "attachments"),
            jobs=JobSettings(poll_interval=0.2, backoff_base=0.5),
            channels={"loopback": LoopbackSettings(enabled=True), "email": email_settings,
                      "telegram": telegram_settings, "sms": sms_settings},
            workflows=WorkflowSettings(file=str(_WORKFLOWS)),
            source="demo",
        )
        channel = LoopbackChannel()
        desk = ScriptedDesk()
        runtime = build_runtime(settings, channels={ChannelKind.LOOPBACK: channel,
                                                    ChannelKind.EMAIL: EmailChannel(email_settings),
                                                    ChannelKind.TELEGRAM: TelegramChannel(telegram_settings),
                                                    ChannelKind.SMS: SmsChannel(sms_settings)},
                                desks=[desk])
        say = Transcript(out)
        out("Kartabl demo: the cartable flow on this machine, through local stand-ins for the providers:")
        out(f"the built-in loopback channel, a mail server (IMAP with IDLE on port {mail.imap.port}, "
            f"SMTP on port {mail.smtp.port}), and the Telegram Bot API ({bot.server.base_url}, its rate limits "
            f"{bot.SPEEDUP:.0f} times faster) with the agents' forum group, and Kavenegar's SMS API "
            f"(HTTPS on {sms.server.host}, with its own CA).")
        out(f"Database: {workdir / 'demo.db'}\n")
        await runtime.start()
        sms.call_back(runtime.http_port)
        for department in ("general", "billing", "technical", "sales", "enterprise"):
            await staff.add_department(runtime.db, department)
        await staff.add_agent(runtime.db, "رضا", telegram_user_id=bot.agent.id, username="reza",
                              department_names=("general", "billing"))
        try:
            await _scenario(runtime, channel, desk, say)
            await _email_scenario(runtime, mail, desk, say)
            await _telegram_scenario(runtime, bot, desk, say)
            await _sms_scenario(runtime, sms, desk, say)
            ok, health = await _settled(runtime)
            body = await asyncio.to_thread(_get, f"http://127.0.0.1:{runtime.http_port}/healthz")
            out("")
            out(f"GET /healthz -> {body}")
            # What is left are timers not due yet (the SLA clocks' reminders, a quiet ticket's closing).
            ok = ok and health["queue"]["due"] == 0 and health["queue"]["dead"] == 0
        finally:
            await runtime.stop()
            await mail.stop()
            await bot.stop()
            await sms.stop()
        out("\nDemo finished: every message stored once, threaded, answered and delivered."
            if ok else "\nDemo finished with work left in the queue; see above.")
        return 0 if ok else 1


async def _scenario(runtime, channel, desk: ScriptedDesk, say: Transcript) -> None:  # noqa: ANN001
    sara = Address.parse("email", "Sara.Ahmadi@Example.com")
    sara_phone = Address.parse("phone", "۰۹۱۲ ۱۲۳ ۴۵۶۷")
    john = Address.parse("telegram", "731001")
    tickets = runtime.tickets

    async def customer(message: InboundMessage) -> IngestResult:
        say("customer", f"{message.sender} writes: «{message.text}»")
        result = await asyncio.wait_for(channel.write(message), STEP_TIMEOUT_S)
        what = ("a duplicate: already stored, nothing new" if result.duplicate else
                f"new ticket {result.ticket_ref}" if result.new_ticket else
                f"reopened {result.ticket_ref}" if result.reopened else f"threaded onto {result.ticket_ref}")
        say("gateway", f"committed, then acknowledged to the provider: {what}"
                       + (" (new customer)" if result.new_customer else ""))
        return result

    async def agent_answers(text: str) -> None:
        ticket, message = await desk.next()
        earlier = ", ".join(t.ref for t in ticket.earlier) or "none"
        say("desk", f"{ticket.ref} [{ticket.status}] from {', '.join(ticket.customer_addresses)};"
                    f" earlier tickets: {earlier}; message: «{message.text}»")
        await tickets.reply(ticket.id, text, agent_id=None)
        say("agent", f"answers {ticket.ref}: «{text}»")

    received = 0

    async def customer_receives() -> str:
        nonlocal received
        received += 1
        got = (await channel.next_received(received, STEP_TIMEOUT_S))[received - 1]
        say("customer", f"{got.to} receives on {got.channel} [{got.ticket_ref}]: «{got.text}»")
        return got.text

    first = InboundMessage(ChannelKind.LOOPBACK, "loop-1", sara, "سلام، سفارش ۱۲۳۴ من هنوز نرسیده. کی می‌رسد؟",
                           sender_name="سارا احمدی", subject="پیگیری سفارش ۱۲۳۴", language="fa")
    opened = await customer(first)
    say("provider", "delivers the same message again (a retry after a lost acknowledgement)")
    await customer(first)
    await agent_answers("سلام سارا جان، سفارش شما فردا تحویل می‌شود.")
    await customer_receives()

    first_answer = channel.receipts[-1].thread_key
    thanks = await customer(InboundMessage(ChannelKind.LOOPBACK, "loop-2", sara, "ممنون! آدرس هم درست است.",
                                           in_reply_to=(first_answer,)))
    await desk.next()  # the agents see the thank-you; nothing to answer
    await tickets.set_status(thanks.ticket_id, TicketStatus.RESOLVED, actor="agent:demo")
    say("agent", f"resolves {opened.ticket_ref}; the customer is told, and asked for a score")
    await customer_receives()
    await customer(InboundMessage(ChannelKind.LOOPBACK, "loop-2b", sara, "۵، عالی بود", in_reply_to=(first_answer,)))
    await customer_receives()
    say("workflow", f"the score went on {opened.ticket_ref}, which stays {await _status(runtime, opened.ticket_id)}")

    await customer(InboundMessage(ChannelKind.LOOPBACK, "loop-3", john, "Hi, the app logs me out every hour.",
                                  sender_name="John", language="en"))
    channel.fail_next_send(TransientError("provider busy (HTTP 503)", retry_after=0.5))
    say("provider", "will refuse the next send once with HTTP 503, Retry-After: 0.5 s")
    await agent_answers("Thanks John, we are on it: please update to version 2.4.1.")
    await customer_receives()
    say("gateway", f"that reply was sent on attempt {channel.received[-1].attempt} after the failure")

    await customer(InboundMessage(ChannelKind.LOOPBACK, "loop-4", sara, "ببخشید، بسته هنوز نرسیده!",
                                  in_reply_to=(first_answer,)))
    await agent_answers("عذرخواهی می‌کنیم؛ پیک امروز ساعت ۱۶ می‌رسد.")
    await customer_receives()
    await tickets.set_status(opened.ticket_id, TicketStatus.CLOSED, actor="agent:demo")
    say("agent", f"closes {opened.ticket_ref}")

    await customer(InboundMessage(ChannelKind.LOOPBACK, "loop-5", sara_phone,
                                  "سلام، برای سفارش جدید سؤال دارم.", also_known_as=(sara,)))
    await agent_answers("بفرمایید، در خدمتیم.")
    await customer_receives()


async def _status(runtime, ticket_id: int) -> str:  # noqa: ANN001
    import sqlalchemy as sa

    from gateway.schema import tickets

    async with runtime.db.read() as conn:
        row = (await conn.execute(sa.select(tickets.c.status, tickets.c.csat_score).where(
            tickets.c.id == ticket_id))).one()
    return f"{row.status} (satisfaction {row.csat_score}/5)"


class EmailDemo:
    """The demo's mail provider: the support mailbox (IMAP) and the customers' mail servers (SMTP)."""

    ADDRESS = "support@kartabl.example"

    def __init__(self) -> None:
        from channels.email.standin import StandInImap, StandInSmtp  # the composition side may import channels

        self.imap = StandInImap(self.ADDRESS, "demo-password")
        self.smtp = StandInSmtp(self._arrived)
        self.inboxes: asyncio.Queue[EmailMessage] = asyncio.Queue()

    async def start(self) -> None:
        await self.imap.start()
        await self.smtp.start()

    async def stop(self) -> None:
        await self.imap.stop()
        await self.smtp.stop()

    def settings(self) -> EmailSettings:
        from channels.email.settings import EmailSettings

        return EmailSettings(
            enabled=True, address=self.ADDRESS, display_name="پشتیبانی کارتابل",
            imap_host="127.0.0.1", imap_port=self.imap.port, imap_security="none",
            imap_password=Secret("demo-password"), smtp_host="127.0.0.1", smtp_port=self.smtp.port,
            smtp_security="none", timeout=5.0)

    def _arrived(self, message: EmailMessage) -> None:
        self.inboxes.put_nowait(message)

    async def received(self) -> EmailMessage:
        return await asyncio.wait_for(self.inboxes.get(), STEP_TIMEOUT_S)


def _mail(sender: str, subject: str, body: str, *, reply_to: EmailMessage | None = None,
          headers: dict[str, str] | None = None) -> bytes:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = EmailDemo.ADDRESS
    mail["Subject"] = subject
    mail["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    mail["Message-ID"] = email.utils.make_msgid(domain="mail.example.ir")
    if reply_to is not None:
        mail["In-Reply-To"] = reply_to["Message-ID"]
        mail["References"] = f"{reply_to.get('References', '')} {reply_to['Message-ID']}".strip()
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.set_content(body)
    return mail.as_bytes(policy=email.policy.SMTP)


async def _email_scenario(runtime, mail: EmailDemo, desk: ScriptedDesk, say: Transcript) -> None:  # noqa: ANN001
    tickets = runtime.tickets
    maryam = "مریم رضایی <maryam@mail.example.ir>"

    def customer_writes(raw: bytes, what: str) -> None:
        mail.imap.deliver(raw)
        say("customer", f"maryam@mail.example.ir emails the support mailbox: {what}")

    async def customer_gets(what: str) -> EmailMessage:
        got = await mail.received()
        say("customer", f"{what} arrives: «{got['Subject']}»")
        for name in ("Message-ID", "In-Reply-To", "Auto-Submitted"):
            if got[name]:
                say("", f"  {name}: {got[name]}")
        return got

    customer_writes(_mail(maryam, "فاکتور سفارش ۵۵۱",
                          "سلام، فاکتور سفارش ۵۵۱ را برایم بفرستید.\n\n-- \nمریم رضایی\nموبایل: ۰۹۱۲ ۳۴۵ ۶۷۸۹"),
                    "«فاکتور سفارش ۵۵۱»")
    ticket, message = await desk.next()
    say("gateway", f"IMAP IDLE pushed it; stored as {ticket.ref} and flagged \\Seen only after the commit")
    say("workflow", f"{ticket.ref} routed by {await _routing(runtime, ticket.id)}")
    say("desk", f"{ticket.ref} from {', '.join(ticket.customer_addresses)}: «{message.text}» "
                "(signature stripped for the agents)")
    await customer_gets("the acknowledgement")
    await tickets.reply(ticket.id, "سلام مریم خانم، فاکتور پیوست شد و به ایمیلتان هم ارسال شد.", agent_id=None)
    say("agent", f"answers {ticket.ref} from the desk")
    answer = await customer_gets("the agent's answer")

    customer_writes(_mail(maryam, f"Re: {answer['Subject']}",
                          "ممنون، رسید.\n\nدر تاریخ پنجشنبه ۱ آذر ۱۴۰۵ پشتیبانی <support@kartabl.example> نوشت:\n"
                          "> سلام مریم خانم، فاکتور پیوست شد.", reply_to=answer),
                    "a reply to that answer, quoting it")
    again, message = await desk.next()
    say("desk", f"threaded onto {again.ref} by In-Reply-To; the agents see «{message.text}» "
                "(the quoted history is kept in the stored original)")
    robot = "Office Robot <robot@partner.example>"
    mail.imap.deliver(_mail(robot, "Automatic reply: out of office", "I am away until Saturday.",
                            headers={"Auto-Submitted": "auto-replied"}))
    say("customer", "robot@partner.example sends an out-of-office auto-reply")
    ticket, _ = await desk.next()
    why = await _suppressed(runtime, ticket.id)
    say("gateway", f"stored as {ticket.ref}, marked automatic; its acknowledgement was not sent: {why}")


class TelegramDemo:
    """The demo's Telegram: the Bot API stand-in, a customer's private chat and the agents' forum group."""

    TOKEN = "100200:demo-token"
    DESK = -100777
    SPEEDUP = 20.0  # Telegram's limits, on both sides, run this many times faster in the demo

    def __init__(self) -> None:
        from channels.telegram.standin import Limits, StandInTelegram, User

        self.agent = User(9001, "رضا", username="reza")
        self.customer = User(731002, "علی", "کریمی", language_code="fa")
        self.server = StandInTelegram(self.TOKEN, limits=Limits(
            per_chat_window=1.0 / self.SPEEDUP, per_group_window=60.0 / self.SPEEDUP))

    async def start(self) -> None:
        await self.server.start()
        self.server.add_chat(self.DESK, type="supergroup", title="میز پشتیبانی", is_forum=True)
        self.server.set_member(self.DESK, self.agent, "member")

    async def stop(self) -> None:
        await self.server.stop()

    def settings(self):  # noqa: ANN201 (TelegramSettings, imported lazily)
        from channels.telegram.settings import TelegramSettings

        return TelegramSettings(
            enabled=True, token=Secret(self.TOKEN), agents_chat_id=self.DESK, base_url=self.server.base_url,
            base_file_url=self.server.base_file_url, poll_timeout=1.0, chat_interval=1.0 / self.SPEEDUP,
            group_window=60.0 / self.SPEEDUP, timeout=5.0)

    async def sent(self, predicate, what: str):  # noqa: ANN001, ANN201
        """The first message the bot sent that `predicate` accepts (`what` names it in a timeout)."""
        try:
            return await self.server.wait_sent(predicate, STEP_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"the demo's Telegram never saw the {what}") from None


async def _telegram_scenario(runtime, bot: TelegramDemo, desk: ScriptedDesk, say: Transcript) -> None:  # noqa: ANN001
    ali, server = bot.customer, bot.server
    in_group = lambda s: s.chat_id == bot.DESK  # noqa: E731
    to_ali = lambda s: s.chat_id == ali.id  # noqa: E731

    server.customer_text(ali, "/start")
    say("customer", "علی starts the bot on Telegram (/start, app language fa)")
    hello = await bot.sent(to_ali, "greeting")
    say("bot", f"greets him: «{hello.text.splitlines()[0]}»")

    server.customer_text(ali, "سلام، <b>سفارش ۷۸۹</b> کی می‌رسد؟ & کد تخفیف؟")
    say("customer", "علی writes: «سلام، <b>سفارش ۷۸۹</b> کی می‌رسد؟ & کد تخفیف؟»")
    ticket, _ = await desk.next()
    card = await bot.sent(lambda s: in_group(s) and s.reply_markup is not None and s.text.startswith(ticket.ref),
                          "card")
    say("group", f"{ticket.ref} gets its own topic; its card: «{' | '.join(card.text.splitlines())}»")
    posted = await bot.sent(lambda s: in_group(s) and s.thread_id == card.thread_id and s.reply_markup is None, "post")
    say("group", f"his message in the topic, shown literally (no markup): «{posted.text.splitlines()[-1]}»")
    ack = await bot.sent(lambda s: to_ali(s) and ticket.ref in s.text, "acknowledgement")
    say("customer", f"receives the acknowledgement: «{ack.text.splitlines()[1]}»")

    server.group_text(bot.DESK, bot.agent, "سلام علی جان، سفارش ۷۸۹ فردا تحویل می‌شود. کد تخفیف: BAHAR", thread_id=card.thread_id)
    say("agent", "رضا answers in the topic of " + ticket.ref)
    answer = await bot.sent(lambda s: to_ali(s) and "BAHAR" in s.text, "answer")
    say("customer", f"receives it on Telegram: «{answer.text}»")
    server.group_text(bot.DESK, bot.agent, "/close", thread_id=card.thread_id)
    done = await bot.sent(lambda s: in_group(s) and s.thread_id == card.thread_id and "closed" in s.text, "close")
    say("group", f"رضا: /close -> «{done.text}»")


class SmsDemo:
    """The demo's Kavenegar: the HTTPS stand-in with its own CA, calling the gateway back as Kavenegar does."""

    API_KEY = "DEMO-KAVENEGAR-KEY"
    SECRET = "demo-callback-secret-2026"

    def __init__(self) -> None:
        from channels.sms.standin import StandInKavenegar

        self.server = StandInKavenegar(self.API_KEY, deliver_after=0.3)
        self._bundle: str | None = None

    async def start(self) -> None:
        await self.server.start()
        # The kavenegar package speaks HTTPS through requests, which trusts the stand-in's CA this way.
        self._bundle = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = self.server.ca_path

    def call_back(self, port: int | None) -> None:
        base = f"http://127.0.0.1:{port}/webhooks/kavenegar/{self.SECRET}"
        self.server.callback_url, self.server.delivery_url = f"{base}/inbound", f"{base}/delivery"

    async def stop(self) -> None:
        await self.server.stop()
        if self._bundle is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = self._bundle

    def settings(self):  # noqa: ANN201 (SmsSettings, imported lazily)
        from channels.sms.settings import SmsSettings

        return SmsSettings(enabled=True, api_key=Secret(self.API_KEY), sender=self.server.line,
                           api_host=self.server.host, callback_secret=Secret(self.SECRET), max_parts=2, timeout=5.0)


async def _sms_scenario(runtime, sms: SmsDemo, desk: ScriptedDesk, say: Transcript) -> None:  # noqa: ANN001
    server = sms.server
    server.customer_sms("۰۹۱۲-۳۴۵-۶۷۸۹", "سلام، فاکتور ۵۵۱ را گرفتم ولی مبلغش اشتباه است.")
    say("customer", "Maryam texts the company's line from ۰۹۱۲-۳۴۵-۶۷۸۹: «فاکتور ۵۵۱ ... مبلغش اشتباه است»")
    ticket, _ = await desk.next()
    earlier = ", ".join(f"{e.ref} ({e.channel})" for e in ticket.earlier)
    say("gateway", f"Kavenegar's callback answered 200 once stored as {ticket.ref}; the number, +989123456789, was "
                   f"in her email signature, so she is recognised: {ticket.customer_name}, earlier: {earlier}")
    await runtime.tickets.reply(ticket.id, "سلام مریم خانم، حق با شماست. مبلغ فاکتور ۵۵۱ اصلاح شد و فاکتور جدید "
                                           "همین امروز صادر می‌شود. مابه‌التفاوت تا پایان هفته به حساب شما برمی‌گردد. "
                                           "اگر سؤال دیگری دارید همین‌جا بنویسید؛ در خدمتیم. با سپاس، پشتیبانی", agent_id=None)
    say("agent", f"answers {ticket.ref} at length")
    # Outside Tehran's business hours the example rules first send the after-hours note; then the answer.
    for n in range(1, 3):
        try:
            sent = (await server.wait_sent(n, STEP_TIMEOUT_S))[-1]
        except TimeoutError:
            raise TimeoutError("the demo's Kavenegar never got the SMS answer") from None
        if sent.message.startswith("سلام مریم"):
            break
        say("customer", f"first receives the after-hours note, in one SMS: «{sent.message}»")
    say("customer", f"receives the answer in one SMS of {sent.parts} parts, from line {sent.sender}, shortened "
                    f"with the reference: «{sent.message}»")
    state = await _delivery(runtime, str(sent.messageid))
    say("gateway", f"Kavenegar's delivery report: {state}")


async def _delivery(runtime, provider_id: str) -> str:  # noqa: ANN001
    """The delivery state of the message the provider knows as `provider_id`, once it has a report."""
    import sqlalchemy as sa

    from gateway.schema import messages

    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        async with runtime.db.read() as conn:
            state = (await conn.execute(sa.select(messages.c.delivery_state).where(
                messages.c.provider_id == provider_id))).scalar()
        if state not in (None, "pending", "sent"):
            return state
        await asyncio.sleep(0.05)
    raise TimeoutError("no delivery report for the SMS answer")


async def _routing(runtime, ticket_id: int) -> str:  # noqa: ANN001
    """The rules that fired on a ticket and where it went, from its event log."""
    import sqlalchemy as sa

    from gateway.schema import events

    async with runtime.db.read() as conn:
        rows = (await conn.execute(sa.select(events.c.kind, events.c.data).where(
            events.c.ticket_id == ticket_id, events.c.kind.in_(["rule.fired", "ticket.routed"]))
            .order_by(events.c.id))).all()
    fired = [f"«{data['rule']}»" for kind, data in rows if kind == "rule.fired"]
    routed = next((data for kind, data in rows if kind == "ticket.routed"), {})
    return (f"the rules {', '.join(fired) or '(none)'}: department {routed.get('department')}, priority "
            f"{routed.get('priority')}, tags {', '.join(routed.get('tags') or []) or '-'}, "
            f"{'replies reviewed by a lead' if routed.get('review') else 'no review'}")


async def _suppressed(runtime, ticket_id: int) -> str:  # noqa: ANN001
    """Why the gateway held back the automatic answer to this ticket, once it has decided."""
    import sqlalchemy as sa

    from gateway.schema import events

    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        async with runtime.db.read() as conn:
            data = (await conn.execute(sa.select(events.c.data).where(
                events.c.ticket_id == ticket_id, events.c.kind == "autoreply.suppressed"))).scalar()
        if data is not None:
            return data["reason"]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no decision on the automatic answer to ticket {ticket_id}")


async def _settled(runtime) -> tuple[bool, dict]:  # noqa: ANN001
    """Health once the due jobs finished (a reply is received a moment before its job is done)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        ok, health = await runtime.health()
        if not ok or health["queue"]["due"] == 0 or time.monotonic() > deadline:
            return ok, health
        await asyncio.sleep(0.05)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback server
        return json.dumps(json.loads(response.read()), ensure_ascii=False)
