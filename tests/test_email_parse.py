"""The email parser on mail as real clients write it: what agents read, threading, files, loops, bounces."""

from __future__ import annotations

import contextlib

import base64
import datetime as dt
import email.message
import email.policy
import hashlib
import json
import random
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels.email.parse import (
    ParsedEmail,
    UnparseableEmail,
    normalize_message_id,
    parse_email,
)
from channels.email.text import (
    decode_bytes,
    guess_language,
    html_to_text,
    strip_history,
    unflow,
)
from gateway.addresses import Address
from gateway.domain import ChannelKind
from gateway.messages import InboundMessage

CORPUS = Path(__file__).parent / "data" / "email"
OWN_DOMAINS = ("support.example.com",)
ZWNJ = "\u200c"  # Persian zero-width non-joiner: "می‌خواهم" must keep it
RAW_KEYS = {"from", "to", "cc", "reply_to", "date", "message_id", "references", "full_text", "html_only",
            "loop_reasons", "bounced", "defects"}


def parse(name: str, **kwargs: Any) -> ParsedEmail:
    return parse_email((CORPUS / name).read_bytes(), own_domains=OWN_DOMAINS, **kwargs)


def check(message: InboundMessage, **expected: Any) -> None:
    """One assertion over several fields, so a failure shows them all."""
    assert {name: getattr(message, name) for name in expected} == expected


def files(message: InboundMessage) -> list[tuple[str, str, int]]:
    return [(item.filename, item.content_type, len(item.data or b"")) for item in message.attachments]


def html_view(name: str) -> str:
    """The agents' view computed from a corpus message's HTML alternative alone."""
    msg = email.message_from_bytes((CORPUS / name).read_bytes(), policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    return strip_history(html_to_text(html, mark_quotes=True), forwarded=msg["Subject"].startswith("Fwd"))


def build(body: str = "Hello, where is my order?", **headers: str) -> bytes:
    """A plain message from a person; keyword headers (underscores for dashes) are added or replace."""
    msg = EmailMessage()
    defaults = {"From": "Sara Ahmadi <sara@example.com>", "To": "support@example.com", "Subject": "Order",
                "Message-ID": "<q1@mail.example.com>", "Date": "Mon, 4 Mar 2024 10:15:00 +0330"}
    for name, value in {**defaults, **{key.replace("_", "-"): v for key, v in headers.items()}}.items():
        msg[name] = value
    msg.set_content(body)
    return bytes(msg)


CORPUS_FILES = sorted(path.name for path in CORPUS.glob("*.eml"))
PARSEABLE = [name for name in CORPUS_FILES if name != "18-no-from.eml"]


# -- charsets and encodings ----------------------------------------------------------------------


def test_outlook_express_windows_1256_quoted_printable() -> None:
    message = parse("01-outlook-express-windows-1256.eml").message
    check(
        message,
        channel=ChannelKind.EMAIL,
        text=("سلام وقت بخير\n\n"
              "سفارش شماره 1042 را ده روز پيش ثبت کردم ولي هنوز به دستم نرسيده.\n"
              f"مي{ZWNJ}خواهم بدانم سفارشم کجاست. لطفاً پيگيري کنيد.\n\n"
              "با تشکر\nعلي رضايي"),
        subject="پيگيري سفارش [T-1042]",
        sender=Address.parse("email", "ali.rezaei@example.ir"),
        sender_name="علي رضايي",
        provider_id="000801da6d1f$3c2a1b50$b47e51f0$@example.ir",
        thread_key="000801da6d1f$3c2a1b50$b47e51f0$@example.ir",
        in_reply_to=(),
        ticket_ref="T-1042",
        attachments=(),
        automatic=False,
        language="fa",
        received_at=dt.datetime(2024, 3, 3, 5, 42, 40, tzinfo=dt.UTC),
    )


def test_eudora_iso_8859_6_body_and_q_encoded_subject() -> None:
    message = parse("02-eudora-iso-8859-6.eml").message
    check(
        message,
        text=("السلام عليكم،\n\nطلبت جهازاً من متجركم قبل أسبوعين ولم يصل حتى الآن.\n"
              "رقم الطلب 2087. أرجو الرد في أقرب وقت.\n\nمع الشكر\nأحمد خليل"),
        subject="استفسار عن الطلب 2087",
        sender=Address.parse("email", "ahmed.khalil@example.net"),
        sender_name="Ahmed Khalil",
        provider_id="6.2.5.6.2.20240304081502.03a1c8f0@example.net",
        ticket_ref=None,
        automatic=False,
        language="fa",
    )


def test_thunderbird_persian_file_names_in_rfc2047_and_rfc2231_continuations() -> None:
    message = parse("03-thunderbird-persian-filenames.eml").message
    check(
        message,
        # format=flowed joined, the "-- " signature gone
        text=(f"سلام،\nفاکتور سفارش و عکس بسته{ZWNJ}ای که آسیب{ZWNJ}دیده به دستم رسید را پیوست کرده{ZWNJ}ام. "
              "لطفاً برای تعویض اقدام کنید.\n\nممنون"),
        subject="خرابی بسته سفارش [T-1042]",
        sender_name="سارا احمدی",
        ticket_ref="T-1042",
        language="fa",
    )
    assert files(message) == [("فاکتور سفارش ۱۰۴۲.pdf", "application/pdf", 148),
                              (f"عکس بسته{ZWNJ}ی آسیب{ZWNJ}دیده.jpg", "image/jpeg", 91)]
    assert message.attachments[0].data.startswith(b"%PDF-1.4")
    assert message.attachments[1].data.startswith(b"\xff\xd8\xff")
    assert "کارشناس خرید" in message.raw["full_text"]  # the signature is only out of the agents' view


def test_unknown_charset_names_fall_back_to_utf8_then_windows_1256() -> None:
    message = parse("16-unknown-charset.eml").message
    check(message, subject="سوال درباره گارانتی", text="سلام. گارانتي اين دستگاه چند ماه است؟", language="fa")


def test_raw_utf8_headers_of_smtputf8_mail() -> None:
    message = parse("17-smtputf8-raw-headers.eml").message
    check(
        message,
        subject="مشکل در ورود به حساب [T-۱۰۵۵]",
        sender=Address.parse("email", "mahdi@example.ir"),
        sender_name="مهدی کاظمی",
        ticket_ref="T-1055",
        text=f"نمی{ZWNJ}توانم وارد حسابم شوم. تصویر خطا پیوست است.",
    )
    assert files(message) == [("خطای ورود.png", "image/png", 70)]
    assert message.raw["to"] == ["پشتیبانی <support@example.com>"]
    assert message.raw["cc"] == ["علی, رضایی <ali.rezaei@example.ir>"]


@pytest.mark.parametrize(("data", "charset", "text"), [
    ("سلام".encode(), "utf-8", "سلام"),
    ("سلام".encode(), "x-unknown", "سلام"),
    ("سلام".encode("windows-1256"), "utf-8", "سلام"),  # mislabelled
    ("سلام".encode("windows-1256"), None, "سلام"),
    ("مرحبا".encode("iso-8859-6"), "ISO-8859-6", "مرحبا"),
    ("café".encode(), "iso-8859-1", "café"),  # UTF-8 that a web form labelled latin-1
    ("café".encode("latin-1"), "iso-8859-1", "café"),
    (b"plain", "\"us-ascii\"", "plain"),
    (b"\x81\x8d\x8f", "bogus\x00name", "\x81\x8d\x8f".encode("latin-1").decode("windows-1256")),
])
def test_decode_bytes_never_raises(data: bytes, charset: str | None, text: str) -> None:
    assert decode_bytes(data, charset) == text


# -- HTML ----------------------------------------------------------------------------------------


def test_html_only_mail_becomes_readable_text_with_nothing_executable() -> None:
    message = parse("04-html-only-web-form.eml").message
    check(
        message,
        text=("درخواست پشتیبانی\n"
              f"سلام، من می{ZWNJ}خواهم وضعیت سفارش ۱۰۴۲ را بدانم «فوری» & مهم.\n"
              "کالا تعداد قیمت\n"
              f"هدفون بی{ZWNJ}سیم ۱ ۲٬۵۰۰٬۰۰۰ ریال\n"
              "کابل USB\u2011C ۲ ۳۰۰٬۰۰۰ ریال\n"
              "[image: لوگوی فروشگاه]\n"
              "پیگیری: صفحهٔ سفارش (https://shop.example.com/orders/1042?utm_source=mail&x=1) یا اینجا کلیک کنید.\n"
              "• رنگ: مشکی\n"
              "• گارانتی: ۱۸ ماه\n"
              "ایمیل: maryam.karimi@example.com\n"
              "تلفن: ۰۹۱۲۱۲۳۴۵۶۷"),
        subject="درخواست پشتیبانی",
        sender_name="مریم کریمی",
        language="fa",
    )
    assert message.raw["html_only"] is True
    for leftover in ("<", "alert(", "javascript:", "document.cookie", "onclick", "font-family", "evil.example",
                     "پیش‌نمایش پنهان", "svg text", "iframe text", "enable JavaScript", "ارسال"):
        assert leftover not in message.text
        assert leftover not in message.raw["full_text"]


@pytest.mark.parametrize(("html", "text"), [
    ("<p>one</p><p>two</p>", "one\ntwo"),
    ("<div>a</div><div><br></div><div>b</div>", "a\n\nb"),
    ("a<br/>b<br><br>c", "a\nb\n\nc"),
    ("<p>x</p><p>&nbsp;</p><p>y</p>", "x\n\ny"),
    ("<ul><li>one</li><li>two</li></ul>", "• one\n• two"),
    ("<h1>Title</h1>text", "Title\ntext"),
    ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a b\nc d"),
    ("<a href='https://x.example/p'>the page</a>", "the page (https://x.example/p)"),
    ("<a href='https://x.example/p/'>x.example/p</a>", "x.example/p"),
    ("<a href='mailto:sara@example.com'>sara@example.com</a>", "sara@example.com"),
    ("<a href='mailto:sara@example.com'>write to us</a>", "write to us (mailto:sara@example.com)"),
    ("<a href=' java\tscript:alert(1)'>click</a>", "click"),
    ("<a href='data:text/html;base64,PHNjcmlwdD4='>open</a>", "open"),
    ("<a href='https://x.example/\"><script>'>go</a>", "go (https://x.example/%22%3E%3Cscript%3E)"),
    ("<img src='cid:logo' alt='Shop logo'> and <img src='t.gif'>", "[image: Shop logo] and"),
    ("<p>a &amp; b &lt;c&gt; &laquo;d&raquo; &#1587;&#1604;&#1575;&#1605;</p>", "a & b <c> «d» سلام"),
    (f"<p>می&zwnj;خواهم و می{ZWNJ}روم</p>", f"می{ZWNJ}خواهم و می{ZWNJ}روم"),
    ("<p>spaced     out\n\n  words</p>", "spaced out words"),
    ("<pre>keep\n  this</pre>after", "keep\n  this\nafter"),
    ("<html><head><title>T</title><style>p{}</style><body>body</body>", "body"),
    ("<head><title>never closed</title><body>text</body>", "text"),
    ("<script>alert(1)</script><style>.x{}</style><template>t</template><noscript>n</noscript>ok", "ok"),
    ("<iframe>i</iframe><object>o</object><embed src=x>e<svg><text>s</text></svg>", "e"),
    ("<div style='display: none'>hidden <div>nested</div> still</div>shown", "shown"),
    ("<p onclick='alert(1)' onmouseover='x()'>text</p>", "text"),
    ("<!--[if mso]><b>outlook only</b><![endif]-->a<![if !supportLists]>b<![endif]>", "ab"),
    ("x<!-- never closed <img src=x onerror=alert(1)> y", "x y"),
    ("broken <![bogus[ section ]]> end", "broken end"),
    ("tail <img src=x onerror=alert(1)//", "tail"),
    ("a < b and 3 > 2", "a < b and 3 > 2"),
])
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


# -- MIME structure and files --------------------------------------------------------------------


def test_gmail_nested_related_alternative_inline_image_and_pdf() -> None:
    message = parse("05-gmail-nested-related.eml").message
    check(
        message,
        text=("سلام\nرسید پرداخت را پیوست کردم. تصویر خطایی که در صفحهٔ پرداخت دیدم:\n"
              "[image: image.png]\nلطفاً بررسی کنید.\n\nمحمد"),
        subject="خطای پرداخت",
        sender_name="محمد نوری",
        provider_id="CAF7k2vQ9xN5wP3=Zt1bq0yR6mJ8uH4cS2dE5gL7aV1oK9pQ3wA@mail.gmail.com",
    )
    assert files(message) == [("image.png", "image/png", 70), ("رسید پرداخت.pdf", "application/pdf", 148)]
    assert message.attachments[0].data.startswith(b"\x89PNG")
    assert message.raw["html_only"] is False


def test_parts_without_names_get_readable_ones() -> None:
    msg = EmailMessage()
    msg["From"] = "sara@example.com"
    msg["Message-ID"] = "<names@example.com>"
    msg.set_content("see the files")
    msg.add_attachment(b"%PDF-1.4 a", maintype="application", subtype="pdf")
    msg.add_attachment(b"%PDF-1.4 b", maintype="application", subtype="pdf")
    msg.add_attachment(b"\x89PNG", maintype="image", subtype="png")
    msg.add_attachment(b"\xff\xd8\xff", maintype="image", subtype="jpeg", disposition="inline")
    msg.add_attachment(b"?", maintype="application", subtype="x-unheard-of")
    message = parse_email(bytes(msg)).message
    assert [item.filename for item in message.attachments] == [
        "attachment-1.pdf", "attachment-2.pdf", "image-1.png", "image-2.jpg", "attachment-3.bin"]
    assert message.text == "see the files"


def test_a_20_mb_attachment_arrives_whole() -> None:
    pdf = b"%PDF-1.7\n" + random.Random(20).randbytes(20 * 1024 * 1024 - 9)
    msg = EmailMessage()
    msg["From"] = "Sara Ahmadi <sara@example.com>"
    msg["Subject"] = "scan"
    msg["Message-ID"] = "<big.1@example.com>"
    msg.set_content(f"سلام، اسکن قرارداد پیوست است.\nمی{ZWNJ}خواهم بررسی شود.\n")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="قرارداد.pdf")
    message = parse_email(bytes(msg)).message
    assert message.text == f"سلام، اسکن قرارداد پیوست است.\nمی{ZWNJ}خواهم بررسی شود."
    assert len(message.attachments) == 1
    attachment = message.attachments[0]
    assert (attachment.filename, attachment.content_type, len(attachment.data)) == (
        "قرارداد.pdf", "application/pdf", 20 * 1024 * 1024)
    assert attachment.data == pdf


@pytest.mark.parametrize("name", PARSEABLE)
def test_no_body_part_is_decoded_twice(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: Counter[int] = Counter()
    get_payload = email.message.Message.get_payload

    def counting(self: email.message.Message, i: int | None = None, decode: bool = False) -> Any:
        if decode:
            decoded[id(self)] += 1
        return get_payload(self, i, decode)

    monkeypatch.setattr(email.message.Message, "get_payload", counting)
    parse(name)
    assert decoded
    assert max(decoded.values()) == 1


# -- quoted history, signatures, forwards ---------------------------------------------------------


def test_gmail_persian_reply_loses_the_quoted_history() -> None:
    message = parse("06-gmail-persian-reply.eml").message
    text = f"ممنون از پاسخ{ZWNJ}تون. کد رهگیری رو دریافت کردم.\nفقط وضعیتش هنوز «در حال پردازش» است."
    check(
        message,
        text=text,
        subject="Re: [T-1016] ارسال سفارش",
        sender_name="سارا احمدی",
        in_reply_to=("kartabl-17.T-1016@support.example.com", "kartabl-16.T-1016@support.example.com"),
        ticket_ref="T-1016",
        automatic=False,
        language="fa",
    )
    assert html_view("06-gmail-persian-reply.eml") == text
    assert "سفارش شما ارسال شد" in message.raw["full_text"]
    assert message.raw["references"] == ["kartabl-16.T-1016@support.example.com",
                                         "kartabl-17.T-1016@support.example.com"]


def test_gmail_english_reply_loses_signature_and_wrapped_attribution() -> None:
    message = parse("07-gmail-english-reply.eml").message
    check(
        message,
        text=("Hi,\n\nThe tracking link says the parcel is back at the depot. Could you check\n"
              "with the courier?\n\nThanks,\nSara"),
        subject="Re: [T-1016] Order shipped",
        sender_name="Sara Ahmadi",
        in_reply_to=("kartabl-17.T-1016@support.example.com",),
        ticket_ref="T-1016",
        language="en",
    )
    assert html_view("07-gmail-english-reply.eml") == (
        "Hi,\n\nThe tracking link says the parcel is back at the depot. Could you check with the courier?"
        "\n\nThanks,\nSara")


def test_outlook_html_reply_with_persian_header_block() -> None:
    message = parse("08-outlook-persian-reply.eml").message
    check(
        message,
        text=f"سلام،\nدستگاه هنوز روشن نمی{ZWNJ}شود. شماره سریال: SN-48213\n\nبا احترام\nرضا محمدی",
        subject="RE: [T-1020] تعمیر دستگاه",
        provider_id="DB9PR08MB6618E3B1C07A2B4F3C2D1A8FD8212@DB9PR08MB6618.eurprd08.prod.outlook.com",
        in_reply_to=("kartabl-20.T-1020@support.example.com",),
        ticket_ref="T-1020",
        language="fa",
        received_at=dt.datetime(2024, 3, 6, 8, 41, 3, tzinfo=dt.UTC),
    )
    assert message.raw["html_only"] is True
    assert "دوباره وصل کنید" in message.raw["full_text"]
    assert "font-family" not in message.raw["full_text"]


def test_iphone_reply_loses_sent_from_and_the_quoted_block() -> None:
    message = parse("19-iphone-persian-reply.eml").message
    check(message, text="باشه، ممنون. فردا صبح منتظرم.", ticket_ref="T-1020", language="fa",
          in_reply_to=("kartabl-21.T-1020@support.example.com",))
    assert html_view("19-iphone-persian-reply.eml") == "باشه، ممنون. فردا صبح منتظرم."


def test_thunderbird_flowed_reply() -> None:
    message = parse("20-thunderbird-flowed-reply.eml").message
    check(
        message,
        text=("Hello,\n\nthank you for the quick answer. The refund has not arrived yet, the bank says it can "
              "take up to ten working days, so I will wait until Friday and write again.\n\nBest regards\nLena"),
        ticket_ref="T-1031",
        language="en",
        received_at=dt.datetime(2024, 3, 9, 14, 2, 44, tzinfo=dt.UTC),
    )


GMAIL_FORWARD = (
    "Hi, why was this cancelled? I paid already.\n\n"
    "---------- Forwarded message ---------\n"
    "From: Shop Notifications <no-reply@shop.example.com>\n"
    "Date: Sat, Mar 2, 2024 at 6:30 PM\n"
    "Subject: Your order #1042 has been cancelled\n"
    "To: <sara.ahmadi@example.com>\n\n"
    "Hello Sara,\n\n"
    "Your order #1042 has been cancelled because the payment could not be\nverified.\n\n"
    "--\nShop Team"
)


def test_a_gmail_forward_reaches_agents_without_the_forwarders_signature() -> None:
    message = parse("09-gmail-forward.eml").message
    check(message, text=GMAIL_FORWARD, subject="Fwd: Your order #1042 has been cancelled", language="en")
    assert html_view("09-gmail-forward.eml") == GMAIL_FORWARD.replace("could not be\nverified", "could not be verified")


def test_a_persian_gmail_forward_keeps_even_its_own_quoted_history() -> None:
    message = parse("09-gmail-forward-fa.eml").message
    assert message.text == (
        f"این پیامک{ZWNJ}ها هم برای من آمده. لطفاً بررسی کنید.\n\n"
        f"---------- پیام هدایت{ZWNJ}شده ---------\n"
        "از: \u202aفروشگاه نمونه\u202c <\u202ainfo@shop.example.com\u202c>\n"
        "Date: شنبه ۲ مارس ۲۰۲۴ ساعت ۱۸:۳۰\n"
        "Subject: لغو سفارش ۱۰۴۲\n"
        "To: <sara.ahmadi@example.com>\n\n"
        "سفارش شما به دلیل عدم تأیید پرداخت لغو شد.\n\n"
        "در تاریخ ۱ مارس ۲۰۲۴ ساعت ۰۹:۰۰ پشتیبانی <support@shop.example.com> نوشت:\n"
        "> سفارش ثبت شد."
    )
    assert html_view("09-gmail-forward-fa.eml").endswith(
        f"---------- پیام هدایت{ZWNJ}شده ---------\nاز: فروشگاه نمونه <info@shop.example.com>\n"
        "Date: شنبه ۲ مارس ۲۰۲۴ ساعت ۱۸:۳۰\nSubject: لغو سفارش ۱۰۴۲\nTo: <sara.ahmadi@example.com>\n\n"
        "سفارش شما به دلیل عدم تأیید پرداخت لغو شد.")


def test_a_message_forwarded_as_attachment_is_a_file_and_text() -> None:
    message = parse("10-outlook-forward-as-attachment.eml").message
    assert message.text == (
        f"این ایمیل از طرف شما بود؟ به نظر کلاهبرداری می{ZWNJ}آید.\n\n"
        "---------- Forwarded message ---------\n"
        "From: Kartabl Support <support@examp1e.com>\n"
        "Date: Sun, 03 Mar 2024 06:45:00 +0000\n"
        "Subject: حساب شما مسدود شد\n"
        "To: nima.h@example.org\n\n"
        "کاربر گرامی،\nحساب شما مسدود شد. برای رفع مسدودی روی لینک زیر کلیک کنید:\nhttps://examp1e.com/unlock"
    )
    [attachment] = message.attachments  # the PDF inside stays inside the forwarded message
    assert (attachment.filename, attachment.content_type) == ("forwarded-1.eml", "message/rfc822")
    inner = email.message_from_bytes(attachment.data, policy=email.policy.default)
    assert inner["Subject"] == "حساب شما مسدود شد"
    assert inner["Message-ID"] == "<20240303064500.1A2B3C4D@mailer.examp1e.com>"
    assert [part.get_filename() for part in inner.iter_attachments()] == ["invoice.pdf"]
    assert next(inner.iter_attachments()).get_content().startswith(b"%PDF-1.4")


@pytest.mark.parametrize(("text", "view"), [
    ("Thanks!\n\nOn Mon, Mar 4, 2024 at 10:15 AM Support <s@example.com> wrote:\n> old", "Thanks!"),
    ("Thanks!\n\nOn Mon, Mar 4, 2024 at 10:15 AM Kartabl Support <\ns@example.com> wrote:\n\n> old", "Thanks!"),
    ("Thanks!\nOn 3/4/24 10:15, Support wrote:\n> old", "Thanks!"),
    ("Ok.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nTo: me\nSubject: x\n\nold", "Ok."),
    (("Ok.\n\n________________________________\nFrom: Support <s@example.com>\nSent: Monday, March 4, 2024 10:15\n"
     "To: Sara <sara@example.com>\nSubject: Order\n\nold"), "Ok."),
    ("Ok.\n\n*From:* Support <s@example.com>\n*Sent:* Monday\n*To:* Sara\n*Subject:* Order\n\nold", "Ok."),
    (("باشه.\n\n\u202bدر تاریخ دوشنبه ۴ مارس ۲۰۲۴ ساعت ۱۰:۱۵ Kartabl Support <\u202a\n"
     "support@example.com\u202c\u200f> نوشت:\u202c\n\n> قدیمی"), "باشه."),
    ("باشه.\nدر تاریخ 4 March 2024 ساعت 10:15 Support <s@example.com> نوشت:\n> قدیمی", "باشه."),
    ("باشه.\nدر ۴ مارس، پشتیبانی نوشت:\nقدیمی", "باشه."),
    ("باشه.\n\nاز: پشتیبانی <s@example.com>\nارسال شده: دوشنبه ۴ مارس ۲۰۲۴\nبه: سارا\nموضوع: سفارش\n\nقدیمی",
     "باشه."),
    (f"باشه.\n\nاز: پشتیبانی\nارسال{ZWNJ}شده: دوشنبه\nبه: سارا\nCc: علی\nموضوع: سفارش\n\nقدیمی", "باشه."),
    ("حسنا.\n\nفي الاثنين، 4 مارس 2024 في 10:15 ص كتب Support <s@example.com>:\n> قديم", "حسنا."),
    ("حسنا.\nكتب الدعم في 4 مارس:\nقديم", "حسنا."),
    ("Answer first\n\n> quoted one\n>\n> quoted two\n", "Answer first"),
    ("> inline question\nmy answer\n> another\nanother answer", None),  # interleaved answers stay
    ("Regards\n-- \nSara\n+98 912", "Regards"),
    ("Regards\n--\nSara", "Regards"),
    ("Ok\n\nSent from my iPhone", "Ok"),
    ("Ok\n\nSent from my Android\n\n", "Ok"),
    ("باشه\n\nارسال شده از iPhone من", "باشه"),
    (f"باشه\n\nارسال{ZWNJ}شده از Samsung Galaxy", "باشه"),
    ("See below.\n\nBegin forwarded message:\n\nFrom: Shop\nSubject: x\n\nbody", None),
    ("FYI\n\n-------- Forwarded Message --------\nSubject: x\nDate: y\nFrom: z\nTo: w\n\nbody", None),
    ("On Monday my colleague wrote: it's broken.\nPlease help.", None),  # no time, no address: not a quote
    ("On Monday I called.\nMy colleague wrote:", None),
    ("در مورد سفارشم سوال دارم.\nلطفاً پاسخ دهید.", None),
    ("از: تهران\nتاریخ: دیروز\nموضوع: سفارش\nلطفاً پیگیری کنید.", None),  # a form, not Outlook's block
    ("--\n-- \n> quoted only", ""),
])
def test_strip_history(text: str, view: str | None) -> None:
    assert strip_history(text) == (text.strip() if view is None else view)


def test_an_outlook_forward_keeps_the_forwarded_header_block() -> None:
    text = ("FYI\n\n________________________________\n"
            "From: Shop <s@example.com>\nSent: Monday\nTo: Sara\nSubject: x\n\nbody")
    assert strip_history(text) == "FYI"
    assert strip_history(text, forwarded=True) == text


def test_format_flowed_lines_are_joined() -> None:
    flowed = "one \ntwo\n> quoted \n> more\n-- \nsig"
    assert unflow(flowed) == "one two\n> quoted more\n-- \nsig"
    assert unflow("long \nword", delsp=True) == "longword"
    assert unflow(" >stuffed") == ">stuffed"


# -- threading, references, identity ------------------------------------------------------------


@pytest.mark.parametrize(("value", "normalized"), [
    ("<ABC@x>", "ABC@x"),
    ("  <kartabl-17.T-1016@support.example.com>  ", "kartabl-17.T-1016@support.example.com"),
    ("<CAKx9+zq7L=Q1_g@mail.gmail.com> (Sara's message)", "CAKx9+zq7L=Q1_g@mail.gmail.com"),
    ("bare@id.example", "bare@id.example"),
    ("<a b@x>", None),
    ("<>", None),
    ("garbage", None),
    ("", None),
    (None, None),
    ("<@x>", None),
    ("<a@>", None),
    ("<" + "a" * 1000 + "@x>", None),
])
def test_normalize_message_id(value: str | None, normalized: str | None) -> None:
    assert normalize_message_id(value) == normalized


def test_in_reply_to_is_in_reply_to_then_references_newest_first_deduplicated_and_capped() -> None:
    older = " ".join(f"<old{n}@example.com>" for n in range(30))
    raw = build(In_Reply_To="<c@example.com>", References=f"{older} <a@example.com> <b@example.com> <c@example.com>")
    keys = parse_email(raw).message.in_reply_to
    assert keys[:4] == ("c@example.com", "b@example.com", "a@example.com", "old29@example.com")
    assert len(keys) == 20
    assert len(set(keys)) == 20


def test_references_without_angle_brackets_are_still_read() -> None:
    raw = build(References="a@example.com, b@example.com")
    assert parse_email(raw).message.in_reply_to == ("b@example.com", "a@example.com")


@pytest.mark.parametrize(("subject", "ref"), [
    ("[T-1042] order", "T-1042"),
    ("Re: [t-1042] order", "T-1042"),
    ("پاسخ: [T-۱۰۴۲] سفارش", "T-1042"),
    ("[T-١٠٤٢]", "T-1042"),
    ("[ T-1042 ]", "T-1042"),
    ("T-1042 without brackets", None),
    ("[T-12]", None),
    ("no reference", None),
])
def test_ticket_ref_from_subject(subject: str, ref: str | None) -> None:
    assert parse_email(build(Subject=subject)).message.ticket_ref == ref


def test_mail_without_a_message_id_gets_a_stable_synthetic_one() -> None:
    raw = (CORPUS / "15-no-message-id.eml").read_bytes()
    first, again = parse_email(raw).message, parse_email(raw).message
    expected = f"sha256-{hashlib.sha256(raw).hexdigest()[:40]}@kartabl.invalid"
    check(first, provider_id=expected, thread_key=expected, text="Please open the attached file. Scanned on MFP-4410.",
          subject="Scanned document", sender_name="Office Scanner", automatic=False)
    assert again.provider_id == expected
    assert first.raw["message_id"] is None
    assert files(first) == [("scan0001.pdf", "application/pdf", 148)]


@pytest.mark.parametrize("value", ["", "<>", "<not an id>", "no-at-sign"])
def test_an_unusable_message_id_is_replaced_too(value: str) -> None:
    header = f"Message-ID: {value}\n".encode() if value else b""
    raw = build().replace(b"Message-ID: <q1@mail.example.com>\n", header)
    assert parse_email(raw).message.provider_id.endswith("@kartabl.invalid")


def test_received_at_prefers_the_mailbox_time_then_the_date_header() -> None:
    arrived = dt.datetime(2024, 3, 4, 10, 20, tzinfo=dt.timezone(dt.timedelta(hours=3, minutes=30)))
    arrival = parse_email(build(), received_at=arrived).message.received_at
    assert arrival == dt.datetime(2024, 3, 4, 6, 50, tzinfo=dt.UTC)
    assert parse_email(build()).message.received_at == dt.datetime(2024, 3, 4, 6, 45, tzinfo=dt.UTC)
    # email.utils reads IMAP's "-0000" zone as a naive time; it means UTC
    naive = parse_email(build(), received_at=dt.datetime(2024, 3, 4, 10, 20)).message.received_at
    assert naive == dt.datetime(2024, 3, 4, 10, 20, tzinfo=dt.UTC)


@pytest.mark.parametrize("date", ["not a date", "Mon, 4 Mar 2024 10:15:00 -0000", "Mon, 4 Mar 2024 10:15:00"])
def test_a_date_without_a_zone_or_no_date_at_all_means_now(date: str) -> None:
    before = dt.datetime.now(dt.UTC)
    received = parse_email(build(Date=date)).message.received_at
    assert before <= received <= dt.datetime.now(dt.UTC)


# -- senders -------------------------------------------------------------------------------------


def test_mail_without_from_cannot_become_a_ticket_message() -> None:
    with pytest.raises(UnparseableEmail, match="From"):
        parse("18-no-from.eml")


@pytest.mark.parametrize("sender", ["Sara", "<>", "undisclosed-recipients:;", "a@", "sara@localhost"])
def test_a_from_that_is_no_email_address_cannot_either(sender: str) -> None:
    raw = build().replace(b"From: Sara Ahmadi <sara@example.com>", f"From: {sender}".encode())
    with pytest.raises(UnparseableEmail):
        parse_email(raw)


def test_the_first_of_several_from_addresses_is_the_sender() -> None:
    raw = build().replace(b"From: Sara Ahmadi <sara@example.com>", b"From: Sara <Sara@Example.com>, ali@example.com")
    check(parse_email(raw).message, sender=Address.parse("email", "sara@example.com"), sender_name="Sara")


# -- automatic mail ------------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "reason"), [
    ({"Auto_Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
    ({"Auto_Submitted": "auto-generated"}, "Auto-Submitted: auto-generated"),
    ({"Precedence": "bulk"}, "Precedence: bulk"),
    ({"Precedence": "junk"}, "Precedence: junk"),
    ({"Precedence": "list"}, "Precedence: list"),
    ({"List_Id": "Support talk <talk.lists.example.org>"}, "List-Id: Support talk <talk.lists.example.org>"),
    ({"List_Unsubscribe": "<mailto:leave@lists.example.org>"}, "List-Unsubscribe: <mailto:leave@lists.example.org>"),
    ({"List_Post": "<mailto:talk@lists.example.org>"}, "List-Post: <mailto:talk@lists.example.org>"),
    ({"X_Loop": "support@example.com"}, "X-Loop: support@example.com"),
    ({"X_Auto_Response_Suppress": "DR, OOF, AutoReply"}, "X-Auto-Response-Suppress: DR, OOF, AutoReply"),
    ({"X_Autoreply": "yes"}, "X-Autoreply: yes"),
    ({"X_Autorespond": "Vacation"}, "X-Autorespond: Vacation"),
    ({"Return_Path": "<>"}, "Return-Path: <>"),
    ({"From": "MAILER-DAEMON@mx.example.org"}, "From: mailer-daemon@mx.example.org"),
    ({"From": "Postmaster <postmaster@example.org>"}, "From: postmaster@example.org"),
    ({"Message_ID": "<kartabl-17.T-1016@Support.Example.COM>"},
     "Message-ID: <kartabl-17.T-1016@Support.Example.COM> is our own"),
])
def test_each_loop_header_marks_mail_automatic(headers: dict[str, str], reason: str) -> None:
    parsed = parse_email(build(**headers), own_domains=OWN_DOMAINS)
    assert parsed.loop_reasons == (reason,)
    assert parsed.message.automatic is True
    assert parsed.message.raw["loop_reasons"] == [reason]


@pytest.mark.parametrize("report_type", ["delivery-status", "disposition-notification"])
def test_a_multipart_report_is_automatic(report_type: str) -> None:
    msg = EmailMessage()
    msg["From"] = "receipts@example.org"
    msg["Message-ID"] = "<r1@example.org>"
    msg.set_content("report")
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", report_type)
    assert parse_email(bytes(msg)).loop_reasons == (f"Content-Type: multipart/report; report-type={report_type}",)


@pytest.mark.parametrize("headers", [
    {}, {"Auto_Submitted": "no"}, {"Precedence": "first-class"}, {"Return_Path": "<sara@example.com>"},
    {"Message_ID": "<x@mail.support.example.com>"},  # a subdomain is not our own domain
])
def test_mail_a_person_wrote_is_not_automatic(headers: dict[str, str]) -> None:
    parsed = parse_email(build(**headers), own_domains=OWN_DOMAINS)
    assert parsed.loop_reasons == ()
    assert parsed.message.automatic is False


def test_out_of_office_reply() -> None:
    parsed = parse("13-out-of-office.eml")
    assert parsed.loop_reasons == ("Auto-Submitted: auto-replied (vacation)", "Precedence: bulk",
                                   "X-Auto-Response-Suppress: All", "X-Autoreply: yes")
    check(
        parsed.message,
        automatic=True,
        subject="پاسخ خودکار: [T-1020] تعمیر دستگاه",
        ticket_ref="T-1020",
        in_reply_to=("kartabl-21.T-1020@support.example.com",),
        text=(f"من تا ۲۰ اسفند در مرخصی هستم و به ایمیل{ZWNJ}ها دسترسی ندارم.\n"
              "در موارد فوری با شماره ۰۲۱-۸۸۰۰۰۰۰۰ تماس بگیرید."),
    )
    assert parsed.bounced == ()


def test_mailing_list_mail() -> None:
    parsed = parse("14-mailing-list.eml")
    assert parsed.loop_reasons == (
        "Precedence: list",
        "List-Id: Support talk <support-talk.lists.example.org>",
        "List-Post: <mailto:support-talk@lists.example.org>",
        "List-Unsubscribe: <mailto:support-talk-leave@lists.example.org>",
    )
    check(parsed.message, automatic=True, subject="[Support-talk] Weekly schedule", sender_name="Kaveh Rahimi",
          language="en", provider_id="170986380012.4410.887155@lists.example.org")
    assert parsed.message.text.startswith("Hi all,\n\nThe on-call schedule for next week")


# -- bounces -------------------------------------------------------------------------------------

BOUNCE_REASON = "550 5.1.1 <sara@example.com>: Recipient address rejected: User unknown in virtual mailbox table"


def test_a_delivery_failure_names_the_reply_that_failed() -> None:
    parsed = parse("12-postfix-dsn-bounce.eml")
    assert parsed.bounced == ("kartabl-17.T-1016@support.example.com",)
    assert parsed.bounce_reason == BOUNCE_REASON
    assert parsed.loop_reasons == (
        "Auto-Submitted: auto-replied",
        "Return-Path: <>",
        "Content-Type: multipart/report; report-type=delivery-status",
        "From: mailer-daemon@mail.support.example.com",
    )
    message = parsed.message
    check(
        message,
        in_reply_to=("kartabl-17.T-1016@support.example.com",),
        automatic=True,
        sender=Address.parse("email", "MAILER-DAEMON@mail.support.example.com"),
        sender_name=None,
        subject="Undelivered Mail Returned to Sender",
        ticket_ref=None,
        language="en",
    )
    assert message.text.startswith(f"Delivery failed to sara@example.com: {BOUNCE_REASON}\n\n"
                                   "This is the mail system at host mail.support.example.com.\n")
    assert "(in reply to RCPT TO command)" in message.text
    assert files(message) == [("attachment-1.txt", "message/delivery-status", 460),
                              ("attachment-2.txt", "text/rfc822-headers", 659)]
    assert message.raw["bounced"] == ["kartabl-17.T-1016@support.example.com"]


def test_a_delay_notice_is_no_failure_but_still_threads() -> None:
    raw = (CORPUS / "12-postfix-dsn-bounce.eml").read_bytes().replace(b"Action: failed", b"Action: delayed")
    parsed = parse_email(raw, own_domains=OWN_DOMAINS)
    assert (parsed.bounced, parsed.bounce_reason) == ((), None)
    assert parsed.message.in_reply_to == ("kartabl-17.T-1016@support.example.com",)
    assert not parsed.message.text.startswith("Delivery failed")


def test_a_bounce_returning_the_whole_message_names_it_too() -> None:
    raw = b"""\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: support@example.com
Subject: Delivery Status Notification (Failure)
Message-ID: <dsn.1@mx.google.com>
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000dsn"; report-type=delivery-status

--000000000000dsn
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to ali@example.com.

--000000000000dsn
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com

Final-Recipient: rfc822; ali@example.com
Action: failed
Status: 5.1.1

--000000000000dsn
Content-Type: message/rfc822

From: support@example.com
To: ali@example.com
Message-ID: <kartabl-9.T-1009@support.example.com>
Subject: [T-1009] Your ticket

Your ticket T-1009 is open.

--000000000000dsn--
"""
    parsed = parse_email(raw)
    assert parsed.bounced == ("kartabl-9.T-1009@support.example.com",)
    assert parsed.bounce_reason == "5.1.1"
    assert parsed.message.text == ("Delivery failed to ali@example.com: 5.1.1\n\n** Address not found **\n\n"
                                   "Your message wasn't delivered to ali@example.com.")
    assert parsed.message.ticket_ref is None  # the ticket is found through in_reply_to
    assert parsed.message.in_reply_to == ("kartabl-9.T-1009@support.example.com",)
    assert [item.filename for item in parsed.message.attachments] == ["attachment-1.txt", "forwarded-1.eml"]


# -- malformed and hostile input ---------------------------------------------------------------


def test_malformed_mime_still_yields_text_and_records_its_defects() -> None:
    message = parse("11-malformed-mime.eml").message
    check(
        message,
        text=("Hello,\nThe invoice PDF you sent me does not open. I attached what I received so you can see."
              "\n\nRegards, Nima\n\nOrder number: 1042."),
        subject="Invoice PDF does not open",
        provider_id="broken.20240308133700.77@gw.example.org",
        language="en",
    )
    assert [name for name, _, _ in files(message)] == ["attachment-1.pdf"]
    assert message.raw["defects"] == ["BrokenHeaderFolding: repaired 1 line(s)", "CloseBoundaryNotFoundDefect",
                                      "InvalidBase64CharactersDefect", "InvalidBase64PaddingDefect"]


def test_a_missing_blank_line_before_the_body_is_not_taken_for_broken_folding() -> None:
    raw = b"From: sara@example.com\nSubject: Server\nHello team,\nNote: the server is down\n\nSara\n"
    message = parse_email(raw).message
    check(message, subject="Server", text="Hello team,\nNote: the server is down\n\nSara")
    assert message.raw["defects"] == ["MissingHeaderBodySeparatorDefect"]


def test_a_multipart_without_boundary_is_read_as_text() -> None:
    raw = b"From: sara@example.com\nContent-Type: multipart/mixed\n\nHello there\n"
    message = parse_email(raw).message
    check(message, text="Hello there", attachments=())
    assert "NoBoundaryInMultipartDefect" in message.raw["defects"]


def test_a_base64_encoded_attached_message_is_decoded_first() -> None:
    inner = b"From: shop@example.org\r\nSubject: Order 7\r\nMessage-ID: <o7@example.org>\r\n\r\nOrder 7 shipped.\r\n"
    raw = (b"From: sara@example.com\nContent-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
           b"see below\n--B\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(inner) + b"--B--\n")
    message = parse_email(raw).message
    assert message.text == ("see below\n\n---------- Forwarded message ---------\nFrom: shop@example.org\n"
                            "Subject: Order 7\n\nOrder 7 shipped.")
    assert [(item.filename, item.data) for item in message.attachments] == [("forwarded-1.eml", inner)]


@pytest.mark.parametrize("name", PARSEABLE)
def test_every_corpus_message_is_well_formed_for_the_core(name: str) -> None:
    parsed = parse(name)
    message = parsed.message
    assert set(message.raw) == RAW_KEYS
    json.dumps(message.raw, ensure_ascii=False).encode("utf-8")  # JSON-able, no lone surrogates
    assert message.received_at.tzinfo is not None
    assert message.thread_key == message.provider_id
    assert message.automatic == bool(parsed.loop_reasons)
    assert message.raw["loop_reasons"] == list(parsed.loop_reasons)
    assert message.text and message.text == message.text.strip()
    assert "\ue000" not in message.text + message.raw["full_text"]
    assert "\r" not in message.text
    assert "\n\n\n" not in message.text
    assert all(line == line.rstrip() for line in message.text.split("\n"))
    assert len(message.raw["full_text"]) <= 200_000
    text = (CORPUS / name).read_bytes()
    assert parse_email(text, own_domains=OWN_DOMAINS) == parsed  # pure: the same bytes, the same result


def _outcome(raw: bytes) -> None:
    """Either a ParsedEmail or the parser's own clear error; anything else fails the test."""
    with contextlib.suppress(UnparseableEmail):
        assert isinstance(parse_email(raw), ParsedEmail)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_either_parse_or_raise_unparseable(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        _outcome(rng.randbytes(rng.randrange(0, 4000)))
        _outcome(b"From: a@b.example\r\n" + rng.randbytes(rng.randrange(0, 4000)))


def test_empty_input_is_unparseable() -> None:
    with pytest.raises(UnparseableEmail):
        parse_email(b"")


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_truncated_and_damaged_corpus_files_either_parse_or_raise_unparseable(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    rng = random.Random(name)
    for cut in range(0, len(raw), max(1, len(raw) // 25)):
        _outcome(raw[:cut])
    for _ in range(25):
        damaged = bytearray(raw)
        for _ in range(rng.randrange(1, 12)):
            damaged[rng.randrange(len(damaged))] = rng.choice(b"<>=?\"\\;:\n\r\t -\x00\xff")
        _outcome(bytes(damaged))


def test_hostile_nesting_is_unparseable_not_a_crash() -> None:
    depth = 3000
    raw = b"From: a@b.example\nContent-Type: multipart/mixed; boundary=b0\n\n"
    raw += b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(depth))
    _outcome(raw)


# -- language ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "language"), [
    ("سلام، سفارشم کجاست؟", "fa"),
    ("مرحبا، أين طلبي؟", "fa"),
    ("Hello, where is my order?", "en"),
    ("My order SN-48213 هنوز نرسیده", "fa"),  # a third of the letters are enough
    ("Заказ не пришёл", None),
    ("12345 !!! ۱۲۳", None),
    ("", None),
])
def test_guess_language(text: str, language: str | None) -> None:
    assert guess_language(text) == language
