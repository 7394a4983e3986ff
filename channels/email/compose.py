"""Outgoing mail: an OutboundMessage as the email a customer receives, threaded into their conversation."""

from __future__ import annotations

import base64
import email.quoprimime
import email.utils
import html
import mimetypes
import re
import secrets
from email import charset
from email.header import Header
from pathlib import Path

from channels.email.settings import EmailSettings
from channels.email.text import guess_language
from gateway.messages import OutboundMessage, utcnow

#: The most earlier Message-IDs a reply carries in References (RFC 5322 sets no limit; servers do).
REFERENCES_MAX = 20
_REF_IN_SUBJECT = re.compile(r"\[T-\d+\]", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|پاسخ|رد)\s*:", re.IGNORECASE)
_DEFAULT_SUBJECT = {"fa": "درخواست پشتیبانی", "en": "Your support request"}
_CRLF = "\r\n"
_UTF8_WORDS = charset.Charset("utf-8")  # encoded words in headers: base64 or Q, whichever is shorter
#: Characters of an attachment's name kept (the end, with its extension): the header stays one short line.
_FILENAME_MAX = 120


def message_id_for(out: OutboundMessage, domain: str) -> str:
    """Our Message-ID of `out`, without brackets. Stable across retries, so a resend is recognisably the same."""
    return f"{out.key}.{out.ticket_ref}@{domain}"


def build_email(out: OutboundMessage, settings: EmailSettings) -> bytes:
    """The email as sent over SMTP (CRLF line ends): our headers, then text and HTML alternatives and files.

    Written here rather than through `email.message`: we choose every header and part, and the
    standard library's generator cost ten times as much (`email.policy.default` builds a header
    object, and a class, for every header it touches). Each header value is made safe first (no
    line breaks from a customer's subject, Persian words as RFC 2047 encoded words, long lists
    folded); the parts are base64 or quoted-printable, so every line is ASCII and short.
    """
    headers = [
        ("From", _mailbox(settings.display_name, settings.address)),
        ("To", _one_line(out.to.value)),
        ("Subject", _words("Subject", subject_for(out))),
        ("Date", email.utils.format_datetime(utcnow())),
        ("Message-ID", f"<{message_id_for(out, settings.domain)}>"),
    ]
    references = [k for k in out.thread_keys if _usable_id(k)][-REFERENCES_MAX:]
    if out.in_reply_to and _usable_id(out.in_reply_to):
        headers.append(("In-Reply-To", f"<{out.in_reply_to}>"))
        if out.in_reply_to not in references:
            references.append(out.in_reply_to)
    if references:
        headers.append(("References", _folded([f"<{k}>" for k in references], len("References: "))))
    headers.append(("X-Kartabl-Ticket", out.ticket_ref))
    if out.automatic:
        # RFC 3834: tells the customer's systems not to answer us automatically in turn.
        headers += [("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")]
    content_type, body = _body(out)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers) + "MIME-Version: 1.0\r\n" + content_type
    return head.encode("utf-8") + b"\r\n" + body


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


def _one_line(value: str) -> str:
    # A line break in a value would end the header and start one the sender chose.
    return " ".join(value.split()) if any(c in value for c in "\r\n\t\v\f\x00") else value


def _mailbox(name: str, address: str) -> str:
    """`Name <address>`, the name in encoded words if need be, the address on a line of its own if long."""
    value = email.utils.formataddr((_one_line(name), address), charset="utf-8")
    return _folded(value.rsplit(" ", 1), len("From: ")) if " " in value else value


def _words(name: str, value: str) -> str:
    """A free-text header value: ASCII folded at spaces, anything else as RFC 2047 encoded words."""
    value = _one_line(value)
    charset = "us-ascii" if value.isascii() else _UTF8_WORDS
    return Header(value, charset, header_name=name).encode(linesep=_CRLF)


def _folded(items: list[str], indent: int) -> str:
    """Space-separated items, a new continuation line before an item that would pass 78 characters."""
    folded, width = "", indent
    for item in items:
        if folded and width + 1 + len(item) > 78:
            folded, width = f"{folded}{_CRLF} {item}", 1 + len(item)
        else:
            folded, width = f"{folded} {item}" if folded else item, width + len(item) + (1 if folded else 0)
    return folded


#: A MIME part: its header lines (each ending in CRLF) and its encoded body.
_Part = tuple[str, bytes]


def _body(out: OutboundMessage) -> _Part:
    """Text and HTML alternatives, then the agent's files, if any."""
    alternatives = _multipart("alternative", [
        _text("plain", out.text), _text("html", html_body(out.text, out.language))])
    if not out.attachments:
        return alternatives
    return _multipart("mixed", [alternatives, *(_file(a.filename, a.content_type, Path(a.path))
                                                for a in out.attachments)])


def _multipart(subtype: str, parts: list[_Part]) -> _Part:
    # "=_" never occurs in base64 or quoted-printable text, so no part can contain the boundary.
    boundary = f"=_{secrets.token_hex(16)}"
    delimiter = f"--{boundary}\r\n".encode()
    body = b"".join(delimiter + head.encode() + b"\r\n" + data + b"\r\n" for head, data in parts)
    return (f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n',
            body + f"--{boundary}--\r\n".encode())


def _text(subtype: str, text: str) -> _Part:
    if text.isascii():  # an English text stays readable in the raw mail
        encoded, cte = email.quoprimime.body_encode(text, maxlinelen=76, eol=_CRLF).encode("ascii"), "quoted-printable"
    else:
        encoded, cte = _base64(text.encode("utf-8")), "base64"
    return f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n", encoded


def _file(filename: str, content_type: str, path: Path) -> _Part:
    maintype, _, subtype = (content_type or "").partition("/")
    if not subtype or maintype in ("multipart", "message"):  # a file is bytes; these need a structure
        guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        maintype, _, subtype = guessed.partition("/")
    name = _one_line(filename)[-_FILENAME_MAX:]
    # RFC 2231 for a name in Persian; mail readers show it as written.
    named = (f'filename="{email.utils.quote(name)}"' if name.isascii()
             else f"filename*={email.utils.encode_rfc2231(name, 'utf-8')}")
    head = (f"Content-Type: {maintype}/{subtype}\r\nContent-Disposition: attachment; {named}\r\n"
            "Content-Transfer-Encoding: base64\r\n")
    return head, _base64(path.read_bytes())


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
