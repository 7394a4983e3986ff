"""Reading survey answers: scores from customers' SMS, email and Telegram replies, and survey buttons."""

from __future__ import annotations

import random

import pytest

from workflows.messages import render
from workflows.survey import MAX_WORDS, SCORES, button_data, parse_button, parse_score

ZWNJ = "\u200c"

ANSWERS = [
    # Digits alone, in every script customers type them in.
    ("5", 5), ("1", 1), (" 3 ", 3), ("۵", 5), ("۱", 1), ("٣", 3), ("٥", 5), ("４", 4), ("5️⃣", 5),
    ("5.", 5), ("4!", 4), ("(3)", 3), ("«۲»", 2),
    # Digits with words around them.
    ("۵ عالی بود", 5), ("I'd say 4", 4), ("امتیاز: ۳", 3), ("امتیاز۴", 4), ("خیلی خوب بود ۵", 5),
    ("5 stars!!!", 5), ("۲، راستش راضی نبودم", 2), ("1 - terrible, nobody called me back", 1),
    ("با سلام\nنمره من ۴ است\nممنون", 4), ("Score: 5\nThanks a lot", 5), ("5 5 5", 5),
    ("Thanks, 5 - Reza was super helpful", 5), ("امتیازم به شما ۴ هست، ممنون از پیگیری", 4),
    ("جواب دادید ولی دیر. ۳", 3),
    # Out of five.
    ("4/5", 4), ("۴/۵", 4), ("5/5", 5), ("4 out of 5", 4), ("۴ از ۵", 4), ("۳ از ۵ میدم", 3),
    ("four out of five", 4), ("چهار از پنج", 4), ("5/5, great job", 5),
    # Quantities, dates, times and references are no scores.
    ("۳ روز طول کشید ولی ۴", 4), ("it took 3 days, but 4", 4), ("T-1042: 5", 5),
    ("5, order 123456 arrived fine", 5), ("۵. ساعت ۱۰:۳۰ تماس گرفتند", 5), ("۲ بار تماس گرفتم، ۳", 3),
    ("5 (ticket T-1042)", 5), ("5\nOn 12/05/2024 at 10:30, Support wrote:", 5),
    # Star emoji.
    ("⭐⭐⭐⭐", 4), ("⭐", 1), ("⭐⭐⭐⭐⭐ عالی", 5), ("★★★☆☆", 3), ("🌟🌟", 2), ("⭐️⭐️⭐️", 3),
    # Number words.
    ("پنج", 5), ("یک", 1), ("يک", 1), ("سه", 3), ("چهار، ممنون", 4), ("پنج ستاره", 5),
    ("بهتون پنج میدم", 5), (f"پنج می{ZWNJ}دم", 5), ("امتیاز من چهار است", 4), (f"نمره{ZWNJ}ام سه", 3),
    ("five", 5), ("Four", 4), ("TWO", 2), ("one", 1), ("five stars", 5), ("three, thanks", 3),
    ("I'd give it a five, thanks", 5), ("I would rate you four.", 4), ("my rating would be four today", 4),
    ("I'd say three", 3), ("خیلی عالی بود، پنج", 5),
    # Digits win over stars and words: "یه ۵ میدم" has the article "یه", "one ..." the pronoun.
    ("⭐ 5", 5), ("یه ۵ میدم", 5), ("یک ۵ بهتون میدم", 5), ("one word: 5", 5),
]

NO_SCORE = [
    "", " ", "\n", "ممنون", "Thanks!", "عالی", "great", "ok", "yes", "نه", "خیر",
    # Ambiguous.
    "2 or 3", "۲ یا ۳", "3-4", "4.5", "۴٫۵", "3,4", "either 4 or 5", "two or three", "دو یا سه",
    "⭐⭐⭐ 5 ... no, 4", "between 3 and 4",
    # Out of range.
    "0", "۰", "6", "۶", "٧", "9", "10", "۱۰", "100", "10/10", "8/10", "0/5", "six", "شش", "ten",
    "⭐⭐⭐⭐⭐⭐", "5 or 6",
    # Quantities, dates, times, references, phone numbers.
    "3 days", "۳ روز", "۲ بار", "5%", "۵ تا", "10:30", "1402/05/03", "T-1042", "#3", "A4", "4th", "3G",
    "09121234567", "۰۹۱۲ ۱۲۳ ۴۵۶۷", "+98 912 123 4567", "order 123456", "at 3 pm", "15 خرداد", "3 June",
    # Number words that are no score.
    "یک سوال دیگر دارم", "یک مشکل دیگه هم هست", "no one answered my email", "give it one more try",
    "two of my orders are missing", "سه تا سفارش داشتم", "دوباره خراب شد", "دوست داشتم", "پنجره",
    "نزدیک بود", "one", "I have one more thing to say",
    # Questions are messages to answer.
    "why 5?", "میشه ۲ تا دیگه بفرستید؟", "is 3 days normal?",
    # Only quoted text.
    "> 5", ">5\n> thanks", "\n> Rate us from 1 to 5\n",
]


@pytest.mark.parametrize(("text", "score"), ANSWERS)
def test_answers(text: str, score: int) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize("text", NO_SCORE)
def test_no_score(text: str) -> None:
    if text == "one":
        assert parse_score(text) == 1  # alone it is a score; the pronoun needs company
        return
    assert parse_score(text) is None


def test_every_score_in_every_script() -> None:
    for score in SCORES:
        for text in (str(score), "۰۱۲۳۴۵"[score], "٠١٢٣٤٥"[score], f"{score}/5", "⭐" * score,
                     ["", "one", "two", "three", "four", "five"][score],
                     ["", "یک", "دو", "سه", "چهار", "پنج"][score]):
            assert parse_score(text) == score, text


def test_email_reply_counts_only_the_customers_own_text() -> None:
    reply = (
        "4\n"
        "\n"
        "On Sat, 3 May 2025 at 10:12, Kartabl Support <support@example.ir> wrote:\n"
        "> How happy are you with our answer to request T-1042?\n"
        "> Please reply with a single digit from 1 (very poor) to 5 (excellent).\n"
        ">> Quoted twice: 2\n"
    )
    assert parse_score(reply) == 4
    persian = "۵\n\nدر تاریخ ۱۴۰۴/۰۲/۱۳ پشتیبانی نوشت:\n> لطفاً از ۱ تا ۵ امتیاز دهید\n"
    assert parse_score(persian) == 5
    signature = "3\n\n-- \nReza Karimi\nSales, floor 2\n+98 21 1234 5678\n"
    assert parse_score(signature) == 3
    outlook = "2\n\n-----Original Message-----\nFrom: Support\nRate us 1 to 5\n"
    assert parse_score(outlook) == 2
    assert parse_score("  > 5\nfour") == 4  # an indented quote is a quote too
    assert parse_score("> 5\n") is None


def test_answers_to_our_own_survey_texts() -> None:
    """Customers often answer by sending the survey back with a digit on top; the survey's own "1 to 5"
    is then quoted, and only the digit counts."""
    for language in ("fa", "en"):
        survey = render("survey", language=language, channel="email", ref="T-1042", name="Ali", url=None)
        quoted = "\n".join(f"> {line}" for line in survey.splitlines())
        assert parse_score(f"۴\n\n{quoted}") == 4
        assert parse_score(survey) is None  # the survey itself is no answer


def test_a_long_message_is_no_answer() -> None:
    letter = " ".join(["word"] * MAX_WORDS)
    assert parse_score(f"{letter} 5") == 5
    assert parse_score(f"{letter} more 5") is None


@pytest.mark.parametrize("thing", [None, 5, b"5", ["5"], 4.0])
def test_not_text(thing: object) -> None:
    assert parse_score(thing) is None  # type: ignore[arg-type]


def test_fuzz_never_raises() -> None:
    rng = random.Random(1042)
    alphabet = list(
        "0123456789۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩ abcdefghijklmnopqrstuvwxyz/.:,-#%>?؟!()«»\n\t"
        "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهیيكة\u200c\u200d\u064b\u0650⭐★☆🌟️⃣\ufeff\x00\ud800"
    ) + ["یک", "دو", "سه", "چهار", "پنج", "one", "two", "five", "star", "out of", "از", "امتیاز", "give",
         "rate", "wrote:", "-- ", "روز", "days", "no ", "T-", "-----Original Message-----"]
    seen: set[int | None] = set()
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        score = parse_score(text)
        assert score is None or score in SCORES, (text, score)
        seen.add(score)
    assert seen == {None, 1, 2, 3, 4, 5}


def test_huge_input_is_quick_and_harmless() -> None:
    assert parse_score("5" + " ۵" * 200_000) == 5  # digits are no words: MAX_WORDS does not apply
    assert parse_score("5 " + "خیلی " * 200_000) is None
    assert parse_score("/".join(["1"] * 100_000)) == 1
    assert parse_score("x" * 1_000_000) is None


# -- Telegram buttons ---------------------------------------------------------------------------------

def test_button_round_trip() -> None:
    assert button_data(1042, 5) == "csat:1042:5"
    for ticket_id in (1, 42, 1042, 10**18 - 1):
        for score in SCORES:
            data = button_data(ticket_id, score)
            assert len(data.encode()) <= 64
            assert parse_button(data) == (ticket_id, score)


@pytest.mark.parametrize(("ticket_id", "score"), [
    (0, 5), (-1, 5), (10**18, 5), (1042, 0), (1042, 6), (True, 5), (1042, True), ("1042", 5), (1042, 4.0),
])
def test_button_data_refuses(ticket_id: object, score: object) -> None:
    with pytest.raises(ValueError):
        button_data(ticket_id, score)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [
    None, b"csat:1042:5", "", "csat", "csat:1042", "csat:1042:", "csat:1042:6", "csat:1042:0",
    "csat:0:5", "csat:01042:5", "csat:-1:5", "csat:1042:5:extra", " csat:1042:5", "csat:1042:5\n",
    "CSAT:1042:5", "take:1042", "csat:۱۰۴۲:۵", "csat:1042:٥", "csat:1" + "0" * 18 + ":5",
])
def test_parse_button_refuses(data: object) -> None:
    assert parse_button(data) is None
