"""The email channel end to end: a private Dovecot as the support mailbox, an aiosmtpd sink as the customers'
mail servers, the real gateway in between."""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import email.utils
import os
import signal
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from channels.email.channel import EmailChannel
from channels.email.settings import EmailSettings
from gateway.compose import build_runtime
from gateway.domain import ChannelKind, DeliveryState, Direction, TicketStatus
from gateway.errors import SettingsError
from gateway.schema import events, messages, quarantine, tickets
from gateway.settings import AutoReplySettings, HttpSettings, Secret
from tests.conftest import Gateway, RecordingDesk, eventually, make_settings
from tests.servers.dovecot import Dovecot
from tests.servers.smtp_sink import SmtpSink

SUPPORT = "support@kartabl.test"
SARA = "سارا احمدی <sara@example.ir>"


def mail(subject: str, body: str, *, sender: str = SARA, message_id: str | None = None,
         reply_to: EmailMessage | None = None, headers: dict[str, str] | None = None) -> bytes:
    """A customer's message as their mail client would write it."""
    out = EmailMessage()
    out["From"] = sender
    out["To"] = SUPPORT
    out["Subject"] = subject
    out["Date"] = email.utils.format_datetime(email.utils.localtime())
    out["Message-ID"] = message_id or email.utils.make_msgid(domain="example.ir")
    if reply_to is not None:
        out["In-Reply-To"] = reply_to["Message-ID"]
        out["References"] = f"{reply_to.get('References', '')} {reply_to['Message-ID']}".strip()
    for name, value in (headers or {}).items():
        out[name] = value
    out.set_content(body)
    return out.as_bytes(policy=email.policy.SMTP)


def email_settings(dovecot: Dovecot, sink: SmtpSink, **overrides: Any) -> EmailSettings:
    values: dict[str, Any] = dict(
        enabled=True, address=SUPPORT, imap_host=dovecot.host, imap_port=dovecot.port, imap_security="none",
        imap_user=dovecot.user, imap_password=Secret(dovecot.password), smtp_host=sink.host,
        smtp_port=sink.port, smtp_security="none", timeout=5.0, reconcile_interval=60.0,
        parse_workers=0)  # the tests of a backlog turn them on: each would be two more processes to start
    values.update(overrides)
    return EmailSettings(**values)


@dataclasses.dataclass
class MailGateway(Gateway):
    email: EmailChannel

    async def ticket_of(self, message_id: str) -> int:
        async def find() -> Any:
            return await self.scalar(sa.select(messages.c.ticket_id).where(
                messages.c.provider_id == message_id.strip("<>"), messages.c.direction == Direction.INBOUND))
        return await eventually(find, lambda t: t is not None)


@pytest.fixture
async def start_mail_gateway(db_url: str, tmp_path: Path, dovecot: Dovecot,
                             smtp_sink: SmtpSink) -> AsyncIterator[Callable[..., Any]]:
    started = []

    async def start(*, sections: dict[str, Any] | None = None, server: Dovecot | None = None,
                    **overrides: Any) -> MailGateway:
        cfg = email_settings(server or dovecot, smtp_sink, **overrides)
        channel, desk = EmailChannel(cfg), RecordingDesk()
        settings = make_settings(db_url, tmp_path, channels={"email": cfg}, **(sections or {}))
        runtime = build_runtime(settings, channels={ChannelKind.EMAIL: channel}, desks=[desk])
        await runtime.start()
        started.append(runtime)
        return MailGateway(runtime, None, desk, channel)  # type: ignore[arg-type]

    yield start
    for runtime in started:
        if runtime.running:
            await runtime.stop()


async def test_idle_push_makes_a_ticket_flags_the_mail_and_acknowledges_in_the_thread(
        start_mail_gateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway()
    dovecot.deliver(mail("سفارش ۱۲۳۴ نرسیده", "سلام، سفارش ۱۲۳۴ من هنوز نرسیده.\n\n-- \nسارا",
                         message_id="<order-1234@example.ir>"))

    ticket, shown = await gw.desk.next()
    assert shown.text == "سلام، سفارش ۱۲۳۴ من هنوز نرسیده."  # the signature is not in the agents' view
    assert ticket.subject == "سفارش ۱۲۳۴ نرسیده"
    assert ticket.customer_addresses == ("email:sara@example.ir",)
    assert ticket.customer_name == "سارا احمدی"
    assert await eventually(lambda: _flags(dovecot), lambda f: f and all("\\Seen" in s for s in f.values()))

    (ack,) = await smtp_sink.wait_for(1)
    assert ack.rcpt_tos == ("sara@example.ir",) and ack.mail_from == SUPPORT
    assert ack.message["Subject"] == f"Re: سفارش ۱۲۳۴ نرسیده [{ticket.ref}]"
    assert ack.message["In-Reply-To"] == "<order-1234@example.ir>"
    assert ack.message["Auto-Submitted"] == "auto-replied"
    assert ack.message["Message-ID"].endswith("@kartabl.test>")
    assert ticket.ref in ack.message.get_body(("plain",)).get_content()
    html = ack.message.get_body(("html",)).get_content()
    assert 'dir="rtl"' in html


async def test_replies_thread_both_ways(start_mail_gateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway(acknowledge=False)
    dovecot.deliver(mail("Login problem", "I cannot log in since yesterday.", message_id="<first@example.ir>"))
    ticket, _ = await gw.desk.next()
    await gw.runtime.tickets.reply(ticket.id, "لطفاً رمز عبور را بازنشانی کنید.")

    (answer,) = await smtp_sink.wait_for(1)
    assert answer.message["Subject"] == f"Re: Login problem [{ticket.ref}]"
    assert answer.message["In-Reply-To"] == "<first@example.ir>"
    assert answer.message["References"] == "<first@example.ir>"
    assert "Auto-Submitted" not in answer.message
    assert answer.message.get_body(("plain",)).get_content().strip() == "لطفاً رمز عبور را بازنشانی کنید."

    # The customer answers our answer, quoting it, from another address: it still lands on the ticket.
    reply = mail(f"Re: {answer.message['Subject']}",
                 "انجام دادم، درست شد.\n\nدر تاریخ ۱ آذر ۱۴۰۵ پشتیبانی <support@kartabl.test> نوشت:\n"
                 "> لطفاً رمز عبور را بازنشانی کنید.", sender="Sara <sara.work@example.ir>", reply_to=answer.message)
    dovecot.deliver(reply)
    again, shown = await gw.desk.next()
    assert again.id == ticket.id
    assert shown.text == "انجام دادم، درست شد."
    await gw.runtime.tickets.reply(ticket.id, "Glad it works.")
    second = (await smtp_sink.wait_for(2))[1]
    refs = second.message["References"].split()
    assert refs[0] == "<first@example.ir>" and answer.message["Message-ID"] in refs
    assert second.message["In-Reply-To"] == email.message_from_bytes(reply)["Message-ID"]


async def test_the_ticket_reference_in_the_subject_picks_the_ticket(start_mail_gateway, dovecot: Dovecot) -> None:
    gw = await start_mail_gateway(acknowledge=False)
    dovecot.deliver(mail("Invoice", "Please send the invoice."))
    invoice, _ = await gw.desk.next()
    await gw.runtime.tickets.set_status(invoice.id, TicketStatus.CLOSED)
    dovecot.deliver(mail("Another question", "New topic."))
    other, _ = await gw.desk.next()
    assert other.id != invoice.id
    await gw.runtime.tickets.set_status(invoice.id, TicketStatus.RESOLVED)  # an agent took it back up

    # Without headers, the customer's newest live ticket would get it; the quoted reference wins.
    dovecot.deliver(mail(f"about [{invoice.ref}] again", "The invoice had a typo."))
    again, _ = await gw.desk.next()
    assert again.id == invoice.id and again.status == TicketStatus.OPEN
    dovecot.deliver(mail("no reference", "and one more thing"))
    latest, _ = await gw.desk.next()
    assert latest.id == other.id


LOOPS = {
    "auto-submitted": {"Auto-Submitted": "auto-replied"},
    "precedence bulk": {"Precedence": "bulk"},
    "precedence list": {"Precedence": "list"},
    "list-id": {"List-Id": "<news.example.ir>"},
    "list-unsubscribe": {"List-Unsubscribe": "<mailto:leave@example.ir>"},
    "x-loop": {"X-Loop": "helpdesk@example.ir"},
    "x-auto-response-suppress": {"X-Auto-Response-Suppress": "All"},
    "empty return-path": {"Return-Path": "<>"},
    "our own message-id": {},
}


@pytest.mark.parametrize("case", list(LOOPS))
async def test_automatic_mail_is_stored_but_never_answered(case: str, start_mail_gateway, dovecot: Dovecot,
                                                           smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway()
    message_id = "<kartabl-99.T-1099@kartabl.test>" if case == "our own message-id" else None
    dovecot.deliver(mail("Out of office", "I am away.", message_id=message_id, headers=LOOPS[case],
                         sender="robot@example.ir"))
    ticket, shown = await gw.desk.next()
    # A person writing afterwards is acknowledged, so the robot's silence is not a broken outbox.
    dovecot.deliver(mail("Help", "A real question.", sender="person@example.ir"))
    await gw.desk.next()
    (ack,) = await smtp_sink.wait_for(1)
    assert ack.rcpt_tos == ("person@example.ir",)
    assert await gw.scalar(sa.select(messages.c.automatic).where(messages.c.id == shown.id)) is True
    assert await gw.count(events, events.c.kind == "autoreply.suppressed", events.c.ticket_id == ticket.id) == 1
    assert len(smtp_sink.received) == 1


async def test_a_bounce_of_our_reply_marks_it_failed_on_its_ticket(start_mail_gateway, dovecot: Dovecot,
                                                                    smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway(acknowledge=False)
    dovecot.deliver(mail("Question", "Hello?", sender="gone@example.ir"))
    ticket, _ = await gw.desk.next()
    reply_id = await gw.runtime.tickets.reply(ticket.id, "Here is the answer.")
    (sent,) = await smtp_sink.wait_for(1)
    await eventually(lambda: _state(gw, reply_id), lambda s: s == DeliveryState.SENT)

    dovecot.deliver(_bounce(sent.message["Message-ID"], "gone@example.ir"))
    bounced, shown = await gw.desk.next()
    assert bounced.id == ticket.id  # the report is on the reply's ticket, where the agents see it
    assert "550" in shown.text
    assert await eventually(lambda: _state(gw, reply_id), lambda s: s == DeliveryState.FAILED)
    error = await gw.scalar(sa.select(messages.c.delivery_error).where(messages.c.id == reply_id))
    assert "5.1.1" in error
    assert await gw.count(events, events.c.kind == "message.failed", events.c.ticket_id == ticket.id) == 1
    told, line = await asyncio.wait_for(gw.desk.said.get(), 10)  # and the agents are told where they work
    assert told == ticket.id and "was not delivered" in line and "5.1.1" in line
    assert len(smtp_sink.received) == 1  # and nothing answered the bounce


async def test_automatic_replies_are_capped_per_customer_per_day(start_mail_gateway, dovecot: Dovecot,
                                                                 smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway(sections={"autoreply": AutoReplySettings(daily_cap_per_sender=1)})
    dovecot.deliver(mail("First", "one"))
    first, _ = await gw.desk.next()
    await smtp_sink.wait_for(1)
    await gw.runtime.tickets.set_status(first.id, TicketStatus.CLOSED)
    dovecot.deliver(mail("Second", "two"))
    second, _ = await gw.desk.next()
    assert second.id != first.id
    await eventually(lambda: gw.count(events, events.c.kind == "autoreply.suppressed",
                                      events.c.ticket_id == second.id), lambda n: n == 1)
    assert len(smtp_sink.received) == 1


async def test_restart_mid_mailbox_loses_nothing_and_duplicates_nothing(start_mail_gateway,
                                                                        dovecot: Dovecot) -> None:
    for n in range(40):
        dovecot.deliver(mail(f"Message {n}", f"body {n}", sender=f"c{n % 7}@example.ir",
                             message_id=f"<m{n}@example.ir>"))
    gw = await start_mail_gateway(acknowledge=False, fetch_batch=5)
    await eventually(lambda: gw.count(messages), lambda n: n >= 10)
    await gw.runtime.stop()
    # A crash after the commit but before the flag: the mail is stored but still unread on the server.
    with dovecot.session() as imap:
        imap.select("INBOX")
        imap.uid("STORE", "1:5", "-FLAGS.SILENT", "(\\Seen)")

    again = await start_mail_gateway(acknowledge=False, fetch_batch=5)
    await eventually(lambda: again.count(messages), lambda n: n == 40)
    await eventually(lambda: _flags(dovecot), lambda f: len(f) == 40 and all("\\Seen" in s for s in f.values()))
    ids = [r[0] for r in await again.rows(sa.select(messages.c.provider_id))]
    assert sorted(ids) == sorted(f"m{n}@example.ir" for n in range(40))


async def test_a_backlog_is_parsed_by_worker_processes_and_a_killed_one_loses_nothing(start_mail_gateway,
                                                                                      dovecot: Dovecot) -> None:
    gw = await start_mail_gateway(acknowledge=False, parse_workers=2, fetch_batch=100)
    assert await gw.email.parsers.wait_started()
    for n in range(150):
        dovecot.deliver(mail(f"سفارش {n}", f"متن {n}", sender=f"c{n % 11}@example.ir", message_id=f"<b{n}@example.ir>"))
    await eventually(lambda: gw.count(messages), lambda n: n == 150)
    # Batches of 25 (the first), 100 and 25, in parts of at least 32: the 100 go to the processes.
    assert gw.email.parsers.in_processes >= 64

    # A worker killed (out of memory, say): its batch is parsed in the thread, and the next gets new workers.
    for worker in gw.email.parsers._pool:
        worker.process.kill()
    for n in range(150, 300):
        dovecot.deliver(mail(f"سفارش {n}", f"متن {n}", sender=f"c{n % 11}@example.ir", message_id=f"<b{n}@example.ir>"))
    await eventually(lambda: gw.count(messages), lambda n: n == 300)
    ids = [r[0] for r in await gw.rows(sa.select(messages.c.provider_id))]
    assert sorted(ids) == sorted(f"b{n}@example.ir" for n in range(300))
    assert (await gw.rows(sa.select(messages.c.text).where(messages.c.provider_id == "b299@example.ir")))[0][0] == "متن 299"


async def test_a_frozen_parser_process_is_replaced_and_its_batch_parsed_in_the_thread(
        start_mail_gateway, dovecot: Dovecot, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_mail_gateway(acknowledge=False, parse_workers=2, fetch_batch=100)
    assert await gw.email.parsers.wait_started()
    frozen = [worker.process for worker in gw.email.parsers._pool]
    for process in frozen:  # stopped, as a frozen cgroup or a lost pipe leaves them: alive, never answering
        os.kill(process.pid, signal.SIGSTOP)
    gw.email.parsers.answer_within = 1.0
    for n in range(100):
        dovecot.deliver(mail(f"سفارش {n}", f"متن {n}", sender=f"f{n % 7}@example.ir", message_id=f"<f{n}@example.ir>"))
    await eventually(lambda: gw.count(messages), lambda n: n == 100, timeout=30)
    ids = [r[0] for r in await gw.rows(sa.select(messages.c.provider_id))]
    assert sorted(ids) == sorted(f"f{n}@example.ir" for n in range(100))
    assert "gave no answer in" in caplog.text
    for process in frozen:  # killed, not left behind stopped
        assert await asyncio.wait_for(process.wait(), 5) is not None


async def test_a_new_uidvalidity_reads_again_without_duplicates(start_mail_gateway, dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.deliver(mail(f"Message {n}", "body", message_id=f"<v{n}@example.ir>"))
    gw = await start_mail_gateway(acknowledge=False)
    await eventually(lambda: gw.count(messages), lambda n: n == 3)
    await gw.runtime.stop()
    before = dovecot.uidvalidity()
    dovecot.reset_uidvalidity()
    with dovecot.session() as imap:  # the server forgot what was read, as a rebuilt mailbox does
        imap.select("INBOX")
        imap.uid("STORE", "1:*", "-FLAGS.SILENT", "(\\Seen)")
    dovecot.deliver(mail("After the change", "new", message_id="<v3@example.ir>"))
    assert dovecot.uidvalidity() != before

    again = await start_mail_gateway(acknowledge=False)
    await eventually(lambda: _flags(dovecot), lambda f: len(f) == 4 and all("\\Seen" in s for s in f.values()))
    assert await again.count(messages) == 4


async def test_unreadable_mail_goes_to_quarantine_and_the_mailbox_goes_on(start_mail_gateway,
                                                                          dovecot: Dovecot) -> None:
    gw = await start_mail_gateway(acknowledge=False)
    dovecot.deliver(b"Subject: no sender at all\r\nMessage-ID: <x@example.ir>\r\n\r\nwho am I?\r\n")
    dovecot.deliver(mail("After it", "still read"))
    _, shown = await gw.desk.next()
    assert shown.text == "still read"
    row = (await eventually(lambda: gw.rows(sa.select(quarantine.c.channel, quarantine.c.source,
                                                      quarantine.c.reason, quarantine.c.raw))))[0]
    assert row.channel == "email" and "uid 1" in row.source
    assert b"who am I?" in row.raw
    await eventually(lambda: _flags(dovecot), lambda f: len(f) == 2 and all("\\Seen" in s for s in f.values()))


async def test_moved_to_a_folder_after_the_commit(start_mail_gateway, dovecot: Dovecot) -> None:
    dovecot.create_folder("Handled")
    gw = await start_mail_gateway(acknowledge=False, move_to="Handled")
    dovecot.deliver(mail("Move me", "please"))
    await gw.desk.next()
    await eventually(lambda: _flags(dovecot, "Handled"), lambda f: len(f) == 1)
    assert dovecot.messages() == {}


async def test_without_idle_the_mailbox_is_polled(start_mail_gateway, dovecot_factory) -> None:
    server = dovecot_factory(idle_notify=False)
    gw = await start_mail_gateway(server=server, acknowledge=False, poll_interval=0.5)
    server.deliver(mail("Polled", "found by polling"))
    _, shown = await gw.desk.next()
    assert shown.text == "found by polling"
    assert gw.email.mailbox.state == "polling"


async def test_a_dropped_connection_is_reopened_and_nothing_missed(start_mail_gateway, dovecot: Dovecot) -> None:
    gw = await start_mail_gateway(acknowledge=False)
    dovecot.deliver(mail("Before", "one"))
    await gw.desk.next()
    dovecot.stop()
    _, health = await eventually(gw.runtime.health, lambda h: h[1]["channels"]["email"]["state"] != "running")
    assert health["status"] == "degraded" and health["channels"]["email"]["state"] == "reconnecting"
    assert "Connection refused" in health["channels"]["email"]["last_error"] or \
        "closed the connection" in health["channels"]["email"]["last_error"]
    dovecot.start()  # same port; our IDLE connection is gone
    dovecot.deliver(mail("During", "two"))
    _, shown = await gw.desk.next(timeout=20)
    assert shown.text == "two"
    _, health = await gw.runtime.health()
    assert health["status"] == "ok" and health["channels"]["email"]["mailbox"] == "idle"


async def test_tls_to_the_imap_server(start_mail_gateway, dovecot_factory, tmp_path: Path) -> None:
    server = dovecot_factory(tls=True)
    ca = server.root / "tls" / "ca.pem"  # the instance's own CA, as a self-hosted server's would be
    gw = await start_mail_gateway(server=server, acknowledge=False, imap_security="ssl", ca_file=str(ca))
    server.deliver(mail("Over TLS", "secret stuff"))
    _, shown = await gw.desk.next()
    assert shown.text == "secret stuff"


async def test_smtp_failures_mean_what_they_say(start_mail_gateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    gw = await start_mail_gateway(acknowledge=False, timeout=1.0)
    dovecot.deliver(mail("A", "a", sender="a@example.ir"))
    dovecot.deliver(mail("B", "b", sender="b@example.ir"))
    dovecot.deliver(mail("C", "c", sender="c@example.ir"))
    shown = {t.reply_to: t for t, _ in [await gw.desk.next() for _ in range(3)]}

    smtp_sink.fail_next("rcpt", 451, "4.7.1 Greylisted, try again later")
    retried = await gw.runtime.tickets.reply(shown["email:a@example.ir"].id, "to a, after a 4xx")
    assert await eventually(lambda: _state(gw, retried), lambda s: s == DeliveryState.SENT)
    assert await gw.scalar(sa.select(messages.c.attempts).where(messages.c.id == retried)) == 2

    smtp_sink.fail_next("rcpt", 550, "5.1.1 No such user")
    refused = await gw.runtime.tickets.reply(shown["email:a@example.ir"].id, "to a")
    assert await eventually(lambda: _state(gw, refused), lambda s: s == DeliveryState.FAILED)
    assert "550" in await gw.scalar(sa.select(messages.c.delivery_error).where(messages.c.id == refused))

    smtp_sink.hang_after_data()
    silent = await gw.runtime.tickets.reply(shown["email:b@example.ir"].id, "to b")
    assert await eventually(lambda: _state(gw, silent), lambda s: s == DeliveryState.FAILED, timeout=15)
    error = await gw.scalar(sa.select(messages.c.delivery_error).where(messages.c.id == silent))
    assert "may have been delivered" in error
    # the sink got it once and it was never sent again
    assert [r.rcpt_tos for r in smtp_sink.received] == [("a@example.ir",), ("b@example.ir",)]

    for n in range(6):
        await gw.runtime.tickets.reply(shown["email:c@example.ir"].id, f"reply {n}")
    await smtp_sink.wait_for(8)
    assert [r.message.get_body(("plain",)).get_content().strip() for r in smtp_sink.received[2:]] == \
        [f"reply {n}" for n in range(6)]
    assert len({r.session_id for r in smtp_sink.received[2:]}) == 1  # one reused connection for all six


def test_starttls_for_imap_is_refused_with_one_clear_line() -> None:
    with pytest.raises(SettingsError, match="imap_security = \"starttls\" is not supported"):
        EmailSettings(imap_security="starttls")
    with pytest.raises(SettingsError, match="only on a loopback host"):
        EmailSettings(imap_host="imap.example.ir", imap_security="none")


async def _state(gw: Gateway, message_id: int) -> str:
    return await gw.scalar(sa.select(messages.c.delivery_state).where(messages.c.id == message_id))


async def _flags(dovecot: Dovecot, folder: str = "INBOX") -> dict[int, set[str]]:
    return dovecot.messages(folder)


def _bounce(original_id: str, recipient: str) -> bytes:
    """A delivery-status report as Postfix writes it for a reply of ours that could not be delivered."""
    boundary = "B0UNCE"
    return (
        f"From: MAILER-DAEMON@mx.example.ir (Mail Delivery System)\r\n"
        f"To: {SUPPORT}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <bounce-{original_id.strip('<>')}>\r\n"
        f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\nAuto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message "
        f"could not be delivered.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.ir\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: {SUPPORT}\r\nTo: {recipient}\r\n"
        f"Message-ID: {original_id}\r\nSubject: Re: Question\r\n\r\n--{boundary}--\r\n"
    ).encode()


async def test_the_resolution_email_carries_a_survey_link_whose_page_records_one_score(
        start_mail_gateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    import httpx

    link_key = Secret("a-long-random-key-for-the-links-0001")
    gw = await start_mail_gateway(acknowledge=False, sections={"http": HttpSettings(
        enabled=True, port=0, public_url="https://support.example.ir", link_secret=link_key)})
    dovecot.deliver(mail("سفارش ۱۲۳۴ نرسیده", "سلام، سفارش ۱۲۳۴ من هنوز نرسیده."))
    ticket, _ = await gw.desk.next()
    await gw.runtime.tickets.set_status(ticket.id, TicketStatus.RESOLVED, actor="agent:1")

    (notice,) = await smtp_sink.wait_for(1)
    body = notice.message.get_body(("plain",)).get_content()
    (link,) = [word for word in body.split() if word.startswith("https://support.example.ir/survey/")]
    assert f"/survey/{ticket.ref}/" in link and link_key.reveal() not in body
    local = link.replace("https://support.example.ir", f"http://127.0.0.1:{gw.runtime.http_port}")

    async with httpx.AsyncClient() as http:
        page = await http.get(local + "?score=4")  # what a mail scanner's visit does: show, never record
        assert page.status_code == 200 and 'dir="rtl"' in page.text and "<form" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert await gw.scalar(sa.select(sa.func.count()).select_from(events).where(
            events.c.kind == "survey.answered")) == 0

        forged = local.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAA"
        assert (await http.post(forged, data={"score": "1"})).status_code == 404
        other = local.replace(ticket.ref, f"T-{int(ticket.ref[2:]) + 1}")  # a signature is for one ticket only
        assert (await http.post(other, data={"score": "1"})).status_code == 404
        assert (await http.post(local, data={"score": "9"})).status_code == 400

        thanks = await http.post(local, data={"score": "4"})
        assert thanks.status_code == 200 and "۴" in thanks.text and ticket.ref in thanks.text
        again = await http.post(local, data={"score": "1"})  # the first score stands
        assert again.status_code == 200 and "۴" in again.text

    row = (await gw.rows(sa.select(tickets.c.csat_score, tickets.c.status).where(tickets.c.id == ticket.id)))[0]
    assert (row.csat_score, row.status) == (4, TicketStatus.RESOLVED)
    (answered,) = await gw.rows(sa.select(events.c.actor, events.c.data).where(events.c.kind == "survey.answered"))
    assert answered.data == {"score": 4, "via": "link"} and answered.actor.startswith("customer:")
