"""Outgoing mail: an OutboundMessage as the email a customer receives, threaded into their conversation."""

from __future__ import annotations

import email.utils
import html
import mimetypes
import re
from email.message import EmailMessage
from pathlib import Path

from channels.email.settings import EmailSettings
from channels.email.text import guess_language
from gateway.messages import OutboundMessage, utcnow

#: The most earlier Message-IDs a reply carries in References (RFC 5322 sets no limit; servers do).
REFERENCES_MAX = 20
_REF_IN_SUBJECT = re.compile(r"\[T-\d+\]", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|پاسخ|رد)\s*:", re.IGNORECASE)
_DEFAULT_SUBJECT = {"fa": "درخواست پشتیبانی", "en": "Your support request"}


def message_id_for(out: OutboundMessage, domain: str) -> str:
    """Our Message-ID of `out`, without brackets. Stable across retries, so a resend is recognisably the same."""
    return f"{out.key}.{out.ticket_ref}@{domain}"


def build_email(out: OutboundMessage, settings: EmailSettings) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = email.utils.formataddr((settings.display_name, settings.address))
    mail["To"] = out.to.value
    mail["Subject"] = subject_for(out)
    mail["Date"] = email.utils.format_datetime(utcnow())
    mail["Message-ID"] = f"<{message_id_for(out, settings.domain)}>"
    references = [k for k in out.thread_keys if _usable_id(k)][-REFERENCES_MAX:]
    if out.in_reply_to and _usable_id(out.in_reply_to):
        mail["In-Reply-To"] = f"<{out.in_reply_to}>"
        if out.in_reply_to not in references:
            references.append(out.in_reply_to)
    if references:
        mail["References"] = " ".join(f"<{k}>" for k in references)
    mail["X-Kartabl-Ticket"] = out.ticket_ref
    if out.automatic:
        # RFC 3834: tells the customer's systems not to answer us automatically in turn.
        mail["Auto-Submitted"] = "auto-replied"
        mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(out.text, charset="utf-8", cte="quoted-printable" if out.text.isascii() else "base64")
    mail.add_alternative(html_body(out.text, out.language), subtype="html", charset="utf-8")
    for attachment in out.attachments:
        _attach(mail, attachment.filename, attachment.content_type, Path(attachment.path))
    return mail


def subject_for(out: OutboundMessage) -> str:
    """The customer's subject, marked as a reply and carrying the ticket reference once."""
    lang = "en" if out.language == "en" else "fa"
    subject = (out.subject or "").strip() or _DEFAULT_SUBJECT[lang]
    if out.in_reply_to and not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    if not _REF_IN_SUBJECT.search(subject):
        subject = f"{subject} [{out.ticket_ref}]"
    return subject


def html_body(text: str, language: str | None) -> str:
    """The text as escaped HTML, right-to-left when it is mostly Persian or Arabic."""
    rtl = (language or guess_language(text)) in ("fa", "ar")
    direction, lang = ("rtl", "fa") if rtl else ("ltr", "en")
    align = "right" if rtl else "left"
    paragraphs = "".join(
        f"<p>{html.escape(block).replace(chr(10), '<br>')}</p>" for block in re.split(r"\n\s*\n", text.strip())
    )
    return (f'<!DOCTYPE html><html dir="{direction}" lang="{lang}"><head><meta charset="utf-8"></head>'
            f'<body dir="{direction}" style="direction:{direction};text-align:{align};'
            f'font-family:Tahoma,Vazirmatn,Arial,sans-serif;">{paragraphs}</body></html>')


def _usable_id(key: str) -> bool:
    # Thread keys too long for the database are stored as hashes; they are no Message-ID to point at.
    return "@" in key and not key.startswith("sha256:") and not any(c in key for c in "<> \r\n")


def _attach(mail: EmailMessage, filename: str, content_type: str, path: Path) -> None:
    maintype, _, subtype = (content_type or "").partition("/")
    if not subtype or maintype in ("multipart", "message"):  # a file is bytes; these need a structure
        guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        maintype, _, subtype = guessed.partition("/")
    mail.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=filename)
