"""The mobile number in an email signature: found, normalized, linked to the sender's customer."""

from __future__ import annotations

import random
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from channels.email.parse import parse_email
from channels.email.signature import signature_phones
from gateway.addresses import Address
from gateway.domain import ChannelKind
from gateway.messages import InboundMessage
from gateway.schema import addresses, customers
from tests.conftest import Gateway

CORPUS = Path(__file__).parent / "data" / "email"
MOBILE = (Address.parse("phone", "+989121234567"),)
RLM, LRM, ZWNJ = "\u200f", "\u200e", "\u200c"


# -- the pure function ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    # Persian, after "-- ", Persian digits in groups
    "سلام، سفارش ۱۰۴۲ هنوز نرسیده.\n\n-- \nعلی رضایی\nمدیر فروش\nموبایل: ۰۹۱۲ ۱۲۳ ۴۵۶۷",
    # Gmail wraps each Persian line in direction marks; ZWNJ between the digit groups
    f"با سپاس\n--\n{RLM}مریم کریمی{RLM}\n{RLM}همراه:{LRM}۰۹۱۲{ZWNJ}۱۲۳{ZWNJ}۴۵۶۷{LRM}{RLM}",
    # Arabic-Indic digits, "تلفن همراه"
    "ممنون\n\nتلفن همراه: ٠٩١٢-١٢٣-٤٥٦٧",
    # English, no separator: the last lines are the signature; the landline is left out
    ("Hi,\n\nMy invoice is wrong, please check it.\n\nBest regards,\nSara Ahmadi\nHead of Purchasing\n"
     "Example Trading Co.\nTel: +98 21 8888 0000\nMobile: +98 912 123 4567"),
    "Thanks\n--\nSara\nMob. +989121234567",
    "Thanks\n__\nSara | Cell: 0098 912 123 4567",
    "Thanks\n—\nSara\nTel 989121234567",
    "Thanks\nSara\nتلفن: ۰۹۱۲-۱۲۳-۴۵-۶۷",
    "Thanks\nSara\n(0912) 123 4567",
    "Thanks\nSara\n+98 (0) 912 123 4567",
    f"Thanks\nSara\nMobile:{RLM}\u00a009121234567",
    # the same number twice, spelt two ways, is one number
    "Thanks\n-- \nSara\nMobile: 0912 123 4567 | WhatsApp: +98 912 123 4567",
])
def test_a_mobile_in_the_signature_is_found(text: str) -> None:
    assert signature_phones(text) == MOBILE


@pytest.mark.parametrize("text", [
    "Thanks\n-- \nSara\nTel: 021-8888 0000",  # Tehran landline
    "با تشکر\n-- \nشرکت نمونه\nتلفن: ۰۳۱۱ ۱۲۳ ۴۵۶۷",  # Isfahan landline, old spelling
    "Thanks\n-- \nSara\nTel: +98 21 8888 0000\nFax: +98 21 8888 0001",
    "Thanks\n-- \nSara\nCard: 6037 0912 123 4567",  # part of a longer number
    "Thanks\n-- \nSara\nRef 091212345678",  # twelve digits
    "Thanks\n-- \nSara\nMobile: +1 415 555 0100",  # not Iranian
    "",
    "\n\n-- \n",
])
def test_no_mobile_no_address(text: str) -> None:
    assert signature_phones(text) == ()


def test_two_different_mobiles_are_ambiguous() -> None:
    text = "Thanks\n-- \nSara Ahmadi\nMobile: 0912 123 4567\nManager (Mr. Karimi): 0935 111 2222"
    assert signature_phones(text) == ()
    assert signature_phones("سپاس\n-- \nموبایل: ۰۹۱۲۱۲۳۴۵۶۷ و ۰۹۱۹۷۶۵۴۳۲۱") == ()


def test_a_mobile_in_the_body_above_the_signature_is_not_the_senders() -> None:
    body = ("Hello,\n\nPlease call my colleague Reza on 0935 111 2222 about the delivery;\n"
            "he is at the warehouse all week.\nThe order number is 1042.\nIt was paid on Monday.\n"
            "The invoice is attached.\nThe parcel never arrived.\n\nThanks,\nSara")
    assert signature_phones(body) == ()
    assert signature_phones(body.replace("\n\nThanks,", "\n-- \nThanks,")) == ()
    assert signature_phones(body + "\nMobile: 0912 123 4567") == MOBILE


def test_quoted_lines_are_never_the_signature() -> None:
    # An iPhone reply: ">" lines at the end that no attribution line opens.
    text = "Yes, that is fine.\n\nSent from my iPhone\n\n> Reza Karimi\n> Mobile: 0935 111 2222"
    assert signature_phones(text) == ()
    assert signature_phones("Yes\n-- \nSara\n0912 123 4567\n\n> Reza\n> 0935 111 2222") == MOBILE


def test_any_text_never_raises() -> None:
    rng = random.Random(20240304)
    pieces = [
        "0", "9", "1", "2", "۰", "۹", "۱", "٠", "٩", "+", "98", "0098", "0912", " ", "-", ".", "(", ")", "/",
        "\n", "-- \n", "\n—\n", "__", ">", RLM, LRM, ZWNJ, "\u00a0", "\ufeff", "\ud800", "\x00", "Mobile:",
        "موبایل:", "همراه", "تلفن", "a", "\r\n", "\u2028", "1234567", "۱۲۳۴۵۶۷", "٤٥٦٧",
    ]
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
        found = signature_phones(text)
        assert len(found) <= 1
        assert all(a.kind == "phone" and a.value.startswith("+989") and len(a.value) == 13 for a in found)


# -- through the parser --------------------------------------------------------------------------


def email_bytes(body: str, **headers: str) -> bytes:
    """A plain message from Sara; keyword headers (underscores for dashes) are added or replace."""
    msg = EmailMessage()
    defaults = {"From": "Sara Ahmadi <sara@example.com>", "To": "support@example.com", "Subject": "Order",
                "Message-ID": "<s1@mail.example.com>", "Date": "Mon, 4 Mar 2024 10:15:00 +0330"}
    for name, value in {**defaults, **{key.replace("_", "-"): v for key, v in headers.items()}}.items():
        msg[name] = value
    msg.set_content(body)
    return bytes(msg)


SIGNED = "سلام، سفارش ۱۰۴۲ هنوز نرسیده.\n\n-- \nسارا احمدی\nموبایل: ۰۹۱۲ ۱۲۳ ۴۵۶۷\n"


def test_a_parsed_email_links_the_mobile_in_its_signature() -> None:
    message = parse_email(email_bytes(SIGNED)).message
    assert message.claimed == MOBILE
    assert "۰۹۱۲" not in message.text  # agents read the message without the signature, as before


def test_an_auto_reply_links_nothing() -> None:
    parsed = parse_email(email_bytes(SIGNED, Auto_Submitted="auto-replied"))
    assert parsed.message.automatic
    assert parsed.message.claimed == ()


def test_a_web_form_with_the_customers_mobile_links_it() -> None:
    message = parse_email((CORPUS / "04-html-only-web-form.eml").read_bytes()).message
    assert message.claimed == MOBILE


GMAIL_REPLY = ("Thank you, it arrived.\n\nSara\n\n"
               "On Mon, 4 Mar 2024 at 10:15, Reza Karimi <reza@shop.example.com> wrote:\n"
               "> Your parcel left today.\n> --\n> Reza Karimi\n> Mobile: 0935 111 2222\n")
OUTLOOK_REPLY = ("Thank you, it arrived.\n\nSara\n\n________________________________\n"
                 "From: Reza Karimi <reza@shop.example.com>\nSent: Monday, March 4, 2024 10:15 AM\n"
                 "To: Sara Ahmadi\nSubject: RE: Parcel\n\nYour parcel left today.\n\nReza Karimi\n"
                 "Mobile: 0935 111 2222\n")


@pytest.mark.parametrize("reply", [GMAIL_REPLY, OUTLOOK_REPLY], ids=["gmail", "outlook"])
def test_the_signature_of_quoted_history_is_not_read(reply: str) -> None:
    assert parse_email(email_bytes(reply, Subject="Re: Parcel")).message.claimed == ()
    # Her own signature above the history counts; the history's number does not make it ambiguous.
    signed = reply.replace("\n\nSara\n\n", "\n\n-- \nSara\n0912 123 4567\n\n", 1)
    assert parse_email(email_bytes(signed, Subject="Re: Parcel")).message.claimed == MOBILE


def test_the_signature_of_a_forwarded_message_is_not_read() -> None:
    forward = ("Please look at this.\n\n---------- Forwarded message ---------\n"
               "From: Reza Karimi <reza@shop.example.com>\nDate: Mon, 4 Mar 2024\nSubject: Parcel\n\n"
               "Your parcel left today.\n--\nReza Karimi\nMobile: 0935 111 2222\n")
    message = parse_email(email_bytes(forward, Subject="Fwd: Parcel")).message
    assert "0935 111 2222" in message.text  # agents read the forward
    assert message.claimed == ()


# -- through the core ----------------------------------------------------------------------------


async def test_an_sms_from_the_signature_mobile_lands_on_the_emails_customer(gateway: Gateway) -> None:
    by_email = await gateway.runtime.deliver(parse_email(email_bytes(SIGNED)).message)
    by_sms = await gateway.runtime.deliver(InboundMessage(
        ChannelKind.SMS, "sms-1", Address.parse("phone", "۰۹۱۲۱۲۳۴۵۶۷"), "سفارشم کجاست؟"))

    assert by_sms.customer_id == by_email.customer_id and not by_sms.new_customer
    assert await gateway.count(customers) == 1
    known = {tuple(r) for r in await gateway.rows(sa.select(addresses.c.kind, addresses.c.value))}
    assert known == {("email", "sara@example.com"), ("phone", "+989121234567")}


async def test_an_auto_replys_signature_links_no_one(gateway: Gateway) -> None:
    await gateway.runtime.deliver(parse_email(email_bytes(SIGNED, Auto_Submitted="auto-replied")).message)
    by_sms = await gateway.runtime.deliver(InboundMessage(
        ChannelKind.SMS, "sms-1", Address.parse("phone", "09121234567"), "سلام"))

    assert by_sms.new_customer
    assert await gateway.count(customers) == 2


async def test_someone_elses_number_in_a_signature_neither_picks_their_customer_nor_moves_it(gateway: Gateway) -> None:
    by_sms = await gateway.runtime.deliver(InboundMessage(
        ChannelKind.SMS, "sms-1", Address.parse("phone", "09121234567"), "سلام"))
    by_email = await gateway.runtime.deliver(parse_email(email_bytes(SIGNED)).message)  # claims that number

    assert by_email.new_customer and by_email.customer_id != by_sms.customer_id
    owner = await gateway.scalar(sa.select(addresses.c.customer_id).where(addresses.c.value == "+989121234567"))
    assert owner == by_sms.customer_id  # a typed number is no proof: it stays where it was
