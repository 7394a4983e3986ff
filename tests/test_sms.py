"""The SMS channel end to end: the real gateway and the real `kavenegar` package against a loopback HTTPS
stand-in of Kavenegar, which calls the gateway back as Kavenegar does."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import kavenegar as kavenegar_package
import pytest
import sqlalchemy as sa

from channels.email.channel import EmailChannel
from channels.sms.channel import SmsChannel
from channels.sms.client import KavenegarClient, failure
from channels.sms.settings import SmsSettings
from channels.sms.standin import StandInKavenegar
from channels.sms.text import parts
from gateway.compose import build_runtime
from gateway.domain import ChannelKind, DeliveryState, Direction
from gateway.errors import AuthError, DatabaseUnavailable, PermanentError, TransientError
from gateway.addresses import Address
from gateway.messages import InboundMessage, utcnow
from gateway.schema import addresses, jobs, messages, quarantine, tickets
from gateway.settings import HttpSettings, Secret
from tests.conftest import Gateway, RecordingDesk, eventually, make_settings
from tests.servers.smtp_sink import SmtpSink
from tests.test_email import email_settings

API_KEY = "4F6B2D-SMS-TEST-KEY-7A31"
SECRET = "cb-secret-0123456789abcdef"
SARA = "09121234567"


@dataclasses.dataclass
class SmsGateway(Gateway):
    sms: SmsChannel
    server: StandInKavenegar
    port: int

    async def ticket_of(self, provider_id: str) -> int:
        async def find() -> Any:
            return await self.scalar(sa.select(messages.c.ticket_id).where(messages.c.provider_id == provider_id))
        return await eventually(find, lambda t: t is not None)

    async def state(self, message_id: int) -> str:
        return await self.scalar(sa.select(messages.c.delivery_state).where(messages.c.id == message_id))

    def url(self, kind: str, secret: str = SECRET) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/kavenegar/{secret}/{kind}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def kavenegar(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandInKavenegar]:
    # Reports come a moment after the send, as from a real network (one that came before the gateway
    # recorded the send would be caught later by the sms/status round, not at once).
    server = StandInKavenegar(API_KEY, deliver_after=0.3)
    await server.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_path)
    yield server
    await server.stop()


@pytest.fixture
async def start_sms_gateway(db_url: str, tmp_path: Path, kavenegar: StandInKavenegar) -> AsyncIterator[Callable[..., Any]]:
    started = []

    async def start(*, callbacks: bool = True, email: Any = None, **overrides: Any) -> SmsGateway:
        port = _free_port()
        values: dict[str, Any] = dict(enabled=True, api_key=Secret(API_KEY), sender=kavenegar.line,
                                      api_host=kavenegar.host, callback_secret=Secret(SECRET), timeout=1.0)
        values.update(overrides)
        cfg = SmsSettings(**values)
        channel, desk = SmsChannel(cfg), RecordingDesk()
        channels: dict[ChannelKind, Any] = {ChannelKind.SMS: channel}
        sections: dict[str, Any] = {"sms": cfg}
        if email is not None:
            channels[ChannelKind.EMAIL], sections["email"] = EmailChannel(email), email
        settings = make_settings(db_url, tmp_path, channels=sections,
                                 http=HttpSettings(enabled=True, host="127.0.0.1", port=port))
        runtime = build_runtime(settings, channels=channels, desks=[desk])
        await runtime.start()
        started.append(runtime)
        gw = SmsGateway(runtime, None, desk, channel, kavenegar, port)  # type: ignore[arg-type]
        if callbacks:
            kavenegar.callback_url, kavenegar.delivery_url = gw.url("inbound"), gw.url("delivery")
        return gw

    yield start
    await kavenegar.stop()  # first: no callback comes in while the gateway shuts its HTTP server
    for runtime in started:
        if runtime.running:
            await runtime.stop()


@pytest.mark.parametrize("shape", ["get-query", "post-form", "post-json"])
async def test_an_sms_by_callback_becomes_a_ticket_of_the_e164_customer_and_is_answered_200_once_stored(
        start_sms_gateway, kavenegar: StandInKavenegar, shape: str) -> None:  # noqa: ANN001
    gw = await start_sms_gateway()
    kavenegar.callback_shape = shape
    message_id = kavenegar.customer_sms("۰۹۱۲-۱۲۳-۴۵۶۷", "سلام، بسته‌ام نرسیده است")

    ticket_id = await gw.ticket_of(str(message_id))
    (callback,) = await kavenegar.wait_callbacks(1)
    shown, message = await gw.desk.next()
    assert callback.status == 200 and shown.id == ticket_id
    assert message.text == "سلام، بسته‌ام نرسیده است" and shown.channel == "sms"
    assert await gw.scalar(sa.select(addresses.c.value).where(addresses.c.kind == "phone")) == "+989121234567"
    assert await gw.scalar(sa.select(tickets.c.reply_to)) == "+989121234567"


async def test_a_callback_with_a_wrong_secret_is_404_and_an_unreadable_one_is_kept_and_400(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(callbacks=False)
    async with httpx.AsyncClient() as client:
        wrong = await client.post(gw.url("inbound", "wrong-secret-0123456789"),
                                  data={"from": SARA, "to": kavenegar.line, "message": "x", "messageid": "1"})
        unreadable = await client.post(gw.url("inbound"), data={"to": kavenegar.line, "message": "بی‌شماره"})
        again = await client.get(gw.url("inbound"), params={"from": SARA, "to": kavenegar.line,
                                                            "message": "دوباره", "messageid": "77"})
        twice = await client.post(gw.url("inbound"), json={"from": SARA, "to": kavenegar.line,
                                                           "message": "دوباره", "messageid": "77"})

    assert (wrong.status_code, unreadable.status_code, again.status_code, twice.status_code) == (404, 400, 200, 200)
    assert "messageid" in unreadable.text
    kept = urllib.parse.unquote_plus((await gw.scalar(sa.select(quarantine.c.raw))).decode())
    assert await gw.count(quarantine) == 1 and "بی‌شماره" in kept
    assert await gw.count(messages) == 1  # the same messageid twice is stored once


async def test_an_agent_reply_goes_out_from_the_line_and_its_delivery_report_settles_it(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway()
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "قبض من کجاست؟")))
    reply_id = await gw.runtime.tickets.reply(ticket_id, "قبض شما امروز ارسال شد.")

    (sent,) = await kavenegar.wait_sent(1)
    assert (sent.receptor, sent.sender, sent.message, sent.localid) == (
        SARA, kavenegar.line, "قبض شما امروز ارسال شد.", str(reply_id))
    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.DELIVERED)
    assert await gw.scalar(sa.select(messages.c.provider_id).where(messages.c.id == reply_id)) == str(sent.messageid)


async def test_an_undelivered_reply_is_failed_and_told_in_the_tickets_thread(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway()
    kavenegar.set_outcome(SARA, 11)
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    reply_id = await gw.runtime.tickets.reply(ticket_id, "پاسخ")

    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.FAILED)
    told, line = await asyncio.wait_for(gw.desk.said.get(), 10)
    assert told == ticket_id and "undelivered" in line and "11" in line


async def test_delivery_states_are_asked_for_when_no_report_came(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(status_after=10, status_interval=3600)
    kavenegar.delivery_url = None  # Kavenegar never calls back
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    reply_id = await gw.runtime.tickets.reply(ticket_id, "پاسخ")
    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.SENT)

    assert await gw.sms.check_statuses() == 0  # not yet: the reply is younger than status_after
    await _age(gw, reply_id, seconds=60)
    await eventually(gw.sms.check_statuses, lambda told: told == 1)  # once the network has delivered it
    assert await gw.state(reply_id) == DeliveryState.DELIVERED
    assert sum(r.method == "sms/status" for r in kavenegar.requests) >= 1


async def _age(gw: SmsGateway, message_id: int, seconds: float) -> None:
    when = utcnow() - dt.timedelta(seconds=seconds)
    await gw.runtime.db.run_write(lambda conn: conn.execute(
        sa.update(messages).where(messages.c.id == message_id).values(sent_at=when)))


@pytest.mark.parametrize(("code", "outcome"), [(411, DeliveryState.FAILED), (412, DeliveryState.FAILED),
                                               (409, DeliveryState.SENT), (451, DeliveryState.SENT),
                                               (500, DeliveryState.SENT)])
async def test_kavenegar_errors_fail_the_message_or_retry_it(
        start_sms_gateway, kavenegar: StandInKavenegar, code: int, outcome: str) -> None:  # noqa: ANN001
    gw = await start_sms_gateway()
    kavenegar.delivery_url = None
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    kavenegar.fail_next(code)
    reply_id = await gw.runtime.tickets.reply(ticket_id, "پاسخ")

    await eventually(lambda: gw.state(reply_id), lambda s: s == outcome)
    assert len(kavenegar.sent) == (0 if outcome == DeliveryState.FAILED else 1)
    error = await gw.scalar(sa.select(messages.c.delivery_error).where(messages.c.id == reply_id))
    if outcome == DeliveryState.FAILED:
        assert f"Kavenegar {code}" in error and API_KEY not in error


async def test_no_credit_pauses_sending_tells_the_agents_once_and_the_replies_go_out_afterwards(
        start_sms_gateway, kavenegar: StandInKavenegar, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(suspend_for=10)
    kavenegar.delivery_url = None
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    kavenegar.credit = 0
    replies = [await gw.runtime.tickets.reply(ticket_id, f"پاسخ {n}") for n in range(3)]

    alert = await asyncio.wait_for(gw.desk.announced.get(), 10)
    assert "paused" in alert and "418" in alert
    _, health = await gw.runtime.health()
    assert health["status"] == "degraded" and health["channels"]["sms"]["state"] == "halted"

    kavenegar.credit = 10**9  # the operator tops up; the waiting replies are tried now rather than in 10 s
    gw.sms._halted_until = 0.01
    await gw.runtime.db.run_write(lambda conn: conn.execute(sa.update(jobs).values(due_at=utcnow())))
    gw.runtime.queue.wake()
    await kavenegar.wait_sent(3, timeout=10)

    assert [s.message for s in kavenegar.sent] == ["پاسخ 0", "پاسخ 1", "پاسخ 2"]  # in order, none lost
    assert gw.desk.announced.empty()  # told once, not per message
    assert sum("sending paused" in r.getMessage() for r in caplog.records) == 1
    assert all(API_KEY not in r.getMessage() for r in caplog.records)
    for reply_id in replies:  # recorded once Kavenegar's answer is in, a moment after it sent
        await eventually(lambda reply_id=reply_id: gw.state(reply_id), lambda s: s == DeliveryState.SENT)


async def test_a_send_that_timed_out_but_went_out_is_not_sent_again(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(timeout=1.0)
    kavenegar.delivery_url = None
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    kavenegar.hang_next(2.0, after_effect=True)  # Kavenegar sends it, the answer comes too late
    reply_id = await gw.runtime.tickets.reply(ticket_id, "فقط یک بار")

    await eventually(lambda: gw.state(reply_id), lambda s: s == DeliveryState.SENT, timeout=15)
    assert [s.message for s in kavenegar.sent] == ["فقط یک بار"]  # one SMS, though the first try timed out
    assert any(r.method == "sms/statuslocalmessageid" for r in kavenegar.requests)
    assert await gw.scalar(sa.select(messages.c.provider_id).where(messages.c.id == reply_id)) == str(
        kavenegar.sent[0].messageid)


async def test_a_long_reply_is_shortened_to_the_parts_allowed_with_the_ticket_reference(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(max_parts=2)
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "سلام")))
    await gw.runtime.tickets.reply(ticket_id, "این پاسخ طولانی است " * 30)

    (sent,) = await kavenegar.wait_sent(1)
    assert sent.parts == 2 and parts(sent.message) == 2 and f"T-{1000 + ticket_id}" in sent.message


async def test_a_reply_too_long_for_sms_goes_whole_by_email_and_the_sms_says_so(
        start_sms_gateway, kavenegar: StandInKavenegar, dovecot, smtp_sink: SmtpSink) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(max_parts=1, email=email_settings(dovecot, smtp_sink, acknowledge=False))
    await gw.runtime.deliver(InboundMessage(  # an earlier email: the customer is known by both
        ChannelKind.EMAIL, "m1@example.ir", Address.parse("email", "sara@example.ir"), "سلام",
        also_known_as=(Address.parse("phone", SARA),)))
    ticket_id = await gw.ticket_of(str(kavenegar.customer_sms(SARA, "جزئیات را بفرستید")))
    answer = "جزئیات سفارش شما: " + "کالای شماره یک، ارسال با پست پیشتاز. " * 8
    await gw.runtime.tickets.reply(ticket_id, answer)

    (sent,) = await kavenegar.wait_sent(1)
    (mail,) = await smtp_sink.wait_for(1)
    assert parts(sent.message) == 1 and "ایمیل" in sent.message and f"T-{1000 + ticket_id}" in sent.message
    assert mail.message["To"] == "sara@example.ir" and f"T-{1000 + ticket_id}" in mail.message["Subject"]
    assert mail.message.get_body(("plain",)).get_content().strip().startswith(answer.strip())
    outbound = await gw.rows(sa.select(messages.c.channel, messages.c.text).where(
        messages.c.direction == Direction.OUTBOUND).order_by(messages.c.id))
    assert [(c, t) for c, t in outbound] == [("sms", answer), ("email", answer)]


async def test_polling_stores_what_sms_receive_returns_and_the_reconcile_what_a_crash_lost(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(callbacks=False, receive="poll", poll_interval=1, reconcile_interval=3600)
    first = kavenegar.customer_sms(SARA, "با پولینگ")
    await gw.ticket_of(str(first))

    # Messages marked read by a receive whose answer never reached the database (a crash).
    lost = [kavenegar.customer_sms("0935" + str(1000000 + n), f"گم‌شده {n}") for n in range(3)]
    for message in kavenegar.inbox:
        message.read = True
    await asyncio.sleep(1.5)
    assert await gw.count(messages) == 1
    assert await gw.sms.reconcile() == 3
    for message_id in lost:
        await gw.ticket_of(str(message_id))
    assert await gw.sms.reconcile() == 0  # read again: nothing new, nothing twice
    assert await gw.count(messages, messages.c.direction == Direction.INBOUND) == 4


async def test_polling_takes_nothing_from_kavenegar_while_the_database_is_away(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001
    gw = await start_sms_gateway(callbacks=False, receive="poll", poll_interval=3600, reconcile_interval=3600)

    def receives() -> int:
        return sum(r.method == "sms/receive" for r in kavenegar.requests)

    async def polled() -> int:
        return receives()
    asked = await eventually(polled)  # the loop's first poll, at start, is done
    waiting = kavenegar.customer_sms(SARA, "وقتی پایگاه داده در دسترس نیست")
    gw.runtime.db.reach.failed(ConnectionRefusedError(111, "Connect call failed"))  # as an outage is found
    with pytest.raises(DatabaseUnavailable):
        await gw.sms.receive_unread()
    assert receives() == asked
    assert not next(m for m in kavenegar.inbox if m.messageid == waiting).read  # still unread there

    gw.runtime.db.reach.ok()
    assert await gw.sms.receive_unread() == 1
    await gw.ticket_of(str(waiting))


def test_the_api_key_reaches_no_error_message_and_no_repr() -> None:
    with socket.socket() as sock:  # a port nobody listens on: requests names the URL, key and all
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    client = KavenegarClient(API_KEY, closed, timeout=1.0)
    with pytest.raises(TransientError) as caught:
        client.send(SARA, "سلام", "10004346", "1")
    assert "Kavenegar unreachable" in str(caught.value) and "[secret]" in str(caught.value)
    assert API_KEY not in str(caught.value) and API_KEY not in repr(client)
    assert API_KEY not in repr(SmsSettings(api_key=Secret(API_KEY), sender="10004346", callback_secret=Secret(SECRET)))


@pytest.mark.parametrize(("code", "error"), [(418, AuthError), (407, AuthError), (403, AuthError),
                                             (411, PermanentError), (413, PermanentError), (414, PermanentError),
                                             (409, TransientError), (451, TransientError), (502, TransientError)])
def test_kavenegar_codes_map_to_the_gateways_outcomes(code: int, error: type) -> None:
    found = failure(kavenegar_package.APIException(f"APIException[{code}] خطا".encode()), API_KEY)
    assert type(found) is error and f"Kavenegar {code}: خطا" in str(found)
