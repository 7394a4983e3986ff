"""SMS length rules (GSM-7 septets or UCS-2 units, parts of a long SMS) and shortening to a part budget."""

from __future__ import annotations

import unicodedata
from typing import Literal

Encoding = Literal["gsm7", "ucs2"]

#: GSM 03.38 basic character set, one septet each (the escape 0x1B is left out: it is no character).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: escape plus one septet, so two septets each.
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

#: (one-part limit, per-part limit when split): the user-data header of a long SMS takes the difference.
LIMITS: dict[Encoding, tuple[int, int]] = {"gsm7": (160, 153), "ucs2": (70, 67)}

_ELLIPSIS = {"gsm7": "...", "ucs2": "…"}  # "…" is no GSM character: it alone would force UCS-2
#: Channels the note names in its own words; any other name is quoted as given.
_PLACES = {"email": ("email", "ایمیل"), "telegram": ("Telegram", "تلگرام")}
_CLINGING = frozenset("\u200c\u200d")  # ZWNJ and ZWJ belong to the letters around them


def encoding(text: str) -> Encoding:
    """"gsm7" if every character is in the GSM 03.38 basic or extension table, else "ucs2"."""
    return "gsm7" if all(char in GSM_BASIC or char in GSM_EXTENSION for char in text) else "ucs2"


def split_parts(text: str) -> list[str]:
    """`text` in the parts the network sends, in order; joined, they are `text` again.

    GSM-7 counts septets (an extension character is two, never split from its escape); UCS-2 counts
    UTF-16 code units (a character outside the BMP, most emoji, is two, never split). Text within the
    one-part limit, the empty text included, is one part.
    """
    code = encoding(text)
    single, each = LIMITS[code]
    cost = _septets if code == "gsm7" else _utf16_units
    costs = [cost(char) for char in text]
    if sum(costs) <= single:
        return [text]
    out: list[str] = []
    start = used = 0
    for index, units in enumerate(costs):
        if used + units > each:
            out.append(text[start:index])
            start, used = index, 0
        used += units
    out.append(text[start:])
    return out


def parts(text: str) -> int:
    """How many SMS parts `text` takes (and is billed for): at least 1."""
    return len(split_parts(text))


def shorten(
    text: str, *, max_parts: int, ref: str, elsewhere: str | None, language: str | None
) -> str:
    """`text` unchanged if it takes at most `max_parts`, else a cut of it that does, with a suffix.

    The suffix is an ellipsis, then, when `elsewhere` names the channel the full answer went to, a
    note saying so (Persian when `language` is "fa", else English), then `[ref]`. The cut falls at the
    last white space that keeps at least half of what fits, else inside a word but never before a
    combining mark or next to a ZWNJ/ZWJ. The suffix can change the encoding (a Persian note forces
    UCS-2); the result is measured whole, so `parts(result) <= max_parts` always holds.
    Raises ValueError if `max_parts` < 1 or the suffix alone does not fit.
    """
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, not {max_parts}")
    if parts(text) <= max_parts:
        return text

    def result(end: int) -> str:
        head = text[:end].rstrip()
        return _with_suffix(head, ref=ref, elsewhere=elsewhere, language=language)

    def fits(end: int) -> bool:
        return parts(result(end)) <= max_parts

    if not fits(0):
        raise ValueError(f"the shortening suffix alone takes more than {max_parts} SMS part(s)")
    low, high = 0, min(len(text), max_parts * LIMITS["gsm7"][0])  # no part holds more characters
    while low < high:  # the longest prefix that fits: fitting only gets harder as the prefix grows
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    end = _word_end(text, low)
    while end > 0 and not fits(end):  # never trust the search alone: the promise is checked here
        end -= 1
    return result(end)


def _with_suffix(head: str, *, ref: str, elsewhere: str | None, language: str | None) -> str:
    persian = (language or "").lower().startswith("fa")
    if elsewhere:
        english, farsi = _PLACES.get(str(elsewhere).strip().lower(), (elsewhere.strip(),) * 2)
        note = f"متن کامل به {farsi} شما فرستاده شد" if persian else f"full answer sent to your {english}"
    else:
        note = ""
    tail = " ".join(part for part in (note, f"[{ref}]" if ref else "") if part)
    ellipsis = _ELLIPSIS[encoding(head + tail)]
    return " ".join(part for part in (head, ellipsis, tail) if part)


def _word_end(text: str, end: int) -> int:
    """Where to cut `text` to keep at most `text[:end]`: at white space if that keeps half, else
    inside the word, stepping back off marks and joiners."""
    if end >= len(text):
        return end
    for index in range(end, end // 2, -1):  # text[end] itself may be the space after the last word
        if text[index].isspace():
            return index
    while end > 0 and (_clings(text[end]) or text[end - 1] in _CLINGING):
        end -= 1
    return end


def _clings(char: str) -> bool:
    return char in _CLINGING or unicodedata.category(char) in ("Mn", "Mc", "Me")


def _septets(char: str) -> int:
    return 2 if char in GSM_EXTENSION else 1


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1
