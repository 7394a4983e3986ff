"""Ingest: exactly once, the right customer, the right ticket; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa

from gateway.addresses import Address
from gateway.domain import AddressKind, ChannelKind, TicketStatus
from gateway.messages import InboundAttachment, InboundMessage
from gateway.schema import addresses, attachments, customers, events, jobs, messages, tickets
from gateway.tickets import EARLIER_SHOWN
from tests.conftest import Gateway, inbound


async def test_duplicate_provider_id_ingested_twice_is_one_message(gateway: Gateway) -> None:
    first = await gateway.runtime.deliver(inbound("m-1"))
    again = await gateway.runtime.deliver(inbound("m-1", text="the same message, redelivered"))

    assert not first.duplicate and first.new_ticket and first.new_customer
    assert again.duplicate and (again.message_id, again.ticket_id) == (first.message_id, first.ticket_id)
    assert await gateway.count(messages) == 1
    assert await gateway.count(jobs, jobs.c.kind == "ticket.inbound") <= 1  # one workflow job, maybe done


async def test_duplicate_provider_id_ingested_concurrently_is_one_message(gateway: Gateway) -> None:
    results = await asyncio.gather(*(gateway.runtime.deliver(inbound("m-1")) for _ in range(25)))

    assert len({r.message_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await gateway.count(messages) == 1
    assert await gateway.count(events, events.c.kind == "ticket.created") == 1


async def test_same_provider_id_on_two_channels_is_two_messages(gateway: Gateway) -> None:
    a = await gateway.runtime.deliver(inbound("42", channel=ChannelKind.LOOPBACK))
    b = await gateway.runtime.deliver(inbound("42", channel=ChannelKind.SMS, sender="phone:09121234567"))
    assert not a.duplicate and not b.duplicate
    assert await gateway.count(messages) == 2


async def test_two_concurrent_first_messages_of_a_new_customer_open_one_ticket(gateway: Gateway) -> None:
    results = await asyncio.gather(
        gateway.runtime.deliver(inbound("m-1", text="سلام")),
        gateway.runtime.deliver(inbound("m-2", text="کسی هست؟")),
    )

    assert len({r.customer_id for r in results}) == 1
    assert len({r.ticket_id for r in results}) == 1
    assert await gateway.count(customers) == 1
    assert await gateway.count(tickets) == 1
    assert await gateway.count(messages, messages.c.ticket_id == results[0].ticket_id) == 2


async def test_concurrent_messages_of_many_customers_each_get_one_ticket(gateway: Gateway) -> None:
    offers = [inbound(f"m-{c}-{n}", sender=f"email:c{c}@example.com") for n in range(5) for c in range(40)]
    results = await asyncio.gather(*(gateway.runtime.deliver(m) for m in offers))

    assert await gateway.count(customers) == 40
    assert await gateway.count(tickets) == 40
    assert await gateway.count(messages) == 200
    per_customer = {}
    for message, result in zip(offers, results):
        per_customer.setdefault(message.sender, set()).add(result.ticket_id)
    assert all(len(ids) == 1 for ids in per_customer.values())


async def test_an_address_known_from_another_channel_finds_the_same_customer(gateway: Gateway) -> None:
    by_email = await gateway.runtime.deliver(inbound("e-1", sender="email:Sara@Example.com"))
    # On Telegram she shares her phone number: the Telegram id and the phone join her record.
    linked = await gateway.runtime.deliver(inbound(
        "t-1", sender="telegram:5550001", channel=ChannelKind.TELEGRAM,
        also_known_as=["phone:0912 123 4567", "email:sara@example.com"]))
    # Later she texts from that phone, written with Persian digits.
    by_sms = await gateway.runtime.deliver(inbound("s-1", sender="phone:۰۹۱۲۱۲۳۴۵۶۷", channel=ChannelKind.SMS))

    assert by_email.customer_id == linked.customer_id == by_sms.customer_id
    assert not linked.new_customer and not by_sms.new_customer
    assert await gateway.count(customers) == 1
    known = {tuple(r) for r in await gateway.rows(sa.select(addresses.c.kind, addresses.c.value))}
    assert known == {("email", "sara@example.com"), ("telegram", "5550001"), ("phone", "+989121234567")}
    # Each channel has its own ticket; the SMS ticket's card shows the earlier two.
    assert len({by_email.ticket_id, linked.ticket_id, by_sms.ticket_id}) == 3
    card = await gateway.runtime.tickets.summary(by_sms.ticket_id)
    assert [t.ref for t in card.earlier] == [linked.ticket_ref, by_email.ticket_ref]
    assert card.earlier_count == 2


async def test_a_reply_threads_by_reply_key_before_anything_else(gateway: Gateway) -> None:
    first = await gateway.runtime.deliver(inbound("m-1", sender="email:a@example.com"))
    # A colleague answers the thread from another address: the reply key wins over "new customer".
    reply = await gateway.runtime.deliver(inbound("m-2", sender="email:colleague@example.com",
                                                  in_reply_to=("unknown-key", "m-1")))
    assert reply.ticket_id == first.ticket_id and reply.new_customer and not reply.new_ticket


async def test_a_quoted_ticket_reference_threads_only_for_its_own_customer(gateway: Gateway) -> None:
    sara = await gateway.runtime.deliver(inbound("m-1", sender="email:sara@example.com"))
    await gateway.runtime.tickets.set_status(sara.ticket_id, TicketStatus.WAITING)
    # A stranger quoting Sara's reference must not land in Sara's ticket.
    stranger = await gateway.runtime.deliver(inbound("m-2", sender="email:x@example.com",
                                                     ticket_ref=f"Re: [{sara.ticket_ref}]"))
    own = await gateway.runtime.deliver(inbound("m-3", sender="email:sara@example.com",
                                                channel=ChannelKind.EMAIL, ticket_ref=f"Re: [{sara.ticket_ref}]"))
    assert stranger.ticket_id != sara.ticket_id and stranger.new_ticket
    assert own.ticket_id == sara.ticket_id
    # Waiting for the customer, the customer answered: the ticket is open again.
    assert await gateway.scalar(sa.select(tickets.c.status).where(tickets.c.id == sara.ticket_id)) == "open"


async def test_a_message_reopens_a_resolved_ticket_and_records_it(gateway: Gateway) -> None:
    first = await gateway.runtime.deliver(inbound("m-1"))
    await gateway.runtime.tickets.set_status(first.ticket_id, TicketStatus.RESOLVED, actor="agent:7")
    again = await gateway.runtime.deliver(inbound("m-2", text="هنوز مشکل دارم"))

    assert again.ticket_id == first.ticket_id and again.reopened
    row = (await gateway.rows(sa.select(tickets.c.status, tickets.c.resolved_at)
                              .where(tickets.c.id == first.ticket_id)))[0]
    assert (row.status, row.resolved_at) == ("open", None)
    changes = await gateway.rows(
        sa.select(events.c.actor, events.c.old, events.c.new)
        .where(events.c.ticket_id == first.ticket_id, events.c.kind == "ticket.status").order_by(events.c.id))
    assert [tuple(c) for c in changes] == [
        ("agent:7", "new", "resolved"), (f"customer:{first.customer_id}", "resolved", "open")]


async def test_a_closed_ticket_is_never_reopened_a_new_one_starts(gateway: Gateway) -> None:
    first = await gateway.runtime.deliver(inbound("m-1"))
    await gateway.runtime.tickets.set_status(first.ticket_id, TicketStatus.CLOSED)
    later = await gateway.runtime.deliver(inbound("m-2", in_reply_to=("m-1",)))
    assert later.new_ticket and later.ticket_id != first.ticket_id
    assert later.customer_id == first.customer_id


async def test_each_message_gets_its_events_and_workflow_job_in_the_same_commit(start_gateway) -> None:  # noqa: ANN001
    gw = await start_gateway()
    await gw.runtime.worker.stop(0)  # keep jobs in the table to look at them
    result = await gw.runtime.deliver(inbound("m-1"))
    job = (await gw.rows(sa.select(jobs.c.kind, jobs.c.key, jobs.c.payload, jobs.c.state)))[0]
    assert (job.kind, job.key, job.state) == ("ticket.inbound", f"workflow:{result.ticket_id}", "pending")
    assert job.payload == {"ticket_id": result.ticket_id, "message_id": result.message_id,
                           "new_ticket": True, "reopened": False}
    kinds = [r[0] for r in await gw.rows(sa.select(events.c.kind).order_by(events.c.id))]
    assert kinds == ["customer.created", "ticket.created"]


async def test_attachments_are_stored_by_content_once_with_limits(start_gateway, tmp_path) -> None:  # noqa: ANN001
    from gateway.settings import AttachmentSettings

    gw = await start_gateway(attachments=AttachmentSettings(dir=tmp_path / "files", max_bytes=1000, max_count=3))
    photo = b"\x89PNG" + bytes(range(256)) * 3
    files = (
        InboundAttachment("../../etc/passwd", "text/plain", b"root:x:0:0"),
        InboundAttachment("رسید پرداخت.png", "image/png", photo),
        InboundAttachment("copy.png", "image/png", photo),
        InboundAttachment("fourth.txt", "text/plain", b"over the count"),
    )
    big = InboundAttachment("big.bin", "application/octet-stream", b"x" * 1001)
    first = await gw.runtime.deliver(inbound("m-1", attachments=files))
    await gw.runtime.deliver(inbound("m-2", attachments=(big,)))

    stored = await gw.rows(sa.select(attachments.c.filename, attachments.c.size, attachments.c.sha256,
                                     attachments.c.omitted).order_by(attachments.c.id))
    digest = hashlib.sha256(photo).hexdigest()
    assert [tuple(r) for r in stored] == [
        ("passwd", 10, hashlib.sha256(b"root:x:0:0").hexdigest(), None),
        ("رسید پرداخت.png", len(photo), digest, None),
        ("copy.png", len(photo), digest, None),
        ("fourth.txt", 14, None, "more than 3 attachments"),
        ("big.bin", 1001, None, "larger than 1000 bytes"),
    ]
    texts = [r[0] for r in await gw.rows(sa.select(messages.c.text).order_by(messages.c.id))]
    assert texts[0].endswith("\n\n[not kept: fourth.txt (1 KB): more than 3 attachments]")
    assert texts[1].endswith("\n\n[not kept: big.bin (1 KB): larger than 1000 bytes]")
    on_disk = sorted(p for p in (tmp_path / "files").rglob("*") if p.is_file())
    assert [p.name for p in on_disk] == sorted([digest, hashlib.sha256(b"root:x:0:0").hexdigest()])
    assert gw.runtime.files.path_for(digest).read_bytes() == photo
    view = await gw.runtime.tickets.message(first.message_id)
    assert view.attachments == ("passwd", "رسید پرداخت.png", "copy.png", "fourth.txt")


async def test_unreadable_text_is_stored_as_far_as_it_can_be_read(gateway: Gateway) -> None:
    odd = inbound("m-1", text="سلام\x00 دنیا \ud800!", subject="x" * 900, sender_name="ن" * 300,
                  raw={"bytes": b"\xff", "nested": {"ok": 1}})
    result = await gateway.runtime.deliver(odd)
    row = (await gateway.rows(sa.select(messages.c.text, messages.c.subject, messages.c.raw)
                              .where(messages.c.id == result.message_id)))[0]
    assert row.text == "سلام\ufffd دنیا ?!"
    assert len(row.subject) == 500
    assert row.raw == {"bytes": "b'\\xff'", "nested": {"ok": 1}}


async def test_ingest_after_stop_is_refused_so_the_channel_does_not_acknowledge(start_gateway) -> None:  # noqa: ANN001
    from gateway.errors import ShuttingDown

    gw = await start_gateway()
    await gw.runtime.stop()
    with pytest.raises(ShuttingDown):
        await gw.runtime.ingestor.ingest(inbound("m-1"))


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_one_message_the_database_refuses_does_not_fail_its_batch(gateway: Gateway) -> None:
    # PostgreSQL enforces column widths; an address no normalizer would produce exceeds one.
    bad = InboundMessage(ChannelKind.LOOPBACK, "bad", Address(AddressKind.EMAIL, "a" * 400 + "@x.io"), "x")
    offers = [gateway.runtime.deliver(inbound(f"ok-{n}", sender=f"email:c{n}@example.com")) for n in range(20)]
    results = await asyncio.gather(gateway.runtime.deliver(bad), *offers, return_exceptions=True)

    assert isinstance(results[0], sa.exc.DBAPIError)
    assert all(not isinstance(r, BaseException) for r in results[1:])
    assert await gateway.count(messages) == 20


async def test_half_written_files_of_a_killed_process_are_swept_at_start(db_url: str, tmp_path) -> None:  # noqa: ANN001
    import os
    import time

    from gateway.compose import build_runtime
    from tests.conftest import make_settings

    folder = tmp_path / "files" / "ab" / "cd"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".part-stale", folder / ".part-fresh"
    stale.write_bytes(b"half a photo")
    fresh.write_bytes(b"being written now")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    runtime = build_runtime(make_settings(db_url, tmp_path))
    await runtime.start()
    await runtime.stop()
    assert not stale.exists() and fresh.exists()


async def test_the_card_lists_the_last_earlier_tickets_and_counts_them_all(gateway: Gateway) -> None:
    refs = []
    for n in range(EARLIER_SHOWN + 2):  # each request closed before the next, so each opens its own ticket
        result = await gateway.runtime.deliver(inbound(f"m-{n}", sender="email:sara@example.com"))
        await gateway.runtime.tickets.set_status(result.ticket_id, TicketStatus.CLOSED, actor="agent:1")
        refs.append(result.ticket_ref)
    latest = await gateway.runtime.deliver(inbound("m-last", sender="email:sara@example.com"))

    card = await gateway.runtime.tickets.summary(latest.ticket_id)
    assert [t.ref for t in card.earlier] == refs[::-1][:EARLIER_SHOWN]
    assert card.earlier_count == EARLIER_SHOWN + 2
