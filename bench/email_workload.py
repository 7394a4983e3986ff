"""The mail a support mailbox receives, as raw bytes: Persian and English, plain and HTML, a few files, replies.

Built with the standard library's email package the way common clients shape their mail (Gmail's
base64 UTF-8 with an HTML alternative, Thunderbird's plain text, attachments in multipart/mixed, a few
Received and DKIM headers), so the gateway's parser sees the structures and sizes it meets in a real
inbox, not one-line samples. Everything is built up front from a seed: building is never measured.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.policy
import email.utils
import html
import random
from email.message import EmailMessage

SUPPORT_ADDRESS = "support@shop.example"

#: How an MDA writes a Maildir file: LF line ends (Dovecot serves them as CRLF).
_MAILDIR = email.policy.default.clone(linesep="\n")
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "chmail.ir", "mail.example.ir")
_FA_NAMES = ("سارا احمدی", "علی رضایی", "مریم حسینی", "رضا کریمی", "زهرا محمدی", "حسین موسوی", "نگار صادقی")
_EN_NAMES = ("Sarah Miller", "James Brown", "Anna Schmidt", "David Chen", "Maria Garcia")
_FA_SENTENCES = (
    "سفارش شماره {order} را {days} روز پیش ثبت کردم و هنوز به دستم نرسیده است.",
    "کد رهگیری پستی که برایم فرستادید در سایت پست پیدا نمی‌شود.",
    "مبلغ از حسابم کسر شده ولی وضعیت سفارش هنوز «در انتظار پرداخت» است.",
    "یکی از کالاها آسیب‌دیده به دستم رسید؛ عکسش را پیوست کرده‌ام.",
    "آیا امکان تعویض سایز وجود دارد؟ سایز ۴۲ برایم کوچک است.",
    "فاکتور رسمی با کد اقتصادی شرکت لازم دارم.",
    "شماره تماس من ۰۹۱۲۳۴۵۶۷۸۹ است، اگر لازم شد تماس بگیرید.",
    "لطفاً هر چه زودتر بررسی کنید و نتیجه را اطلاع دهید.",
)
_EN_SENTENCES = (
    "I placed order #{order} {days} days ago and it still has not arrived.",
    "The tracking number you sent me does not show up on the courier's site.",
    "My card was charged but the order still says 'awaiting payment'.",
    "One of the items arrived damaged; I have attached a photo.",
    "Is it possible to exchange it for a different size? The 42 is too small.",
    "I need a proper invoice with our company's VAT number on it.",
    "You can reach me on +44 20 7946 0958 if that is easier.",
    "Could you please look into it and let me know as soon as possible?",
)
_FA_SUBJECTS = ("پیگیری سفارش {order}", "مشکل در پرداخت", "درخواست تعویض کالا", "فاکتور سفارش {order}")
_EN_SUBJECTS = ("Order {order} not delivered", "Payment problem", "Exchange request", "Invoice for order {order}")
_FILES = (("application/pdf", "فاکتور {order}.pdf", b"%PDF-1.4\n"), ("image/jpeg", "IMG_{order}.jpg", b"\xff\xd8\xff\xe0"),
          ("application/pdf", "invoice-{order}.pdf", b"%PDF-1.4\n"))


@dataclasses.dataclass(frozen=True)
class Mix:
    """Shares of the kinds of mail; each message draws its kind independently."""

    new_customer: float = 0.6  # the rest are follow-ups from customers already seen
    threaded_reply: float = 0.6  # of follow-ups: answers their earlier mail (In-Reply-To), quoting it
    persian: float = 0.6
    html_alternative: float = 0.4
    attachment: float = 0.05


@dataclasses.dataclass
class _Customer:
    name: str
    address: str
    persian: bool
    last_id: str | None = None
    last_subject: str | None = None
    last_text: str | None = None


def message_id(raw: bytes) -> str:
    """The Message-ID of a message built here, without brackets: the provider id the gateway stores."""
    start = raw.index(b"\nMessage-ID: <") + len(b"\nMessage-ID: <")
    return raw[start:raw.index(b">", start)].decode("ascii")


def inbox(count: int, *, tag: str, seed: int, mix: Mix = Mix()) -> list[bytes]:
    """`count` customer emails to SUPPORT_ADDRESS, each with a unique Message-ID that contains `tag`."""
    rng = random.Random(seed)
    customers: list[_Customer] = []
    start = dt.datetime(2024, 3, 5, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=3, minutes=30)))
    out = []
    for n in range(count):
        if not customers or rng.random() < mix.new_customer:
            customers.append(_new_customer(rng, tag, len(customers), mix))
            customer = customers[-1]
        else:
            customer = rng.choice(customers)
        threaded = customer.last_id is not None and rng.random() < mix.threaded_reply
        order = rng.randrange(100_000, 999_999)
        when = start + dt.timedelta(seconds=37 * n)
        mail = _headers(rng, customer, f"{tag}-{n:06d}.{rng.getrandbits(40):010x}", when)
        if threaded:
            mail["Subject"] = f"Re: {customer.last_subject}"
            mail["In-Reply-To"] = f"<{customer.last_id}>"
            mail["References"] = f"<{customer.last_id}>"
        else:
            subjects = _FA_SUBJECTS if customer.persian else _EN_SUBJECTS
            mail["Subject"] = rng.choice(subjects).format(order=order)
        text = _body(rng, customer, order)
        quoted = _quote(customer, when) if threaded else ""
        mail.set_content(text + quoted)
        if rng.random() < mix.html_alternative:
            mail.add_alternative(_html(text, customer.persian, quoted), subtype="html")
        if rng.random() < mix.attachment:
            content_type, name, magic = rng.choice(_FILES)
            maintype, subtype = content_type.split("/")
            data = magic + rng.randbytes(rng.randrange(8_000, 40_000))
            mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=name.format(order=order))
        customer.last_id = mail["Message-ID"].strip("<>")
        customer.last_subject, customer.last_text = mail["Subject"].removeprefix("Re: "), text
        out.append(mail.as_bytes(policy=_MAILDIR))
    return out


def _new_customer(rng: random.Random, tag: str, index: int, mix: Mix) -> _Customer:
    persian = rng.random() < mix.persian
    name = rng.choice(_FA_NAMES if persian else _EN_NAMES)
    return _Customer(name, f"{tag}.customer{index}@{rng.choice(_DOMAINS)}", persian)


def _headers(rng: random.Random, customer: _Customer, local_id: str, when: dt.datetime) -> EmailMessage:
    domain = customer.address.rpartition("@")[2]
    mail = EmailMessage()
    # What a message has picked up by the time it reaches the support mailbox.
    mail["Return-Path"] = f"<{customer.address}>"
    for hop in range(2):
        mail["Received"] = (f"from mx{hop}.{domain} (mx{hop}.{domain} [203.0.113.{rng.randrange(1, 250)}]) "
                            f"by mx.shop.example with ESMTPS id {rng.getrandbits(48):012X}; "
                            f"{email.utils.format_datetime(when)}")
    signature = base64.b64encode(rng.randbytes(256)).decode("ascii")
    mail["DKIM-Signature"] = (f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1; h=from:to:subject:date; "
                              f"bh={base64.b64encode(rng.randbytes(32)).decode('ascii')}; b="
                              + " ".join(signature[i:i + 70] for i in range(0, len(signature), 70)))
    mail["From"] = email.utils.formataddr((customer.name, customer.address))
    mail["To"] = email.utils.formataddr(("پشتیبانی فروشگاه", SUPPORT_ADDRESS))
    mail["Date"] = email.utils.format_datetime(when)
    mail["Message-ID"] = f"<{local_id}@mail.{domain}>"
    return mail


def _body(rng: random.Random, customer: _Customer, order: int) -> str:
    sentences = _FA_SENTENCES if customer.persian else _EN_SENTENCES
    chosen = rng.sample(sentences, rng.randrange(2, 6))
    greeting, thanks = ("سلام، وقت بخیر.", "با تشکر") if customer.persian else ("Hello,", "Thanks,")
    body = " ".join(s.format(order=order, days=rng.randrange(2, 15)) for s in chosen)
    return f"{greeting}\n\n{body}\n\n{thanks}\n{customer.name}\n"


def _quote(customer: _Customer, when: dt.datetime) -> str:
    """The customer's earlier mail quoted under the new text, as mail clients do on Reply."""
    if customer.persian:
        attribution = f"در تاریخ {when:%Y/%m/%d}، {customer.name} <{customer.address}> نوشت:"
    else:
        attribution = f"On {when:%a, %d %b %Y at %H:%M}, {customer.name} <{customer.address}> wrote:"
    quoted = "\n".join(f"> {line}" if line else ">" for line in (customer.last_text or "").splitlines())
    return f"\n{attribution}\n{quoted}\n"


def _html(text: str, persian: bool, quoted: str) -> str:
    direction = "rtl" if persian else "ltr"
    paragraphs = "".join(f'<div dir="{direction}">{html.escape(p).replace(chr(10), "<br>")}</div>'
                         for p in text.split("\n\n"))
    history = ""
    if quoted:
        history = ('<div class="gmail_quote"><blockquote class="gmail_quote" style="margin:0 0 0 .8ex;'
                   f'border-left:1px solid #ccc;padding-left:1ex">{html.escape(quoted)}</blockquote></div>')
    return (f'<div dir="{direction}" style="font-family:Tahoma,sans-serif">{paragraphs}</div>{history}')
