"""The sender's own mobile number, read from the signature of an email: a pure function on text."""

from __future__ import annotations

import re

from gateway.addresses import Address, AddressError

#: How many non-empty lines at the end of the text count as the signature when no separator opens one.
SIGNATURE_LINES = 6

_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
#: Direction marks, joiners and the BOM: Persian mail puts them between digit groups and around labels.
_INVISIBLE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")
_SPACE = re.compile(r"[^\S\n]")  # any white space but a line break: NBSP, thin spaces, tabs
#: "-- " (RFC 3676), "--", "—", "__", "-----": a line that opens the signature.
_SEPARATOR = re.compile(r"^ *(?:-{2,}|_{2,}|[—–]+) *$", re.MULTILINE)
_GAP = r"[ .\-()/]{0,3}"
#: An Iranian mobile: 09xx (or +98 9xx, 0098 9xx, 98 9xx) and seven digits, in any grouping. A number
#: written right after or before another digit group is part of something longer (a card, a landline).
_MOBILE = re.compile(
    r"(?<![\d+])(?<!\d[ .\-/])"
    r"(?:(?:\+|00)?98" + _GAP + r"(?:\(0\)" + _GAP + r")?|0)"
    r"9[0-9]{2}(?:" + _GAP + r"[0-9]){7}"
    r"(?!\d)(?![.\-/]?\d)"
)
_MOBILE_E164 = re.compile(r"\+989[0-9]{9}")


def signature_phones(text: str) -> tuple[Address, ...]:
    """The one mobile number in the signature of `text`, as a phone address; () when none or several.

    `text` is what the sender wrote, quoted history already cut off. The signature is what follows
    the first separator line ("-- ", "--", "—", "__"), else the last `SIGNATURE_LINES` non-empty
    lines; ">" lines are quoted, never signature. Only Iranian mobiles count: a landline is often a
    whole company's, and two different mobiles (a colleague's, a manager's) say nothing certain about
    whose the sender is. Never raises.
    """
    found: dict[Address, None] = {}
    block = _signature_block(_SPACE.sub(" ", _INVISIBLE.sub("", text)))
    for match in _MOBILE.finditer(block.translate(_DIGITS)):
        phone = _mobile(match.group())
        if phone is not None:
            found[phone] = None
    return tuple(found) if len(found) == 1 else ()


def _signature_block(text: str) -> str:
    """The signature's non-empty, unquoted lines; `text` has no invisible marks, and "\\n" ends its lines."""
    separator = _SEPARATOR.search(text)
    lines = (text[separator.end():] if separator else text).split("\n")
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith(">")]
    return "\n".join(lines if separator else lines[-SIGNATURE_LINES:])


def _mobile(written: str) -> Address | None:
    try:
        phone = Address.parse("phone", written)
    except AddressError:
        return None
    return phone if _MOBILE_E164.fullmatch(phone.value) else None
