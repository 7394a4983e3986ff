"""Persian text folded to one spelling, so that a rule's keyword matches however a customer typed it.

The same Persian word reaches us in many spellings: Arabic keyboards give ي and ك for ی and ک, phones
type ۱۲۳ or ١٢٣ for 123, some writers put a zero-width non-joiner (ZWNJ, the "half-space") inside
«می‌خواهم» and others write «میخواهم», and text copied from PDFs or old systems comes in Arabic
presentation forms. `fold` maps all of these to one form. It is for matching only: nothing folded is
ever stored or shown.

Decisions:
- آ is kept: it is a letter of its own in Persian (آب is not اب). Only أ, إ and ٱ fold to ا.
- ZWNJ and the other zero-width and direction marks are removed, not turned into spaces, so
  «می‌خواهم» and «میخواهم» fold alike, and so do «کتاب‌ها» and «کتابها».
- Harakat (U+064B..U+065F), the superscript alef (U+0670) and tatweel (U+0640) are removed.
- ۀ folds to ه, the same as ه followed by a hamza above (the hamza is a diacritic and goes).
- ئ and ؤ are kept: they are ordinary Persian spellings (مسئول, مؤسسه).
"""

from __future__ import annotations

import re
import unicodedata

_LETTERS = {
    "\u064a": "\u06cc",  # ي Arabic yeh -> ی Persian yeh
    "\u0649": "\u06cc",  # ى alef maksura -> ی
    "\u0643": "\u06a9",  # ك Arabic kaf -> ک Persian kaf
    "\u0629": "\u0647",  # ة teh marbuta -> ه
    "\u06c0": "\u0647",  # ۀ heh with yeh above -> ه
    "\u0623": "\u0627",  # أ alef with hamza above -> ا
    "\u0625": "\u0627",  # إ alef with hamza below -> ا
    "\u0671": "\u0627",  # ٱ alef wasla -> ا
}
_DIGITS = {chr(0x06F0 + i): str(i) for i in range(10)} | {chr(0x0660 + i): str(i) for i in range(10)}
_REMOVED = (
    [chr(c) for c in range(0x064B, 0x0660)]  # harakat: fatha, kasra, damma, tanwin, shadda, sukun, ...
    + ["\u0670", "\u0640"]  # superscript alef, tatweel
    + ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]  # zero-width space/non-joiner/joiner,
    # word joiner, byte-order mark, soft hyphen
    + ["\u200e", "\u200f", "\u061c"]  # LRM, RLM, Arabic letter mark
    + [chr(c) for c in range(0x202A, 0x202F)]  # bidi embeddings and overrides
    + [chr(c) for c in range(0x2066, 0x206A)]  # bidi isolates
)
_TABLE = str.maketrans(_LETTERS | _DIGITS | dict.fromkeys(_REMOVED, None))
_SPACES = re.compile(r"\s+")


def fold_letters(text: str) -> str:
    """Letters, digits and marks folded (see the module's notes), with case and spacing untouched.

    This is the fold for regular expressions: casefolding a pattern would turn `\\D` into `\\d`."""
    # NFKC first: it composes ا + U+0653 into آ before the harakat (U+0653 among them) are removed,
    # and unfolds Arabic presentation forms (ﻓﺎﻛﺘﻮﺭ) and full-width Latin into ordinary letters.
    return unicodedata.normalize("NFKC", text).translate(_TABLE)


def fold(text: str) -> str:
    """`text` as rules match it: letters, digits and marks folded, Latin casefolded, and every run of
    whitespace (newlines included) turned into one space, with none at either end."""
    return _SPACES.sub(" ", fold_letters(text).casefold()).strip()
