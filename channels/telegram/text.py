"""Text for the Bot API: HTML escaping, and splitting long text into messages Telegram accepts."""

from __future__ import annotations

import html
import re
import unicodedata

#: Telegram's limits, in UTF-16 code units of the text after entities are parsed (not of the HTML).
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

_ZWJ = "\u200d"
#: Joiners, variation selectors and skin tones: they belong to the character before them.
_JOINING = re.compile("[\u200c\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff]")
#: Spaces a line may break at: white space except line breaks and the spaces meant not to break.
_SPACE = re.compile(r"[^\S\n\u00a0\u2007\u202f]+")


def escape(text: str) -> str:
    """`text` safe inside a parse_mode=HTML message: only &, < and > need escaping there."""
    return html.escape(text, quote=False)


def utf16_len(text: str) -> int:
    """The length Telegram counts: characters outside the BMP (most emoji) are two UTF-16 units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Plain `text` (split before escaping) in parts of at most `limit` UTF-16 units, none empty.

    Each cut falls at the last paragraph break that fits, else line break, else space, else inside a
    word but never inside a character's marks (Persian diacritics, ZWNJ, emoji joiners); the white
    space at a cut is dropped, so the parts joined are the text less that white space.
    """
    if limit < 2:
        raise ValueError("a limit under 2 UTF-16 units cannot hold every character")
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut, skip = _cut(rest, _fitting(rest, limit))
        part = rest[:cut].rstrip() if skip else rest[:cut]
        if part.strip():  # only white space longer than the limit could make a blank part
            parts.append(part)
        rest = rest[cut:].lstrip() if skip else rest[cut:]
    if rest.strip():
        parts.append(rest)
    return parts


def _fitting(text: str, limit: int) -> int:
    """How many characters of `text` fit in `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _cut(text: str, end: int) -> tuple[int, bool]:
    """Where to end the part that may take `text[:end]`, and whether white space lies at the cut."""
    first = len(text) - len(text.lstrip())  # a cut before it would leave an empty part
    for breaker in ("\n\n", "\n"):
        at = text.rfind(breaker, first + 1, end + len(breaker))
        if at > first:
            return at, True
    spaces = [match.start() for match in _SPACE.finditer(text, first + 1, end + 1)]
    if spaces:
        return spaces[-1], True
    return _hard_cut(text, end), False


def _hard_cut(text: str, end: int) -> int:
    cut = end
    while cut > 1 and _clings(text[cut - 1], text[cut]):
        cut -= 1
    return cut if cut > 1 or not _clings(text[0], text[1]) else end


def _clings(before: str, char: str) -> bool:
    """Whether `char` belongs with the character before it: a mark, a joiner, or after a joiner."""
    return before == _ZWJ or bool(_JOINING.match(char)) or unicodedata.category(char) in ("Mn", "Me", "Mc")


#: The bot's answer to /start, in the customer's app language (Persian when it names none we have).
GREETING = {
    "fa": ("سلام! به پشتیبانی خوش آمدید.\n"
           "سؤال یا مشکلتان را همین‌جا بنویسید؛ می‌توانید عکس، فایل یا پیام صوتی هم بفرستید. "
           "همکاران ما در اولین فرصت پاسخ می‌دهند."),
    "en": ("Hello, and welcome to support.\n"
           "Write your question or problem here; photos, files and voice messages are welcome too. "
           "One of us will answer as soon as we can."),
}


def greeting(language: str | None) -> str:
    """The bot's answer to /start."""
    return GREETING["en" if language == "en" else "fa"]
