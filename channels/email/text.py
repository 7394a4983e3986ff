"""Email body text: charset fallbacks, HTML to text, quoted-history and signature stripping, language."""

from __future__ import annotations

import codecs
import functools
import html
import html.parser
import re

#: Tried in order when a part's declared charset is unknown or wrong; Iranian mail that is not UTF-8 is
#: almost always windows-1256, and windows-1256 decodes every byte, so latin-1 is only the last resort.
FALLBACK_CHARSETS = ("utf-8", "windows-1256")

#: A line `html_to_text(mark_quotes=True)` puts where quoted history (gmail_quote, blockquote cite) opens.
#: A private-use character: no client writes it, and no text we hand on keeps it.
QUOTE_MARK = "\ue000"


# -- charsets ------------------------------------------------------------------------------------


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """`data` as text: the declared charset if it fits, else UTF-8, else windows-1256; never raises."""
    for name in _charsets_to_try(data, charset):
        try:
            return data.decode(name)
        except (LookupError, ValueError):  # unknown name, or bytes that do not fit it
            continue
    return data.decode("latin-1", errors="replace")


def _charsets_to_try(data: bytes, declared: str | None) -> list[str]:
    names = [declared.strip().strip("\"'")] if declared and declared.strip() else []
    # Web forms and old PHP mailers label UTF-8 as latin-1; latin-1 accepts any byte, so it would
    # never fail over. Real latin-1 text is almost never valid multi-byte UTF-8, so UTF-8 goes first.
    if names and _is_western(names[0]) and not data.isascii() and _is_utf8(data):
        names.insert(0, "utf-8")
    return list(dict.fromkeys(names + list(FALLBACK_CHARSETS)))


def _is_western(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in ("iso8859-1", "cp1252")
    except (LookupError, ValueError):
        return False


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_ESCAPED = re.compile("[\udc80-\udcff]")
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def repair_undecoded(text: str) -> str:
    """Text the email package left with escaped raw bytes (8-bit headers, unknown charsets), decoded."""
    if not _ESCAPED.search(text) and not _LONE_SURROGATE.search(text):
        return text
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return decode_bytes(text.encode("utf-8", "surrogateescape"), "utf-8")


# -- plain text ----------------------------------------------------------------------------------

_BLANK_RUNS = re.compile(r"\n{3,}")


def tidy(text: str) -> str:
    """Newlines as \\n, no trailing spaces, runs of blank lines as one, no blank lines at either end."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


def without_marks(text: str) -> str:
    """`text` with the quote marks of `html_to_text(mark_quotes=True)` taken out."""
    return "\n".join(line for line in text.split("\n") if line != QUOTE_MARK)


def unflow(text: str, *, delsp: bool = False) -> str:
    """A `format=flowed` body (RFC 3676, Thunderbird and Apple Mail) with its soft line breaks joined."""
    lines: list[list] = []  # [quote depth, text, ends flowed]
    for line in text.replace("\r\n", "\n").split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        content = content.removeprefix(" ")  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if lines and lines[-1][2] and lines[-1][0] == depth:
            lines[-1][1] += content
            lines[-1][2] = flowed
        else:
            lines.append([depth, content, flowed])
    return "\n".join(">" * depth + (" " if depth else "") + content for depth, content, _ in lines)


# -- HTML ----------------------------------------------------------------------------------------

#: Elements whose content is never text for a reader (or is code).
_SKIPPED = frozenset({
    "script", "style", "head", "title", "template", "noscript", "iframe", "object", "embed", "svg",
    "math", "select", "button",
})
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody",
    "tfoot", "thead", "tr", "ul",
})
_CELLS = frozenset({"td", "th"})
_QUOTE_CLASSES = frozenset({"gmail_quote", "yahoo_quoted"})
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_SPACES = re.compile(r"\s+")
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]")  # browsers drop these inside URLs ("java\tscript:")
_URL_UNSAFE = re.compile(r"[<>\"'`\\]")
#: A tag left open at the very end: html.parser hands it back as text.
_TRAILING_TAG = re.compile(r"<[a-zA-Z/!?][^>]*\Z")
#: Markup html.parser could not parse (unclosed comments, CDATA, bogus declarations) and passed on as text.
_MARKUP = re.compile(r"<[a-zA-Z/!?][^<>]*>?")
_STRAY_TAG = re.compile(r"<+(?=[a-zA-Z/!?])")
_ESCAPED_LT = "\ue001"
_PRIVATE_MARKS = re.compile("[\ue000\ue001]")


def html_to_text(source: str, *, mark_quotes: bool = False) -> str:
    """Readable text of an HTML body; no markup and nothing executable survives.

    With `mark_quotes`, a `QUOTE_MARK` line opens each block of quoted history (Gmail's gmail_quote,
    Apple Mail's and Thunderbird's `<blockquote type="cite">`) for `strip_history` to cut at.
    """
    converter = _HtmlText(mark_quotes=mark_quotes)
    converter.feed(_TRAILING_TAG.sub("", source))
    converter.close()
    return tidy(converter.text())


class _HtmlText(html.parser.HTMLParser):
    """Writes text as the HTML is read: blocks break lines, runs of white space become one space."""

    def __init__(self, *, mark_quotes: bool) -> None:
        # Entities arrive apart from raw text, so "<" in raw text is markup the parser gave up on.
        super().__init__(convert_charrefs=False)
        self._mark_quotes = mark_quotes
        self._out: list[str] = []
        self._newlines = 0  # line breaks owed before the next text
        self._space = False  # a space owed before the next text on this line
        self._line_open = False  # the current line has text
        self._skipping: list = []  # [tag, depth] of the outermost element being skipped
        self._pre = 0
        self._links: list[tuple[str | None, int]] = []  # (safe href, where its text starts)

    def text(self) -> str:
        """What was written; a raw "<" that still opens something tag-like is markup, not text."""
        return _STRAY_TAG.sub("", "".join(self._out)).replace(_ESCAPED_LT, "<")

    # html.parser callbacks

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if self._skipping:
            self._skip_nested(tag, +1, attributes)
        elif tag in _SKIPPED or _hidden(attributes):
            if tag not in _VOID:
                self._skipping = [tag, 1]
        else:
            self._open(tag, attributes)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:  # <br/> is one line break, not two
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            self._skip_nested(tag, -1, {})
        elif tag == "br":  # browsers read </br> as <br>
            self._hard_break()
        elif tag == "a":
            self._close_link()
        elif tag == "pre":
            self._pre = max(self._pre - 1, 0)
            self._break()
        elif tag in _BLOCKS:
            self._break()
        elif tag in _CELLS:
            self._space = self._line_open

    def handle_data(self, data: str) -> None:
        self._text_data(_MARKUP.sub("", _without_private(data)))

    def handle_entityref(self, name: str) -> None:
        self._entity(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._entity(f"&#{name};")

    def _entity(self, reference: str) -> None:
        # An escaped "<" is the sender's text; it is set apart from stray ones until `text()`.
        self._text_data(_without_private(html.unescape(reference)).replace("<", _ESCAPED_LT))

    def _text_data(self, data: str) -> None:
        if self._skipping or not data:
            return
        if self._pre:
            self._write(data.replace("\r\n", "\n"), raw=True)
            return
        self._space = self._space or (data[:1].isspace() and self._line_open)
        words = _SPACES.sub(" ", data).strip()
        if words:
            self._write(words)
            self._space = data[-1:].isspace()
        elif "\xa0" in data and not self._line_open:
            self._write("")  # Outlook's <p>&nbsp;</p> and Gmail's <div>&nbsp;</div> are blank lines

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        # Python before 3.13 raises AssertionError on "<![anything-else": skip it as browsers do.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i)
            return -1 if end < 0 else end + 1

    # elements

    def _open(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == "br":
            self._hard_break()
        elif tag == "img":
            self._image(attributes.get("alt", ""))
        elif tag == "a":
            self._links.append((_safe_href(attributes.get("href")), len(self._out)))
        elif tag in _CELLS:
            self._space = self._line_open
        elif tag in _BLOCKS:
            self._block(tag, attributes)

    def _block(self, tag: str, attributes: dict[str, str]) -> None:
        self._break()
        if self._mark_quotes and _is_quote(tag, attributes):
            self._write(QUOTE_MARK)
            self._break()
        if tag == "li":
            self._write("•")
            self._space = True
        elif tag == "pre":
            self._pre += 1

    def _skip_nested(self, tag: str, step: int, attributes: dict[str, str]) -> None:
        if self._skipping[0] == "head" and tag == "body":  # a <head> nobody closed
            self._skipping = []
            self._open(tag, attributes)
        elif tag == self._skipping[0] and tag not in _VOID:
            self._skipping[1] += step
            if self._skipping[1] <= 0:
                self._skipping = []

    def _image(self, alt: str) -> None:
        alt = _SPACES.sub(" ", alt).strip()
        if alt:
            self._space = self._space or self._line_open
            self._write(f"[image: {alt}]")
            self._space = True

    def _close_link(self) -> None:
        if not self._links:
            return
        href, start = self._links.pop()
        label = "".join(self._out[start:]).strip()
        if href and not label:
            self._write(href)
        elif href and _comparable(label) != _comparable(href):
            self._space = True
            self._write(f"({href})")

    # output

    def _write(self, text: str, *, raw: bool = False) -> None:
        if self._out and self._newlines:
            self._out.append("\n" * self._newlines)
        elif self._space and self._line_open:
            self._out.append(" ")
        self._newlines, self._space = 0, False
        self._out.append(text)
        self._line_open = not (raw and text.endswith("\n"))

    def _break(self) -> None:
        """A block boundary: the next text starts a new line, unless it would anyway."""
        if self._line_open:
            self._newlines = max(self._newlines, 1)
        self._line_open, self._space = False, False

    def _hard_break(self) -> None:
        """A <br>: one more line break, so that <br><br> leaves a blank line."""
        self._newlines += 1
        self._line_open, self._space = False, False


def _without_private(text: str) -> str:
    """Source text less the private-use characters this module marks its own output with."""
    return _PRIVATE_MARKS.sub("", text)


def _hidden(attributes: dict[str, str]) -> bool:
    """display:none content (mail preheaders, tracking blocks) is not what the reader saw."""
    return "display:none" in attributes.get("style", "").replace(" ", "").lower()


def _is_quote(tag: str, attributes: dict[str, str]) -> bool:
    if tag == "blockquote" and attributes.get("type", "").lower() == "cite":
        return True
    return not _QUOTE_CLASSES.isdisjoint(attributes.get("class", "").split())


def _safe_href(href: str | None) -> str | None:
    """The link target worth showing: http(s) and mailto only, with nothing markup-like in it."""
    url = _URL_NOISE.sub("", href or "")
    if not url.lower().startswith(_LINK_SCHEMES):
        return None
    return _URL_UNSAFE.sub(lambda match: f"%{ord(match.group()):02X}", url)


def _comparable(text: str) -> str:
    text = text.strip().lower().removeprefix("mailto:")
    text = re.sub(r"^https?://(www\.)?", "", text)
    return text.rstrip("/")


# -- quoted history and signatures -----------------------------------------------------------------

#: Direction marks Gmail and Outlook wrap Persian lines in; they hide the words the patterns look for.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_ZWNJ_OR_SPACE = "[ \u200c]?"

_FORWARD_LINES = re.compile(
    r"^-{2,}\s*(?:forwarded message|پیام هدایت" + _ZWNJ_OR_SPACE + r"شده|پیام بازارسال" + _ZWNJ_OR_SPACE
    + r"شده)\s*-{2,}$|^begin forwarded message:$",
    re.IGNORECASE,
)
_ORIGINAL_MESSAGE = re.compile(
    r"^-{2,}\s*(?:original message|پیام اصلی|الرسالة الأصلية)\s*-{2,}$", re.IGNORECASE,
)
_ATTRIBUTIONS = (
    re.compile(r"^on\s.+\swrote:$", re.IGNORECASE),  # Gmail, Thunderbird, Apple Mail
    re.compile(r"^در\s.+\sنوشت\s?:$"),  # Gmail in Persian: «در تاریخ … <email> نوشت:»
    re.compile(r"^في\s.*كتب.*:$|^كتب\s.+:$"),  # Arabic: «في … كتب …:», «كتب …:»
)
_HEADER_FROM = re.compile(r"^\*?(?:from|از|من)\s?:\*?\s*\S", re.IGNORECASE)
_HEADER_SENT = re.compile(
    r"^\*?(?:sent|date|ارسال" + _ZWNJ_OR_SPACE + r"شده|تاریخ|تاريخ الإرسال|أرسل|التاريخ)\s?:",
    re.IGNORECASE,
)
_HEADER_TO = re.compile(r"^\*?(?:to|به|إلى)\s?:", re.IGNORECASE)
_HEADER_SUBJECT = re.compile(r"^\*?(?:subject|موضوع|الموضوع)\s?:", re.IGNORECASE)
_RULE = re.compile(r"^_{10,}$")  # Outlook's line above its header block
_SIGNATURE = "--"
_SENT_FROM = re.compile(
    r"^(?:sent from my \S.{0,40}|sent from (?:outlook|mail|yahoo mail)\b.{0,40}|get outlook for \w+"
    r"|ارسال" + _ZWNJ_OR_SPACE + r"شده از \S.{0,40})$",
    re.IGNORECASE,
)
_HEADER_WINDOW = 6  # lines below "From:" in which Outlook puts "Sent:", "To:", "Cc:" and "Subject:"
_ATTRIBUTION_MAX = 300
_TIME_OR_ADDRESS = re.compile(r"\d[:٫]\d\d|@")


def strip_history(text: str, *, forwarded: bool = False) -> str:
    """What the sender wrote now: `text` less quoted history, signature and "Sent from my iPhone".

    Forwarded content stays, since a customer forwards a message for us to read it. With `forwarded`
    (the subject says Fwd/FW), Outlook's header block and "Original Message" open forwarded content
    rather than quoted history. Returns "" when nothing is left; the caller decides what to show then.
    """
    lines = text.split("\n")
    kind, at = history_start(lines, forwarded)
    head, tail = (lines[:at], lines[at:]) if kind == "forward" else (lines[:at], [])
    head = _drop_sent_from(_drop_trailing_quote(_drop_signature(head)))
    kept = ("\n".join(block) for block in (head, tail) if block)
    return tidy(without_marks("\n\n".join(kept)))


def history_start(lines: list[str], forwarded: bool) -> tuple[str | None, int]:
    """("quote" or "forward", index) of the first line that opens earlier mail; (None, len) if none."""
    for index in range(len(lines)):
        kind = _opens_history(lines, index, forwarded)
        if kind:
            return kind, _above_rule(lines, index)
    return None, len(lines)


def _opens_history(lines: list[str], index: int, forwarded: bool) -> str | None:
    line = _bare(lines[index])
    if line == QUOTE_MARK:
        return "forward" if _next_opens_forward(lines, index, forwarded) else "quote"
    if _FORWARD_LINES.match(line):
        return "forward"
    if _ORIGINAL_MESSAGE.match(line) or _header_block(lines, index):
        return "forward" if forwarded else "quote"
    if _attribution(lines, index):
        return "quote"
    return None


def _next_opens_forward(lines: list[str], index: int, forwarded: bool) -> bool:
    """Gmail wraps forwarded mail in the same gmail_quote as quoted history."""
    for following in range(index + 1, len(lines)):
        if _bare(lines[following]) not in ("", QUOTE_MARK):
            return _opens_history(lines, following, forwarded) == "forward"
    return False


def _attribution(lines: list[str], index: int) -> bool:
    """ "On <date>, <name> wrote:" and its Persian and Arabic forms, on one line or wrapped on two."""
    line = _bare(lines[index])
    if _is_attribution(line, wrapped=False):
        return True
    return index + 1 < len(lines) and _is_attribution(f"{line} {_bare(lines[index + 1])}", wrapped=True)


def _is_attribution(text: str, *, wrapped: bool) -> bool:
    if len(text) > _ATTRIBUTION_MAX or not any(pattern.match(text) for pattern in _ATTRIBUTIONS):
        return False
    # Clients write a time or an address into the line ("at 10:15", "<sara@example.com>"); a
    # customer's "On Monday my colleague wrote:", or two of their lines run together, have neither.
    needs_proof = wrapped or text.lower().startswith("on ")
    return not needs_proof or bool(_TIME_OR_ADDRESS.search(text))


def _header_block(lines: list[str], index: int) -> bool:
    """Outlook's "From: / Sent: / To: / Subject:" block, in English, Persian or Arabic."""
    if not _HEADER_FROM.match(_bare(lines[index])):
        return False
    window = [_bare(line) for line in lines[index + 1:index + 1 + _HEADER_WINDOW]]
    return all(any(map(label.match, window)) for label in (_HEADER_SENT, _HEADER_TO, _HEADER_SUBJECT))


def _above_rule(lines: list[str], index: int) -> int:
    """Outlook draws a line of underscores above its header block: cut there instead."""
    above = index - 1
    while above >= 0 and not _bare(lines[above]):
        above -= 1
    return above if above >= 0 and _RULE.match(_bare(lines[above])) else index


def _drop_signature(lines: list[str]) -> list[str]:
    for index, line in enumerate(lines):
        if line.rstrip() == _SIGNATURE:
            return lines[:index]
    return lines


def _drop_trailing_quote(lines: list[str]) -> list[str]:
    """A closing run of ">" lines is the history an iPhone or a plain-text client quoted."""
    start = len(lines)
    while start > 0 and (not _bare(lines[start - 1]) or _bare(lines[start - 1]).startswith(">")):
        start -= 1
    quoted = any(_bare(line).startswith(">") for line in lines[start:])
    return lines[:start] if quoted else lines


def _drop_sent_from(lines: list[str]) -> list[str]:
    lines = _drop_blank_end(lines)
    while lines and _SENT_FROM.match(_bare(lines[-1])):
        lines = _drop_blank_end(lines[:-1])
    return lines


def _drop_blank_end(lines: list[str]) -> list[str]:
    end = len(lines)
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


@functools.lru_cache(maxsize=4096)  # looking for quoted history reads each line three or four times
def _bare(line: str) -> str:
    return _SPACES.sub(" ", _BIDI.sub("", line)).strip()


# -- language ------------------------------------------------------------------------------------

_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")
_LATIN = re.compile("[A-Za-z\u00c0-\u024f\u1e00-\u1eff]")
_PERSIAN_SHARE = 0.3


def guess_language(text: str) -> str | None:
    """"fa" when Arabic-script letters are at least 30% of the letters, "en" when Latin ones dominate."""
    letters = "".join(filter(str.isalpha, text))  # counted in C: this runs on every message
    if not letters:
        return None
    arabic = len(_ARABIC_SCRIPT.findall(letters))
    if arabic >= _PERSIAN_SHARE * len(letters):
        return "fa"
    latin = len(_LATIN.findall(letters))
    return "en" if latin * 2 > len(letters) else None
