"""Outgoing mail as the customer's mail reader sees it: read back with the standard library's parser."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from channels.email.compose import build_email
from channels.email.settings import EmailSettings
from gateway.addresses import Address
from gateway.domain import ChannelKind
from gateway.messages import OutboundAttachment, OutboundMessage

SETTINGS = EmailSettings(address="support@shop.example", display_name="پشتیبانی فروشگاه")


def _reply(**fields: object) -> OutboundMessage:
    values: dict[str, object] = dict(
        key="kartabl-7", channel=ChannelKind.EMAIL, to=Address("email", "sara@example.com"),
        text="سلام، سفارش شما امروز ارسال می‌شود.\n\nبا احترام", ticket_id=1042, ticket_ref="T-1042",
        subject="سفارش ۱۲۳ نرسیده", in_reply_to="m1@mail.example.com", thread_keys=("m1@mail.example.com",),
        language="fa")
    values.update(fields)
    return OutboundMessage(**values)  # type: ignore[arg-type]


def _read(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def test_a_persian_reply_reads_back_with_its_thread_headers_and_both_alternatives() -> None:
    data = build_email(_reply(), SETTINGS)
    mail = _read(data)

    assert mail["From"] == "پشتیبانی فروشگاه <support@shop.example>"
    assert mail["Subject"] == "Re: سفارش ۱۲۳ نرسیده [T-1042]"
    assert mail["Message-ID"] == "<kartabl-7.T-1042@shop.example>"
    assert mail["In-Reply-To"] == "<m1@mail.example.com>" and mail["References"] == "<m1@mail.example.com>"
    assert mail["Auto-Submitted"] is None
    assert mail.get_body(("plain",)).get_content() == "سلام، سفارش شما امروز ارسال می‌شود.\n\nبا احترام"
    assert 'dir="rtl"' in mail.get_body(("html",)).get_content()
    assert data.isascii() and all(len(line) <= 78 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_a_line_break_in_the_subject_cannot_add_a_header() -> None:
    mail = _read(build_email(_reply(subject="Order 5\r\nBcc: all@example.com"), SETTINGS))

    assert mail["Bcc"] is None
    assert mail["Subject"] == "Re: Order 5 Bcc: all@example.com [T-1042]"


def test_long_references_are_folded_and_automatic_replies_say_so() -> None:
    keys = tuple(f"{n}.a-rather-long-message-id@mail.example.com" for n in range(30))
    data = build_email(_reply(thread_keys=keys, in_reply_to=keys[-1], automatic=True), SETTINGS)
    mail = _read(data)

    assert mail["References"].split() == [f"<{k}>" for k in keys[-20:]]
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))
    assert mail["Auto-Submitted"] == "auto-replied" and mail["X-Auto-Response-Suppress"] == "All"


def test_an_agents_file_goes_along_under_its_persian_name(tmp_path: Path) -> None:
    invoice = tmp_path / "stored"
    invoice.write_bytes(b"%PDF-1.4 invoice")
    attachment = OutboundAttachment("فاکتور خرید.pdf", "application/pdf", str(invoice))
    mail = _read(build_email(_reply(attachments=(attachment,), language="en", text="Your invoice."), SETTINGS))

    files = list(mail.iter_attachments())
    assert [(f.get_filename(), f.get_content_type(), f.get_content()) for f in files] == [
        ("فاکتور خرید.pdf", "application/pdf", b"%PDF-1.4 invoice")]
    assert mail.get_body(("plain",)).get_content() == "Your invoice."
    assert 'dir="ltr"' in mail.get_body(("html",)).get_content()
