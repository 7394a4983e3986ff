"""Telegram text helpers: HTML escaping, UTF-16 lengths, and splitting long Persian and emoji text."""

from __future__ import annotations

import random
import unicodedata

import pytest

from channels.telegram.text import CAPTION_LIMIT, TEXT_LIMIT, escape, split_text, utf16_len

ZWNJ = "\u200c"
SENTENCES = (
    f"سلام، سفارش من هنوز نرسیده و می{ZWNJ}خواستم پیگیری کنم.",
    f"کد رهگیری را از پنل کاربری برداشتم ولی در سامانه{ZWNJ}ی پست پیدا نمی{ZWNJ}شود.",
    "لطفاً بررسی کنید و نتیجه را به من اطلاع بدهید؛ ممنونم 🙏",
    "مبلغ ۲٬۵۰۰٬۰۰۰ ریال در تاریخ ۱۴۰۳/۰۹/۰۲ پرداخت شد.",
)


def _persian(chars: int, *, paragraphs: bool) -> str:
    rng = random.Random(chars)
    out: list[str] = []
    while sum(map(len, out)) < chars:
        sentence = rng.choice(SENTENCES)
        out.append(sentence + ("\n\n" if paragraphs and rng.random() < 0.2 else " "))
    return "".join(out).rstrip()


def _words(text: str) -> list[str]:
    return text.split()


def test_limits() -> None:
    assert (TEXT_LIMIT, CAPTION_LIMIT) == (4096, 1024)


def test_escape_for_parse_mode_html() -> None:
    assert escape("<b>hi</b> & co") == "&lt;b&gt;hi&lt;/b&gt; &amp; co"
    assert escape('"quoted" \'too\' سلام') == '"quoted" \'too\' سلام'


@pytest.mark.parametrize(("text", "units"), [
    ("", 0), ("abc", 3), ("سلام", 4), (f"می{ZWNJ}خواهم", 8), ("😀", 2), ("a😀b", 4),
    ("👨‍👩‍👧", 8), ("🇮🇷", 4), ("❤️", 2), ("\ud83d", 1),
])
def test_utf16_len_counts_what_telegram_counts(text: str, units: int) -> None:
    assert utf16_len(text) == units


def test_text_within_the_limit_is_one_part_unchanged() -> None:
    assert split_text(" سلام \n") == [" سلام \n"]
    assert split_text("x" * TEXT_LIMIT) == ["x" * TEXT_LIMIT]
    assert split_text("") == []
    assert split_text(" \n\n ") == []


def test_ten_thousand_persian_characters_split_at_paragraphs() -> None:
    text = _persian(10_000, paragraphs=True)
    parts = split_text(text)
    paragraphs = text.split("\n\n")
    assert len(text) >= 10_000 and len(parts) >= 3
    assert all(utf16_len(part) <= TEXT_LIMIT for part in parts)
    assert all(set(part.split("\n\n")) <= set(paragraphs) for part in parts)  # whole paragraphs only
    assert "\n\n".join(parts) == text


def test_one_long_persian_paragraph_splits_at_spaces_and_keeps_every_word_whole() -> None:
    text = _persian(10_000, paragraphs=False)
    parts = split_text(text)
    assert len(parts) == 3
    assert all(utf16_len(part) <= TEXT_LIMIT for part in parts)
    assert [word for part in parts for word in _words(part)] == _words(text)
    assert " ".join(parts) == text
    assert all(part == part.strip() and not part.endswith(ZWNJ) for part in parts)


def test_a_line_break_is_preferred_to_a_space() -> None:
    text = "aaa bbb\nccc ddd eee"
    assert split_text(text, 12) == ["aaa bbb", "ccc ddd eee"]
    assert split_text("aaa\n\nbbb\nccc ddd", 13) == ["aaa", "bbb\nccc ddd"]


def test_emoji_count_two_and_are_never_cut_in_half() -> None:
    text = "😀" * 3000
    parts = split_text(text)
    assert [utf16_len(part) for part in parts] == [4096, 1904]
    assert "".join(parts) == text
    assert split_text("ab😀", 3) == ["ab", "😀"]


def test_a_hard_cut_keeps_a_letter_with_its_marks_and_joiners() -> None:
    kasra = "بِ" * 4  # be + kasra, a diacritic that must stay with its letter
    assert split_text(kasra, 5) == ["بِبِ", "بِبِ"]
    assert split_text(f"نمی{ZWNJ}شود", 3) == ["نم", f"ی{ZWNJ}ش", "ود"]  # the ZWNJ stays with its letter
    family = "👨‍👩‍👧"
    assert split_text("abc" + family, 8) == ["abc", family]


def test_a_zwnj_never_starts_a_part_when_a_space_is_near() -> None:
    text = " ".join([f"می{ZWNJ}خواهم"] * 2000)
    parts = split_text(text, 100)
    assert all(not part.startswith(ZWNJ) and not part.endswith(ZWNJ) for part in parts)
    assert " ".join(parts) == text


def test_leading_white_space_never_makes_an_empty_part() -> None:
    parts = split_text("\n\n" + "word " * 10, 12)
    assert parts and all(part.strip() for part in parts)
    assert all(utf16_len(part) <= 12 for part in parts)


def test_a_limit_too_small_for_any_character_is_refused() -> None:
    with pytest.raises(ValueError):
        split_text("abc", 1)


_ALPHABET = "ab سلام" + ZWNJ + "\u0650\u064b\n\n\n  \t😀🇮🇷\u200d❤️" + "\u00a0"


@pytest.mark.parametrize("seed", range(40))
def test_random_text_keeps_every_visible_character_in_order_within_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([2, 3, 7, 16, 64])
    text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 400)))
    parts = split_text(text, limit)
    assert all(utf16_len(part) <= limit and part.strip() for part in parts)
    assert "".join("".join(part.split()) for part in parts) == "".join(text.split())


def test_marks_start_a_part_only_when_no_better_cut_exists() -> None:
    text = "سلامِ " * 500
    for part in split_text(text, 50):
        assert unicodedata.category(part[0]) not in ("Mn", "Mc", "Me")
