"""Reading a customer's answer to the satisfaction survey: a score of 1 to 5 from a text reply (SMS,
email, Telegram text) or from a Telegram inline button's callback data."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["BUTTON_PREFIX", "MAX_WORDS", "SCORES", "button_data", "parse_button", "parse_score"]

SCORES = range(1, 6)
#: A reply with more words than this is a message, not a survey answer, whatever digits it holds.
MAX_WORDS = 40
#: The callback data of a survey button starts with this, then the ticket id and the score.
BUTTON_PREFIX = "csat"
_BUTTON = re.compile(rf"{BUTTON_PREFIX}:([1-9][0-9]{{0,17}}):([1-5])")
_CALLBACK_DATA_LIMIT = 64  # bytes, Telegram's limit on an inline button's callback_data

_DIGITS = str.maketrans(
    "۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩",  # Persian, then Arabic-Indic
    "01234567890123456789",
)
_LETTERS = str.maketrans({"ي": "ی", "ى": "ی", "ك": "ک", "\u200c": "", "\u200d": ""})
_STARS = ("⭐", "★", "🌟")

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "صفر": 0, "یک": 1, "دو": 2, "سه": 3, "چهار": 4, "پنج": 5, "شش": 6, "هفت": 7, "هشت": 8,
    # "نه" (nine) and "ده" (ten) are left out: they are also "no" and "give".
}
_WORD_ALTERNATION = "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
#: "4/5", "4 out of 5", "۴ از ۵", "four of five": the score is the first number.
_OUT_OF_FIVE = re.compile(
    rf"(?<![\w/.:,-])([0-9]|{_WORD_ALTERNATION})\s*(?:/|out\s+of|of|از)\s*(?:5|five|پنج)(?![\w/.:,-]*[0-9])")
#: A number standing alone or joined to others by / . : , - (a date, a time, an amount, "4.5"); not part
#: of a word, a ticket reference ("T-1042") or a "#3".
_NUMBER = re.compile(r"(?<![A-Za-z0-9_#])(?<![A-Za-z]-)([0-9]+(?: ?[/.:,-] ?[0-9]+)*)(?![A-Za-z0-9])")
_WORD = re.compile(r"[^\W\d_]+|%")
_NEXT_WORD = re.compile(r"\s*([^\W\d_]+|%)")
_ATTRIBUTION = re.compile(r"(?:wrote|نوشت|نوشته است)\s*:?\s*$", re.IGNORECASE)
_ORIGINAL = re.compile(r"-{3,}\s*original message\s*-{3,}|_{10,}", re.IGNORECASE)

#: Words after a number that make it a quantity, a time or a date rather than a score.
_UNITS = frozenset("""
    % day days hour hours hr hrs minute minutes min mins second seconds sec week weeks month months
    year years time times am pm item items pcs piece pieces toman tomans rial rials dollar dollars
    usd person people january february march april may june july august september october november
    december jan feb mar apr jun jul aug sep sept oct nov dec
    روز روزه ساعت ساعته دقیقه ثانیه هفته ماه ماهه سال بار تومان تومن ریال دلار تا عدد نفر قسط
    صبح ظهر عصر شب بامداد فروردین اردیبهشت خرداد تیر مرداد شهریور مهر آبان آذر دی بهمن اسفند
""".split())
#: A number word that is the only word of a reply, apart from these, is a score.
_FILLERS = frozenset("""
    thanks thank you thx ok okay very good great excellent bad poor awful fine nice so much i d
    say give it a is my score rating star stars
    ممنون مرسی سپاس متشکرم تشکر خیلی عالی خوب بد بود بودید افتضاح ضعیف امتیاز نمره ستاره من
    میدم میدهم میدیم میدهیم با سلام
""".split())
#: Within three words before a number word, these make it a score wherever it stands.
_STRONG_BEFORE = frozenset("""
    score scores rating ratings grade امتیاز امتیازم امتیازمون امتیازی نمره نمرهام نمرهمون نمرهی
""".split())
#: Within three words before a number word, these make it a score when nothing but punctuation or the
#: end follows ("I'd give it four", but not "give it one more try").
_WEAK_BEFORE = frozenset("give gave giving rate rated say said would".split())
#: Right after a number word, these make it a score.
_AFTER = frozenset("star stars ستاره امتیاز نمره میدم میدهم میدیم میدهیم بدم بدهم".split())
#: "no one", "every one": a pronoun, not a score.
_NOT_BEFORE_ONE = frozenset("no any every some each which this that the someone".split())


def parse_score(text: str) -> int | None:
    """The score of 1 to 5 a customer's reply gives, or None if it gives none or more than one.

    Reads ASCII, Persian and Arabic-Indic digits ("۵ عالی بود", "I'd say 4", "امتیاز: ۳", "4/5",
    "۴ از ۵"), then, if there are none, star emoji ("⭐⭐⭐⭐" is 4), then, if there are none, number
    words in Persian and English ("پنج", "four stars"). A number word counts only as the reply's one
    real word or next to a word about scoring, so "یک سوال دیگر دارم" gives no score. Numbers that are
    quantities or dates ("۳ روز", "10:30", "T-1042", an order number) are skipped. Two different scores
    ("2 or 3", "4.5"), a score out of range (0, 6 to 9), a question mark (the reply is a question to
    answer) or more than `MAX_WORDS` words give None.
    For email, pass the customer's own text; lines quoted with ">", "... wrote:" lines and everything
    from a "-- " signature or an "Original Message" separator are ignored anyway. Never raises.
    """
    if not isinstance(text, str):
        return None
    own = _normalize(_own_text(text))
    if "?" in own or "؟" in own or len(_WORD.findall(own)) > MAX_WORDS:
        return None  # a question, or a letter: a message to answer, not a survey answer
    own = _OUT_OF_FIVE.sub(r" \1 star ", own)  # "4/5" is "4 star", which every rule below takes
    words = list(_WORD.finditer(own))
    scores = _digit_scores(own) or _star_scores(own) or _word_scores(own, words)
    if len(scores) != 1:
        return None
    (score,) = scores
    return score if score in SCORES else None


def button_data(ticket_id: int, score: int) -> str:
    """The callback data of the survey button giving `score` to ticket `ticket_id`: "csat:1042:5".

    Raises ValueError for a ticket id below 1 or longer than 18 digits, or a score outside 1 to 5.
    """
    if type(ticket_id) is not int or not 1 <= ticket_id < 10**18:
        raise ValueError(f"not a ticket id: {ticket_id!r}")
    if type(score) is not int or score not in SCORES:
        raise ValueError(f"a survey score is 1 to 5, not {score!r}")
    data = f"{BUTTON_PREFIX}:{ticket_id}:{score}"
    assert len(data.encode()) <= _CALLBACK_DATA_LIMIT  # at most 26 bytes by the checks above
    return data


def parse_button(data: object) -> tuple[int, int] | None:
    """(ticket id, score) from a survey button's callback data, or None if it is no survey button's."""
    if not isinstance(data, str):
        return None
    match = _BUTTON.fullmatch(data)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _own_text(text: str) -> str:
    """The lines the customer wrote: no quoted lines, attribution lines, signature or forwarded original."""
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "--" or _ORIGINAL.fullmatch(stripped):
            break
        if stripped.startswith(">") or _ATTRIBUTION.search(stripped):
            continue
        lines.append(line)
    return "\n".join(lines)


def _normalize(text: str) -> str:
    # NFKC folds Arabic presentation forms and full-width digits; the table then folds Persian and
    # Arabic-Indic digits to ASCII, Arabic yeh and kaf to Persian, and drops joiners so "می‌دم" is "میدم".
    return unicodedata.normalize("NFKC", text).translate(_DIGITS).translate(_LETTERS).lower()


def _digit_scores(text: str) -> set[int]:
    scores: set[int] = set()
    for match in _NUMBER.finditer(text):
        pieces = re.split(r" ?[/.:,-] ?", match.group(1))
        if any(len(piece) > 1 for piece in pieces):
            continue  # a date, a time, a phone number, an amount, a reference: no score
        if len(pieces) == 1 and _next_word(text, match.end()) in _UNITS:
            continue  # "3 days", "۲ بار"
        scores.update(int(piece) for piece in pieces)  # "4.5" or "3-4" gives two: ambiguous
    return scores


def _star_scores(text: str) -> set[int]:
    count = sum(text.count(star) for star in _STARS)
    return {count} if count else set()


def _word_scores(text: str, words: list[re.Match[str]]) -> set[int]:
    tokens = [word.group() for word in words]
    scores: set[int] = set()
    for index, token in enumerate(tokens):
        value = _NUMBER_WORDS.get(token)
        if value is None:
            continue
        before = tokens[max(0, index - 3):index]
        after = tokens[index + 1] if index + 1 < len(tokens) else None
        if value == 1 and before and before[-1] in _NOT_BEFORE_ONE:
            continue
        alone = all(other in _FILLERS for i, other in enumerate(tokens) if i != index)
        ends = not re.match(r"\s*[^\W\d_]", text[words[index].end():])  # nothing, or punctuation next
        if (alone or after in _AFTER or _STRONG_BEFORE.intersection(before)
                or (ends and _WEAK_BEFORE.intersection(before))):
            scores.add(value)
    return scores


def _next_word(text: str, position: int) -> str | None:
    match = _NEXT_WORD.match(text, position)
    return match.group(1) if match else None
