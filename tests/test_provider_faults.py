"""Each provider misbehaves for a while (a run of errors, timeouts and dropped connections) while agents
queue replies; once it recovers every reply is delivered, in order per ticket, each row ends `sent`, nothing
is dead-lettered, and the gateway reports the channel healthy again. Exactly once wherever the provider lets
a sender ask what it took (Kavenegar's localid) or the fault came before it acted.

What each stand-in can do decides the faults: the SMTP sink answers 4xx, hangs and drops connections; the
Kavenegar stand-in answers error codes, hangs (with or without the SMS going out) and drops connections; the
Bot API stand-in answers errors (500, 502, 429 with retry_after), hangs and cuts connections, before or after
the message went out. Only Telegram, which has no idempotency key, can then deliver a message twice.
"""

from __future__ import annotations

import collections
from typing import Any

import sqlalchemy as sa

from channels.sms.standin import StandInKavenegar
from channels.telegram.standin import StandInTelegram, User
from gateway.domain import DeliveryState, Direction, JobState
from gateway.runtime import Runtime
from gateway.schema import jobs, messages
from tests.conftest import Gateway, eventually
from tests.servers.dovecot import Dovecot
from tests.servers.smtp_sink import SmtpSink, _Fault
from tests.test_email import mail, start_mail_gateway  # noqa: F401  (fixture)
from tests.test_sms import kavenegar, start_sms_gateway  # noqa: F401  (fixtures)
from tests.test_telegram import SARA, bot_server, start_bot_gateway  # noqa: F401  (fixtures)

PER_TICKET = 5  # two tickets: ten replies in all


async def _outbound(gw: Gateway) -> list[Any]:
    return await gw.rows(sa.select(messages.c.id, messages.c.ticket_id, messages.c.text, messages.c.delivery_state)
                         .where(messages.c.direction == Direction.OUTBOUND).order_by(messages.c.id))


async def _all_sent(gw: Gateway, count: int) -> None:
    rows = await eventually(lambda: _outbound(gw),
                            lambda r: len(r) == count and all(x.delivery_state == DeliveryState.SENT for x in r),
                            timeout=20)
    assert len(rows) == count
    attempts = await gw.rows(sa.select(messages.c.attempts).where(messages.c.direction == Direction.OUTBOUND))
    assert sum(a for (a,) in attempts) > count, attempts  # the spell hit the replies: some took retries


async def _recovered(gw: Gateway, channel: str) -> None:
    runtime: Runtime = gw.runtime
    assert await gw.count(jobs, jobs.c.state == JobState.DEAD) == 0
    ok, health = await runtime.health()
    assert ok and health["queue"]["dead"] == 0
    assert health["channels"][channel]["state"] == "running", health
    assert health["status"] == "ok", health


def _replies(ticket_ids: list[int]) -> dict[int, list[str]]:
    return {t: [f"پاسخ {n} به تیکت {t}" for n in range(PER_TICKET)] for t in ticket_ids}


async def _queue_interleaved(gw: Gateway, wanted: dict[int, list[str]]) -> None:
    for n in range(PER_TICKET):
        for ticket_id, texts in wanted.items():
            assert await gw.runtime.tickets.reply(ticket_id, texts[n]) is not None


# --- SMS (Kavenegar) --------------------------------------------------------------------------------------


async def test_sms_replies_survive_a_run_of_kavenegar_errors_hangs_and_drops(
        start_sms_gateway, kavenegar: StandInKavenegar) -> None:  # noqa: ANN001, F811
    gw = await start_sms_gateway(timeout=1.0)
    kavenegar.delivery_url = None  # no delivery reports: the rows stay `sent`
    customers = ["09121234567", "09351112233"]
    ticket_ids = [await gw.ticket_of(str(kavenegar.customer_sms(c, "سلام"))) for c in customers]
    receptor_of = dict(zip(ticket_ids, customers))

    # A bad spell of sms/send, in this order: 5xx and 409 errors, hangs past the client's 1 s timeout (two
    # where the SMS went out anyway, one where it did not), and dropped connections (one after sending).
    kavenegar.fail_next(500, times=3)
    kavenegar.fail_next(502, times=1)
    kavenegar.fail_next(409, times=2)
    kavenegar.hang_next(1.5, times=2, after_effect=True)
    kavenegar.hang_next(1.5, times=1, after_effect=False)
    kavenegar.drop_next(times=2)
    kavenegar.drop_next(times=1, after_effect=True)
    wanted = _replies(ticket_ids)
    await _queue_interleaved(gw, wanted)

    await kavenegar.wait_sent(2 * PER_TICKET, timeout=20)
    await _all_sent(gw, 2 * PER_TICKET)
    assert not any(kavenegar._faults.values())  # the whole spell was used up

    # Exactly once: Kavenegar got each text once, and no send of a reply went out under a second localid.
    texts = [s.message for s in kavenegar.sent]
    assert sorted(texts) == sorted(t for ts in wanted.values() for t in ts)
    assert len(kavenegar.sent) == 2 * PER_TICKET
    rows = await _outbound(gw)
    by_text = {r.text: r for r in rows}
    for s in kavenegar.sent:
        assert s.localid == str(by_text[s.message].id)  # localid is the product's guard against a double
    sends = [r for r in kavenegar.requests if r.method == "sms/send"]
    localids_of = collections.defaultdict(set)
    for r in sends:
        localids_of[r.params.get("message")].add(r.params.get("localid"))
    assert all(len(ids) == 1 for ids in localids_of.values()), localids_of
    assert len(sends) > 2 * PER_TICKET  # retries did happen
    assert any(r.method == "sms/statuslocalmessageid" for r in kavenegar.requests)  # asked after a timeout
    # In order per ticket, to the right number.
    for ticket_id, texts_of_ticket in wanted.items():
        got = [s.message for s in kavenegar.sent if s.message in texts_of_ticket]
        assert got == texts_of_ticket
        assert {s.receptor for s in kavenegar.sent if s.message in texts_of_ticket} == {receptor_of[ticket_id]}
    # The provider ids recorded are Kavenegar's ids of the one SMS each.
    for s in kavenegar.sent:
        assert await gw.scalar(sa.select(messages.c.provider_id).where(
            messages.c.id == int(s.localid))) == str(s.messageid)
    await _recovered(gw, "sms")


# --- Telegram ---------------------------------------------------------------------------------------------

NIMA = User(5002, "نیما", "کریمی", username="nima_c", language_code="fa")


async def test_telegram_replies_survive_a_run_of_5xx_and_429_answers(
        start_bot_gateway, bot_server: StandInTelegram) -> None:  # noqa: ANN001, F811
    gw = await start_bot_gateway(acknowledge=False)
    ticket_ids = []
    for user in (SARA, NIMA):
        message_id = bot_server.customer_text(user, "سلام")
        ticket_ids.append(await gw.ticket_of(f"{user.id}:{message_id}"))
    chat_of = dict(zip(ticket_ids, (SARA.id, NIMA.id)))
    # Let the desk's cards and posts for both tickets go out before the bad spell.
    await eventually(lambda: _value(sum(s.chat_id != SARA.id and s.chat_id != NIMA.id for s in bot_server.sent)),
                     lambda n: n >= 4)

    bot_server.fail_next("sendMessage", error_code=500, description="Internal Server Error", times=3)
    bot_server.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=2)
    bot_server.fail_next("sendMessage", error_code=429, description="Too Many Requests: retry after 1",
                         retry_after=1, times=2)
    wanted = _replies(ticket_ids)
    await _queue_interleaved(gw, wanted)

    await _all_sent(gw, 2 * PER_TICKET)
    assert not bot_server._faults["sendmessage"]  # the whole spell was used up
    assert bot_server.too_many >= 2
    to_customers = [s for s in bot_server.sent if s.chat_id in (SARA.id, NIMA.id)]
    assert sorted(s.text for s in to_customers) == sorted(t for ts in wanted.values() for t in ts)
    for ticket_id, texts in wanted.items():
        assert [s.text for s in to_customers if s.chat_id == chat_of[ticket_id]] == texts
    rows = await _outbound(gw)
    sent_ids = {(s.chat_id, s.message_id) for s in to_customers}
    for r in rows:  # each row names the one Telegram message it became
        provider_id = await gw.scalar(sa.select(messages.c.provider_id).where(messages.c.id == r.id))
        assert provider_id is not None
    assert len(sent_ids) == 2 * PER_TICKET
    await _recovered(gw, "telegram")


async def test_telegram_replies_survive_hangs_and_cut_connections_and_repeat_only_what_telegram_took(
        start_bot_gateway, bot_server: StandInTelegram) -> None:  # noqa: ANN001, F811
    gw = await start_bot_gateway(acknowledge=False, timeout=1.0)
    ticket_ids = []
    for user in (SARA, NIMA):
        message_id = bot_server.customer_text(user, "سلام")
        ticket_ids.append(await gw.ticket_of(f"{user.id}:{message_id}"))
    chat_of = dict(zip(ticket_ids, (SARA.id, NIMA.id)))
    await eventually(lambda: _value(sum(s.chat_id not in (SARA.id, NIMA.id) for s in bot_server.sent)),
                     lambda n: n >= 4)
    before = len(bot_server.sent)

    # Lost before Telegram acted: a hang and two cut connections. Lost after it sent the message: one of
    # each. The Bot API has no idempotency key, so those two messages reach their chat twice: the window
    # the README documents (a provider took a send and its answer never came back).
    bot_server.hang_next("sendMessage", seconds=1.5)
    bot_server.drop_next("sendMessage", times=2)
    bot_server.hang_next("sendMessage", seconds=1.5, after=True)
    bot_server.drop_next("sendMessage", after=True)
    wanted = _replies(ticket_ids)
    await _queue_interleaved(gw, wanted)

    await _all_sent(gw, 2 * PER_TICKET)
    assert not bot_server._faults["sendmessage"]
    sent = bot_server.sent[before:]
    texts = collections.Counter(s.text for s in sent)
    assert sum(n - 1 for n in texts.values()) == 2, texts  # the two sends Telegram acted on, once more each
    for ticket_id, replies in wanted.items():  # every reply, in order (a repeat follows its first copy)
        got = [s.text for s in sent if s.chat_id == chat_of[ticket_id]]
        assert list(dict.fromkeys(got)) == replies
    await _recovered(gw, "telegram")


async def _value(value: Any) -> Any:
    return value


# --- Email (SMTP) -----------------------------------------------------------------------------------------


async def test_email_replies_survive_a_run_of_4xx_timeouts_and_dropped_connections(
        start_mail_gateway, dovecot: Dovecot, smtp_sink: SmtpSink) -> None:  # noqa: ANN001, F811
    gw = await start_mail_gateway(acknowledge=False, timeout=1.0)
    dovecot.deliver(mail("A", "a", sender="a@example.ir"))
    dovecot.deliver(mail("B", "b", sender="b@example.ir"))
    shown = {t.reply_to: t.id for t, _ in [await gw.desk.next() for _ in range(2)]}
    ticket_ids = [shown["email:a@example.ir"], shown["email:b@example.ir"]]
    rcpt_of = dict(zip(ticket_ids, ("a@example.ir", "b@example.ir")))

    # A bad spell before the body is ever taken (so a retry cannot double a message): connections closed
    # before the greeting and at MAIL FROM, a MAIL FROM never answered (past the 1 s timeout), and 4xx at
    # MAIL, RCPT and end of DATA.
    smtp_sink.drop_next("connect", times=2)
    smtp_sink.drop_next("mail", times=2)
    smtp_sink._queue("mail", _Fault("hang"), 1)  # the sink has no public hang before DATA
    smtp_sink.fail_next("mail", 421, "4.3.2 Service shutting down, try later", times=1)
    smtp_sink.fail_next("mail", 451, "4.3.0 Temporary failure", times=2)
    smtp_sink.fail_next("rcpt", 451, "4.7.1 Greylisted, try again later", times=2)
    smtp_sink.fail_next("data", 452, "4.3.1 Insufficient system storage", times=2)
    wanted = _replies(ticket_ids)
    await _queue_interleaved(gw, wanted)

    await smtp_sink.wait_for(2 * PER_TICKET, timeout=20)
    await _all_sent(gw, 2 * PER_TICKET)
    assert not any(smtp_sink._faults.values())  # the whole spell was used up
    received = [(r.rcpt_tos, r.message.get_body(("plain",)).get_content().strip()) for r in smtp_sink.received]
    assert len(received) == 2 * PER_TICKET
    assert sorted(t for _, t in received) == sorted(t for ts in wanted.values() for t in ts)
    for ticket_id, texts in wanted.items():
        assert [t for rcpt, t in received if rcpt == (rcpt_of[ticket_id],)] == texts
    assert len({r.message["Message-ID"] for r in smtp_sink.received}) == 2 * PER_TICKET
    assert smtp_sink.connections > 4  # dropped and timed-out connections were replaced
    await _recovered(gw, "email")
