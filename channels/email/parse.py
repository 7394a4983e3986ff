"""Parsing one raw email into the message agents see: a pure function on bytes, standard library only."""

from __future__ import annotations

import binascii
import dataclasses
import datetime as dt
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import enum
import hashlib
import mimetypes
import re
from collections import Counter
from collections.abc import Collection
from email.headerregistry import HeaderRegistry
from typing import Any
from email.parser import BytesParser

from channels.email.signature import signature_phones
from channels.email.text import (
    QUOTE_MARK,
    decode_bytes,
    guess_language,
    history_start,
    html_to_text,
    repair_undecoded,
    strip_history,
    tidy,
    unflow,
    without_marks,
)
from gateway.addresses import Address, AddressError
from gateway.domain import ChannelKind
from gateway.messages import InboundAttachment, InboundMessage, utcnow

MAX_REPLY_KEYS = 20
MAX_FULL_TEXT = 200_000
MAX_DEFECTS = 10
FORWARD_BANNER = "---------- Forwarded message ---------"

class _HeaderClasses(HeaderRegistry):
    """The standard header registry, making each header class once.

    The stock registry creates a new class (`type(...)`) for every header object it builds, a
    third of the cost of reading a message's headers.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


_MISSING = object()


class _ParsedMessage(email.message.EmailMessage):
    """An EmailMessage that builds each header object once, however often it is read.

    `policy.default` parses a header's value again on every access, and reading one message asks
    for its Content-Type about twenty times (content type, charset, parameters, file name). Every
    way of changing the headers forgets what was built.
    """

    def get(self, name: str, failobj: Any = None) -> Any:
        built = self.__dict__.setdefault("_built", {})
        key = name.lower()
        value = built.get(key, _MISSING)
        if value is _MISSING:
            value = built[key] = super().get(name, _MISSING)
        return failobj if value is _MISSING else value

    def _forget(self) -> None:
        self.__dict__.pop("_built", None)

    def set_raw(self, name: str, value: Any) -> None:
        self._forget()
        super().set_raw(name, value)

    def __setitem__(self, name: str, val: Any) -> None:
        self._forget()
        super().__setitem__(name, val)

    def __delitem__(self, name: str) -> None:
        self._forget()
        super().__delitem__(name)

    def add_header(self, _name: str, _value: str, **params: Any) -> None:
        self._forget()
        super().add_header(_name, _value, **params)

    def replace_header(self, _name: str, _value: Any) -> None:
        self._forget()
        super().replace_header(_name, _value)


# The standard library's default policy, with header objects built once (see the two classes above).
_POLICY = email.policy.default.clone(header_factory=_HeaderClasses(), message_factory=_ParsedMessage)
#: Writes an attached message back out as it came: headers are not refolded.
_AS_SENT = _POLICY.clone(refold_source="none", linesep="\r\n")
#: For a message `_AS_SENT` cannot write: the legacy generator writes what it holds, whatever it is.
_LENIENT = email.policy.compat32.clone(linesep="\r\n")
#: What the email package raises on some malformed headers instead of recording a defect.
_HEADER_BUGS = (email.errors.MessageError, IndexError, ValueError, TypeError, AttributeError, LookupError)
_MAX_NESTING = 40  # MIME levels walked; anything deeper is a hostile message, not a customer's
_MAX_FORWARD_DEPTH = 3  # forwards of forwards whose text we still read
_BODY_TYPES = frozenset({"text/plain", "text/html"})
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})


class UnparseableEmail(ValueError):
    """This message cannot become a ticket message (reason in str())."""


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedEmail:
    """A parsed email: the message for the core, and what the email channel itself acts on.

    `loop_reasons` say why the mail is automatic (empty when a person wrote it); `bounced` are the
    Message-IDs a delivery-status report says failed, and `bounce_reason` its diagnostic.
    """

    message: InboundMessage
    loop_reasons: tuple[str, ...]
    bounced: tuple[str, ...]
    bounce_reason: str | None


def parse_email(
    raw: bytes, *, own_domains: Collection[str] = (), received_at: dt.datetime | None = None,
) -> ParsedEmail:
    """The message in `raw` (RFC 5322 bytes, as IMAP returns them); raises only `UnparseableEmail`.

    `own_domains` are the domains of our own Message-IDs: one of them coming back marks a loop.
    `received_at` is the mailbox's arrival time (IMAP INTERNALDATE; naive means UTC, as a "-0000"
    zone does); without it, the Date header.
    """
    domains = _domains(own_domains)
    try:
        data = bytes(raw)
        repaired, notes = _repair_folding(data)
        msg = BytesParser(policy=_POLICY).parsebytes(repaired)
        return _parse(msg, data, domains, received_at, notes)
    except UnparseableEmail:
        raise
    except Exception as exc:  # hostile input makes the email package raise anything; callers catch one type
        reason = f"the email package could not read this message: {type(exc).__name__}: {exc}"
        raise UnparseableEmail(reason) from exc


def normalize_message_id(value: str | None) -> str | None:
    """The id in a Message-ID-like header ("<ABC@x>" -> "ABC@x"); None for garbage or nothing."""
    if not value:
        return None
    bracketed = re.search(r"<([^<>]*)>", value)
    candidate = (bracketed.group(1) if bracketed else value).strip()
    if len(candidate) > _MAX_ID or not _MESSAGE_ID.fullmatch(candidate):
        return None
    return candidate


_MESSAGE_ID = re.compile(r"[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+")
_MAX_ID = 998  # the longest line RFC 5322 allows


def _parse(
    msg: email.message.EmailMessage, raw: bytes, own_domains: frozenset[str], received_at: dt.datetime | None,
    notes: list[str],
) -> ParsedEmail:
    sender, sender_name = _sender(msg)
    walk = _Walk(top=True)
    walk.part(msg)
    message_id = normalize_message_id(_raw_header(msg, "Message-ID"))
    loop = _loop_reasons(msg, sender, message_id, own_domains)
    failed = _failed_deliveries(walk.status_blocks)
    bounced = tuple(dict.fromkeys(walk.returned_ids)) if failed else ()
    subject = _header(msg, "Subject") or None
    text, full_text = _texts(walk, failed, subject)
    provider_id = message_id or _synthetic_id(raw)
    message = InboundMessage(
        channel=ChannelKind.EMAIL, provider_id=provider_id, sender=sender, text=text,
        received_at=_received_at(msg, received_at), sender_name=sender_name, subject=subject,
        thread_key=provider_id, in_reply_to=_reply_keys(msg, walk.returned_ids),
        ticket_ref=_ticket_ref(subject), attachments=tuple(walk.attachments),
        claimed=() if loop else _signature_phones(walk, subject), automatic=bool(loop),
        language=guess_language(f"{subject or ''}\n{text}"),
        raw=_raw_fields(msg, full_text=full_text, html_only=walk.kinds == {"text/html"}, loop=loop,
                        bounced=bounced, defects=_defects(msg, notes)),
    )
    return ParsedEmail(message, loop, bounced, failed[0][1] if failed else None)


def _domains(own_domains: Collection[str]) -> frozenset[str]:
    if isinstance(own_domains, str):  # one domain passed bare would otherwise be read letter by letter
        own_domains = (own_domains,)
    return frozenset(domain.strip().lstrip("@").lower() for domain in own_domains)


def _synthetic_id(raw: bytes) -> str:
    """A Message-ID for mail without one: the same bytes fetched again get the same id."""
    return f"sha256-{hashlib.sha256(raw).hexdigest()[:40]}@kartabl.invalid"


# -- repairs before parsing -----------------------------------------------------------------------

_HEADER_START = re.compile(rb"[!-9;-~]+:")
#: Names that show a header block goes on; a body's "Note:" does not.
_KNOWN_HEADER = re.compile(
    rb"(?:from|to|cc|bcc|subject|date|message-id|mime-version|content-[a-z-]+|reply-to|sender|in-reply-to"
    rb"|references|received|return-path|delivered-to|auto-submitted|precedence|user-agent|x-[!-9;-~]+"
    rb"|list-[a-z-]+|dkim-signature|arc-[a-z-]+|authentication-results|thread-[a-z]+):",
    re.IGNORECASE,
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _repair_folding(raw: bytes) -> tuple[bytes, list[str]]:
    """Raw bytes with header lines folded without leading white space joined to the header above.

    The email package would end the header block at such a line, and a multipart message would lose
    its Content-Type. A stray line counts as a fold only when well-known headers follow it; otherwise
    the sender left out the blank line before the body, and the email package handles that.
    """
    end = _HEADER_END.search(raw)
    head, rest = (raw[:end.start()], raw[end.start():]) if end else (raw, b"")
    lines = head.split(b"\n")
    last_known = max((index for index, line in enumerate(lines) if _KNOWN_HEADER.match(line)), default=0)
    broken = [
        index for index, line in enumerate(lines[:last_known])
        if index and line[:1] not in (b" ", b"\t") and not _HEADER_START.match(line)
    ]
    if not broken:
        return raw, []
    for index in broken:
        lines[index] = b" " + lines[index]
    return b"\n".join(lines) + rest, [f"BrokenHeaderFolding: repaired {len(broken)} line(s)"]


# -- the MIME tree -------------------------------------------------------------------------------


class _Mode(enum.Enum):
    BODY = "body"  # text parts here are what the sender wrote
    ASIDE = "aside"  # other renderings of the body and their resources: files only
    REPORT = "report"  # the machine-readable parts of a multipart/report


class _Walk:
    """One pass over a MIME tree that decodes each part once: body texts, files, delivery reports.

    The outermost walk keeps files and marks quoted history in HTML; the walk of a forwarded message
    reads only its text (its files travel inside the forwarded .eml).
    """

    def __init__(self, *, top: bool, forward_depth: int = 0) -> None:
        self.top = top
        self.texts: list[str] = []
        self.kinds: set[str] = set()  # the content types the texts came from
        self.forwarded: list[str] = []
        self.attachments: list[InboundAttachment] = []
        self.status_blocks: list[email.message.Message] = []
        self.returned_ids: list[str] = []
        self._names: Counter[str] = Counter()
        self._forward_depth = forward_depth

    def part(self, part: email.message.Message, mode: _Mode = _Mode.BODY, level: int = 0) -> None:
        if level > _MAX_NESTING:
            return
        content_type = part.get_content_type()
        if part.is_multipart() and content_type.startswith("multipart/"):
            self._multipart(part, mode, level + 1)
        elif part.is_multipart() and content_type in _MESSAGE_TYPES:
            self._message(part, mode)
        elif part.is_multipart():  # message/delivery-status and other blocks of fields
            self._fields(part, mode)
        else:
            self._leaf(part, mode)

    def _multipart(self, part: email.message.Message, mode: _Mode, level: int) -> None:
        children = [child for child in part.get_payload() if isinstance(child, email.message.Message)]
        if part.get_content_subtype() == "alternative" and mode is _Mode.BODY:
            self._alternative(children, level)
            return
        for child, child_mode in zip(children, _child_modes(part, children, mode), strict=True):
            self.part(child, child_mode, level)

    def _alternative(self, children: list[email.message.Message], level: int) -> None:
        """The plain-text rendering if it says anything, else the HTML one; the rest for their files."""
        walked = set()
        for index in sorted(range(len(children)), key=lambda i: _rendering_rank(children[i])):
            if _rendering_rank(children[index]) == _NO_TEXT:
                break
            before = len(self.texts)
            self.part(children[index], _Mode.BODY, level)
            walked.add(index)
            if len(self.texts) > before:
                break
        for index, child in enumerate(children):
            if index not in walked:
                self.part(child, _Mode.ASIDE, level)

    def _leaf(self, part: email.message.Message, mode: _Mode) -> None:
        content_type = part.get_content_type()
        if content_type.startswith("multipart/"):  # no boundary: its content is all there is to read
            content_type = "text/plain"
        if content_type in _BODY_TYPES and mode is not _Mode.REPORT and not _is_attachment(part):
            if mode is _Mode.BODY:
                self._text(part, content_type)
            return
        if not self.top:
            return
        data = _payload(part)
        if mode is _Mode.REPORT and content_type == "text/rfc822-headers":
            self._returned(BytesParser(policy=_POLICY).parsebytes(data, headersonly=True))
        self._attach(part, data)

    def _text(self, part: email.message.Message, content_type: str) -> None:
        text = decode_bytes(_payload(part), part.get_content_charset())
        if content_type == "text/html":
            text = html_to_text(text, mark_quotes=self.top)
        else:
            text = text.replace(QUOTE_MARK, "")  # only HTML quoted history is marked
            if _param(part, "format").lower() == "flowed":
                text = unflow(text, delsp=_param(part, "delsp").lower() == "yes")
        if text.strip():
            self.texts.append(text)
            self.kinds.add(content_type)

    def _message(self, part: email.message.Message, mode: _Mode) -> None:
        """An attached message: kept as a file, its text read as forwarded, or returned by a bounce."""
        inner, data = _inner_message(part)
        if mode is _Mode.REPORT:
            self._returned(inner)
        if self.top:
            self._attach(part, data if data is not None else _serialized(inner))
        if mode is _Mode.BODY and self._forward_depth < _MAX_FORWARD_DEPTH:
            self.forwarded.append(_forward_text(inner, self._forward_depth + 1))

    def _fields(self, part: email.message.Message, mode: _Mode) -> None:
        blocks = [block for block in part.get_payload() if isinstance(block, email.message.Message)]
        if mode is _Mode.REPORT and part.get_content_type() == "message/delivery-status":
            self.status_blocks.extend(blocks)
        if self.top:
            self._attach(part, b"".join(map(_serialized, blocks)))

    def _returned(self, headers: email.message.Message) -> None:
        message_id = normalize_message_id(_raw_header(headers, "Message-ID"))
        if message_id:
            self.returned_ids.append(message_id)

    def _attach(self, part: email.message.Message, data: bytes) -> None:
        content_type = part.get_content_type()
        name = _filename(part) or self._default_name(content_type)
        self.attachments.append(InboundAttachment(name, content_type, data))

    def _default_name(self, content_type: str) -> str:
        """ "image-1.png", "attachment-2.pdf", "forwarded-1.eml": readable, and unique in the message."""
        if content_type in _MESSAGE_TYPES:
            stem = "forwarded"
        elif content_type.startswith("image/"):
            stem = "image"
        else:
            stem = "attachment"
        self._names[stem] += 1
        return f"{stem}-{self._names[stem]}{_extension(content_type)}"


_NO_TEXT = 2


def _rendering_rank(part: email.message.Message) -> int:
    """0 for a rendering with plain text, 1 for one with HTML, `_NO_TEXT` for neither."""
    types = {sub.get_content_type() for sub in part.walk() if not _is_attachment(sub)}
    if "text/plain" in types:
        return 0
    return 1 if "text/html" in types else _NO_TEXT


def _child_modes(
    part: email.message.Message, children: list[email.message.Message], mode: _Mode,
) -> list[_Mode]:
    """Which children of a multipart carry its body; the others are resources, signatures, reports."""
    subtype = part.get_content_subtype()
    if subtype == "report":
        rest = _Mode.REPORT
    elif subtype in ("related", "signed", "encrypted"):
        rest = _Mode.ASIDE if mode is _Mode.BODY else mode
    else:
        return [mode] * len(children)
    first = _root_index(part, children) if subtype == "related" else 0
    return [mode if index == first else rest for index in range(len(children))]


def _root_index(part: email.message.Message, children: list[email.message.Message]) -> int:
    """multipart/related's root is the part its `start` names, else the first (RFC 2387)."""
    start = _param(part, "start").strip("<> ")
    for index, child in enumerate(children):
        if start and (_raw_header(child, "Content-ID") or "").strip("<> ") == start:
            return index
    return 0


def _inner_message(part: email.message.Message) -> tuple[email.message.Message, bytes | None]:
    """The message in a message/rfc822 part, and its bytes when they had to be decoded first."""
    inner = part.get_payload(0)
    encoding = (_raw_header(part, "Content-Transfer-Encoding") or "").lower()
    # RFC 2046 forbids base64 here, but some clients do it; the email package then reads the base64
    # text as a message with no headers.
    if encoding == "base64" and not inner.keys() and isinstance(inner.get_payload(), str):
        try:
            data = binascii.a2b_base64(inner.get_payload().encode("ascii", "ignore"))
        except binascii.Error:
            return inner, None
        return BytesParser(policy=_POLICY).parsebytes(data), data
    return inner, None


def _forward_text(inner: email.message.Message, depth: int) -> str:
    """An attached message as agents read a forward: Gmail's banner, its headers, then its text."""
    walk = _Walk(top=False, forward_depth=depth)
    walk.part(inner)
    headers = [f"{name}: {value}" for name in ("From", "Date", "Subject", "To", "Cc")
               if (value := _header(inner, name))]
    return "\n".join([FORWARD_BANNER, *headers, "", *walk.texts, *walk.forwarded])


def _serialized(message: email.message.Message) -> bytes:
    """A message (or a block of fields) as bytes: as it came, where the email package can write it so."""
    try:
        return message.as_bytes(policy=_AS_SENT)
    except UnicodeEncodeError:  # a boundary or header the parser itself decoded to U+FFFD
        return message.as_string(policy=_LENIENT).encode("utf-8", "surrogateescape")


def _is_attachment(part: email.message.Message) -> bool:
    return part.get_content_disposition() == "attachment" or bool(_filename(part))


def _payload(part: email.message.Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _filename(part: email.message.Message) -> str | None:
    """The part's file name, decoded (RFC 2231, and RFC 2047 that Outlook and Gmail put in quotes)."""
    try:
        name = part.get_filename()
    except _HEADER_BUGS:
        return None
    if not name:
        return None
    name = repair_undecoded(str(name))
    if "=?" in name:
        name = _decode_words(name)
    return " ".join(name.split()) or None


def _param(part: email.message.Message, name: str) -> str:
    value = part.get_param(name, "")
    return email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)


_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: the same names on every machine
_EXTENSIONS = {
    "image/jpeg": ".jpg", "text/plain": ".txt", "message/rfc822": ".eml", "message/global": ".eml",
    "message/delivery-status": ".txt", "message/disposition-notification": ".txt",
    "text/rfc822-headers": ".txt", "text/calendar": ".ics",
}


def _extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type) or _MIME_TYPES.guess_extension(content_type) or ".bin"


# -- headers -------------------------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _raw_header(msg: email.message.Message, name: str) -> str | None:
    """The first `name` header as written, unfolded: ids and dates, which decoding could alter."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return repair_undecoded(_FOLD.sub("", str(value))).strip()
    return None


def _header(msg: email.message.Message, name: str) -> str | None:
    """The first `name` header decoded (RFC 2047, raw 8-bit UTF-8, unknown charsets), on one line."""
    try:
        value = msg.get(name)
    except _HEADER_BUGS:
        raw = _raw_header(msg, name)
        return None if raw is None else _decode_words(raw)
    return None if value is None else _one_line(repair_undecoded(str(value)))


def _decode_words(raw: str) -> str:
    """RFC 2047 encoded words decoded with the charset fallbacks of the body."""
    try:
        chunks = email.header.decode_header(raw)
    except email.errors.HeaderParseError:
        return _one_line(raw)
    return _one_line("".join(
        chunk if isinstance(chunk, str) else decode_bytes(chunk, charset or "raw-unicode-escape")
        for chunk, charset in chunks
    ))


def _addresses(msg: email.message.Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) of each address in header `name`, decoded; groups flattened."""
    try:
        header = msg.get(name)
        found = [(item.display_name, item.addr_spec) for item in header.addresses] if header else []
    except _HEADER_BUGS:
        return _listed(msg, name)
    return [(_display(display), repair_undecoded(spec).strip()) for display, spec in found if spec]


def _listed(msg: email.message.Message, name: str) -> list[tuple[str, str]]:
    """Like `_addresses`, by `email.utils.getaddresses`: lenient, and a quarter of the cost.

    For the recipients kept on the record; the sender, whose address finds the customer, is read
    by the policy's full RFC 5322 parser.
    """
    raw = _raw_header(msg, name)
    found = [(_decode_words(display), spec) for display, spec in email.utils.getaddresses([raw or ""])]
    return [(_display(display), repair_undecoded(spec).strip()) for display, spec in found if spec]


def _display(name: str) -> str:
    """A display name decoded, also when its encoded words were written where RFC 2047 forbids them."""
    name = _one_line(repair_undecoded(name))
    return _decode_words(name) if "=?" in name else name


def _sender(msg: email.message.Message) -> tuple[Address, str | None]:
    found = _addresses(msg, "From")
    if not found:
        raise UnparseableEmail("no sender: the message has no From address")
    name, spec = found[0]
    try:
        return Address.parse("email", spec), name or None
    except AddressError:
        raise UnparseableEmail(f"the From header is not an email address: {spec!r}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _received_at(msg: email.message.Message, given: dt.datetime | None) -> dt.datetime:
    """The mailbox's arrival time if known, else the Date header if it names a zone, else now."""
    if given is not None:
        return given.astimezone(dt.UTC) if given.tzinfo else given.replace(tzinfo=dt.UTC)
    try:
        sent = getattr(msg.get("Date"), "datetime", None)
        if sent is not None and sent.tzinfo is not None:
            return sent.astimezone(dt.UTC)
    except (*_HEADER_BUGS, OverflowError):
        pass  # an unreadable date is no date: the message still arrived
    return utcnow()


def _message_ids(value: str | None) -> list[str]:
    """The ids in an In-Reply-To or References header, in order; bare ones too (some clients)."""
    if not value:
        return []
    bracketed = re.findall(r"<([^<>]*)>", value)
    candidates = bracketed or re.split(r"[\s,]+", value)
    return [found for found in map(normalize_message_id, candidates) if found]


def _reply_keys(msg: email.message.Message, returned: list[str]) -> tuple[str, ...]:
    """What this message answers, strongest first: a bounce's original, In-Reply-To, References."""
    references = _message_ids(_raw_header(msg, "References"))
    keys = [*returned, *_message_ids(_raw_header(msg, "In-Reply-To")), *reversed(references)]
    return tuple(dict.fromkeys(keys))[:MAX_REPLY_KEYS]


_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
_TICKET_REF = re.compile(r"\[\s*T-([0-9\u06f0-\u06f9\u0660-\u0669]{4,})\s*\]", re.IGNORECASE)
_FORWARD_SUBJECT = re.compile(r"^\s*fwd?\s*:", re.IGNORECASE)


def _ticket_ref(subject: str | None) -> str | None:
    """ "T-1042" from a subject such as "Re: [T-1042] ..." or "[t-۱۰۴۲]"."""
    found = _TICKET_REF.search(subject or "")
    return f"T-{found.group(1).translate(_DIGITS)}" if found else None


def _is_forward(subject: str | None) -> bool:
    return bool(_FORWARD_SUBJECT.match(subject or ""))


# -- automatic mail ------------------------------------------------------------------------------

_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
_AUTOREPLY_HEADERS = ("X-Loop", "X-Auto-Response-Suppress", "X-Autoreply", "X-Autorespond")
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})
_REASON_MAX = 100


def _loop_reasons(
    msg: email.message.Message, sender: Address, message_id: str | None, own_domains: frozenset[str],
) -> tuple[str, ...]:
    """Why this mail was sent by a machine, one short line per header that says so."""
    reasons = [
        *_auto_submitted(msg), *_precedence(msg), *_list_headers(msg), *_autoreply_headers(msg),
        *_null_return_path(msg), *_report(msg),
    ]
    if sender.value.partition("@")[0] in _DAEMONS:
        reasons.append(f"From: {sender.value}")
    if message_id and message_id.rpartition("@")[2].lower() in own_domains:
        reasons.append(f"Message-ID: <{_short(message_id)}> is our own")
    return tuple(reasons)


def _auto_submitted(msg: email.message.Message) -> list[str]:
    value = _header(msg, "Auto-Submitted")
    return [f"Auto-Submitted: {_short(value)}"] if value and _first_word(value) != "no" else []


def _precedence(msg: email.message.Message) -> list[str]:
    value = _header(msg, "Precedence")
    return [f"Precedence: {_short(value)}"] if value and _first_word(value) in _BULK_PRECEDENCE else []


def _list_headers(msg: email.message.Message) -> list[str]:
    names = dict.fromkeys(key.lower() for key in msg if key.lower().startswith("list-"))
    return [f"{_display_name(name)}: {_short(_header(msg, name) or '')}" for name in names]


def _autoreply_headers(msg: email.message.Message) -> list[str]:
    present = ((name, _header(msg, name)) for name in _AUTOREPLY_HEADERS)
    return [f"{name}: {_short(value)}" for name, value in present if value is not None]


def _null_return_path(msg: email.message.Message) -> list[str]:
    value = _raw_header(msg, "Return-Path")
    return ["Return-Path: <>"] if value is not None and value.replace(" ", "") in ("<>", "") else []


def _report(msg: email.message.Message) -> list[str]:
    if msg.get_content_type() != "multipart/report":
        return []
    kind = _param(msg, "report-type")
    reason = "Content-Type: multipart/report"
    return [f"{reason}; report-type={kind}" if kind else reason]


def _first_word(value: str) -> str:
    found = re.match(r"\s*([\w-]+)", value)
    return found.group(1).lower() if found else ""


def _display_name(header: str) -> str:
    """ "list-unsubscribe" -> "List-Unsubscribe"."""
    return "-".join(word.capitalize() for word in header.split("-"))


def _short(value: str) -> str:
    value = _one_line(value)
    return value if len(value) <= _REASON_MAX else value[:_REASON_MAX - 1] + "…"


# -- bounces -------------------------------------------------------------------------------------


def _failed_deliveries(blocks: list[email.message.Message]) -> list[tuple[str, str]]:
    """(recipient, diagnostic) of each recipient a delivery-status report says failed (RFC 3464)."""
    failed = []
    for block in blocks:
        if _first_word(_header(block, "Action") or "") != "failed":
            continue  # "delayed", "delivered", "relayed", "expanded": not a failure (yet)
        recipient = _typed(_header(block, "Final-Recipient") or _header(block, "Original-Recipient"))
        reason = _typed(_header(block, "Diagnostic-Code")) or _header(block, "Status") or "failed"
        failed.append((recipient, reason))
    return failed


def _typed(value: str | None) -> str:
    """ "smtp; 550 5.1.1 ..." -> "550 5.1.1 ...", "rfc822; sara@example.com" -> "sara@example.com"."""
    kind, separator, rest = (value or "").partition(";")
    return rest.strip() if separator and kind.strip() and " " not in kind.strip() else (value or "").strip()


# -- what agents read, and what is kept beside it -------------------------------------------------


def _texts(walk: _Walk, failed: list[tuple[str, str]], subject: str | None) -> tuple[str, str]:
    """(the agents' view, the whole body text); the view is the whole text when stripping left nothing."""
    body = tidy("\n\n".join(walk.texts))
    full_text = tidy(without_marks("\n\n".join([body, *walk.forwarded])))
    view = _agents_view(body, walk.forwarded, failed, forward_subject=_is_forward(subject))
    return view or full_text, full_text


def _agents_view(
    body: str, forwards: list[str], failed: list[tuple[str, str]], *, forward_subject: bool,
) -> str:
    """What agents read: a bounce's summary, what the sender wrote now, then forwarded messages."""
    summary = "\n".join(
        f"Delivery failed to {recipient}: {reason}" if recipient else f"Delivery failed: {reason}"
        for recipient, reason in failed
    )
    parts = [summary, strip_history(body, forwarded=forward_subject), *forwards]
    return tidy("\n\n".join(part for part in parts if part.strip()))


def _signature_phones(walk: _Walk, subject: str | None) -> tuple[Address, ...]:
    """The mobile number in the signature of what the sender wrote now, above quoted or forwarded mail.

    Not read from the agents' view: that has the signature cut off and forwarded mail (someone else's)
    appended.
    """
    lines = tidy("\n\n".join(walk.texts)).split("\n")
    _, own = history_start(lines, _is_forward(subject))
    return signature_phones(without_marks("\n".join(lines[:own])))


def _raw_fields(
    msg: email.message.Message, *, full_text: str, html_only: bool, loop: tuple[str, ...],
    bounced: tuple[str, ...], defects: list[str],
) -> dict[str, object]:
    return {
        "from": _header(msg, "From"),
        "to": [_mailbox(found) for found in _listed(msg, "To")],
        "cc": [_mailbox(found) for found in _listed(msg, "Cc")],
        "reply_to": next((_mailbox(found) for found in _listed(msg, "Reply-To")), None),
        "date": _raw_header(msg, "Date"),
        "message_id": _raw_header(msg, "Message-ID"),
        "references": _message_ids(_raw_header(msg, "References")),
        "full_text": full_text[:MAX_FULL_TEXT],
        "html_only": html_only,
        "loop_reasons": list(loop),
        "bounced": list(bounced),
        "defects": defects,
    }


def _mailbox(found: tuple[str, str]) -> str:
    name, address = found
    return f"{name} <{address}>" if name else address


def _defects(msg: email.message.Message, notes: list[str]) -> list[str]:
    """What the email package found wrong in any part, for support; at most `MAX_DEFECTS`."""
    found = list(notes)
    for part in msg.walk():
        found.extend(_describe(defect) for defect in part.defects)
    return found[:MAX_DEFECTS]


def _describe(defect: Exception) -> str:
    detail = repair_undecoded(str(defect))
    return f"{type(defect).__name__}: {detail}" if detail else type(defect).__name__
