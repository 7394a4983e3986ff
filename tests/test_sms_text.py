"""SMS text rules: GSM-7 or UCS-2, how many parts a text takes, and shortening to a part budget."""

from __future__ import annotations

import random
import unicodedata

import pytest

from channels.sms.text import (
    GSM_BASIC,
    GSM_EXTENSION,
    LIMITS,
    encoding,
    parts,
    shorten,
    split_parts,
)
from gateway.domain import ChannelKind

ZWNJ = "\u200c"
REF = "T-1042"
PERSIAN = (
    f"سلام، سفارش شما امروز ارسال شد و کد رهگیری آن در پنل کاربری هست. اگر تا فردا نرسید، "
    f"لطفاً با همین شماره تماس بگیرید تا پیگیری کنیم؛ می{ZWNJ}توانید پاسخ همین پیامک را هم بفرستید. "
) * 4
ENGLISH = (
    "Hello, your order left our warehouse today and the tracking code is in your account. "
    "If it has not arrived by tomorrow, reply to this message and we will chase it for you. "
) * 4
NOTES = {
    ("fa", "email"): " … متن کامل به ایمیل شما فرستاده شد [T-1042]",
    ("fa", "telegram"): " … متن کامل به تلگرام شما فرستاده شد [T-1042]",
    ("en", "email"): " {dots} full answer sent to your email [T-1042]",
    ("en", "telegram"): " {dots} full answer sent to your Telegram [T-1042]",
    ("fa", None): " {dots} [T-1042]",
    ("en", None): " {dots} [T-1042]",
}


def _units(text: str) -> int:
    """What a part holds of `text` in its own encoding: septets or UTF-16 code units."""
    if encoding(text) == "gsm7":
        return len(text) + sum(char in GSM_EXTENSION for char in text)
    return len(text.encode("utf-16-le")) // 2


def test_the_gsm_tables_are_the_standard_ones() -> None:
    assert (len(GSM_BASIC), len(GSM_EXTENSION)) == (127, 10)  # 128 codes less the escape
    assert not GSM_BASIC & GSM_EXTENSION
    assert LIMITS == {"gsm7": (160, 153), "ucs2": (70, 67)}


@pytest.mark.parametrize(("text", "expected"), [
    ("", "gsm7"),
    ("Order 42 @ £10, ok? ¡Sì! Ñandù ÄÖÜ äöüà Δ_ΦΓΛΩΠΨΣΘΞ", "gsm7"),
    ("{}[]~\\|^€", "gsm7"),
    ("page\fbreak\r\n", "gsm7"),
    ("price: 5€", "gsm7"),
    ("سلام", "ucs2"),
    ("مرحبا بكم", "ucs2"),
    ("ok 😀", "ucs2"),
    (f"a{ZWNJ}b", "ucs2"),
    ("ça va", "ucs2"),  # only the capital Ç is in the table
    ("`backtick`", "ucs2"),
    ("\x1b", "ucs2"),  # the escape is not a character of its own
    ("…", "ucs2"),
    ("a\u00a0b", "ucs2"),  # no-break space
])
def test_encoding(text: str, expected: str) -> None:
    assert encoding(text) == expected


@pytest.mark.parametrize(("text", "count"), [
    ("", 1),
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("a" * 459, 3), ("a" * 460, 4),
    ("س" * 70, 1), ("س" * 71, 2), ("س" * 134, 2), ("س" * 135, 3), ("س" * 201, 3), ("س" * 202, 4),
    ("€" * 80, 1), ("€" * 81, 2), ("a" * 159 + "€", 2),
    ("😀" * 35, 1), ("😀" * 36, 2), ("a" + "😀" * 35, 2),
    (f"می{ZWNJ}خواهم" * 8, 1), (f"می{ZWNJ}خواهم" * 9, 2),  # 8 units each: ZWNJ counts like a letter
    ("a" * 160 + "س", 3),  # one Persian letter turns 161 characters into UCS-2
])
def test_parts(text: str, count: int) -> None:
    assert parts(text) == count == len(split_parts(text))


def test_an_extension_character_is_never_split_from_its_escape() -> None:
    text = "a" * 152 + "€" + "a" * 10
    assert split_parts(text) == ["a" * 152, "€" + "a" * 10]


def test_an_emoji_is_never_split_into_its_surrogates() -> None:
    text = "a" + "😀" * 40
    pieces = split_parts(text)
    assert pieces == ["a" + "😀" * 33, "😀" * 7]
    assert all(piece.encode("utf-16-le") for piece in pieces)  # strict: a lone surrogate would raise


@pytest.mark.parametrize("seed", range(20))
def test_parts_join_back_and_each_fits(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab €{ س😀" if seed % 2 else "abc {}[]€ \n"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(600)))
    pieces = split_parts(text)
    single, each = LIMITS[encoding(text)]
    assert "".join(pieces) == text
    if len(pieces) == 1:
        assert _units(text) <= single
    else:
        assert all(0 < _units(piece) <= each for piece in pieces)
        assert all(encoding(piece) == encoding(text) or encoding(text) == "ucs2" for piece in pieces)


@pytest.mark.parametrize(("text", "max_parts"), [
    ("", 1), ("a" * 160, 1), ("س" * 70, 1), ("a" * 306, 2), (PERSIAN[:201], 3), (f"می{ZWNJ}خواهم", 1),
])
@pytest.mark.parametrize("language", ["fa", "en"])
def test_text_that_fits_is_returned_untouched(text: str, max_parts: int, language: str) -> None:
    assert shorten(text, max_parts=max_parts, ref=REF, elsewhere="email", language=language) == text


@pytest.mark.parametrize("max_parts", [1, 2, 3])
@pytest.mark.parametrize("language", ["fa", "en"])
@pytest.mark.parametrize("elsewhere", [None, "email", "telegram"])
@pytest.mark.parametrize("text", [PERSIAN, ENGLISH], ids=["persian", "english"])
def test_shorten_cuts_at_a_word_and_ends_with_the_reference(
    text: str, elsewhere: str | None, language: str, max_parts: int
) -> None:
    result = shorten(text, max_parts=max_parts, ref=REF, elsewhere=elsewhere, language=language)
    note = NOTES[language, elsewhere]
    plain = text is ENGLISH and not (language == "fa" and elsewhere)
    suffix = note.format(dots="..." if plain else "…")
    assert result.endswith(suffix)
    head = result.removesuffix(suffix)
    assert text.startswith(head) and text[len(head)].isspace()  # whole words only
    assert parts(result) <= max_parts
    assert encoding(result) == ("gsm7" if plain else "ucs2")
    assert len(result) > len(suffix) + 10  # the room is used, not given away


def test_a_persian_note_on_english_text_counts_in_ucs2() -> None:
    result = shorten(ENGLISH, max_parts=1, ref=REF, elsewhere="email", language="fa")
    assert encoding(result) == "ucs2" and _units(result) <= 70
    assert result.startswith("Hello,") and result.endswith("فرستاده شد [T-1042]")


def test_english_text_stays_gsm7_with_an_english_note() -> None:
    result = shorten(ENGLISH, max_parts=1, ref=REF, elsewhere="email", language="en")
    assert encoding(result) == "gsm7" and 140 < _units(result) <= 160


def test_persian_text_keeps_its_zwnj_and_letters_exactly() -> None:
    text = f"می{ZWNJ}خواهم " * 60
    result = shorten(text, max_parts=2, ref=REF, elsewhere=None, language="fa")
    head = result.removesuffix(" … [T-1042]")
    assert text.startswith(head) and head.count(ZWNJ) == head.count("می")


def test_a_word_longer_than_the_room_is_cut_but_not_inside_a_cluster() -> None:
    word = f"می{ZWNJ}خواهمِ" * 40  # ZWNJ and a kasra (a combining mark) throughout, no space
    for max_parts in (1, 2, 3):
        result = shorten(word, max_parts=max_parts, ref=REF, elsewhere=None, language="fa")
        head = result.removesuffix(" … [T-1042]")
        assert word.startswith(head) and parts(result) <= max_parts
        assert head[-1] != ZWNJ and word[len(head)] != ZWNJ
        assert unicodedata.category(word[len(head)]) != "Mn"


def test_a_long_url_is_cut_inside_rather_than_dropped() -> None:
    text = "See https://example.com/" + "x" * 400
    result = shorten(text, max_parts=1, ref=REF, elsewhere=None, language="en")
    assert result.startswith("See https://example.com/xxx") and result.endswith(" ... [T-1042]")
    assert len(result) == 160 - 2  # the brackets are extension characters: two septets each


def test_the_note_names_any_other_channel_as_given() -> None:
    result = shorten(ENGLISH, max_parts=1, ref=REF, elsewhere="WhatsApp", language="en")
    assert result.endswith(" ... full answer sent to your WhatsApp [T-1042]")
    by_kind = shorten(ENGLISH, max_parts=1, ref=REF, elsewhere=ChannelKind.EMAIL, language="fa-IR")
    assert by_kind.endswith(NOTES["fa", "email"])


def test_shorten_without_a_reference_leaves_out_the_brackets() -> None:
    result = shorten(ENGLISH, max_parts=1, ref="", elsewhere=None, language="en")
    assert result.endswith(" we will ...") and "[" not in result


@pytest.mark.parametrize("max_parts", [0, -1])
def test_a_budget_under_one_part_is_refused(max_parts: int) -> None:
    with pytest.raises(ValueError, match="max_parts"):
        shorten("hi", max_parts=max_parts, ref=REF, elsewhere=None, language="en")


def test_a_suffix_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="suffix"):
        shorten("س" * 100, max_parts=1, ref="T-" + "9" * 200, elsewhere=None, language="fa")


@pytest.mark.parametrize("max_parts", [1, 2, 3])
def test_shorten_always_fits(max_parts: int) -> None:
    rng = random.Random(max_parts)
    sources = (PERSIAN * 2, ENGLISH * 2, ("Hi {team} [ok] €5 " * 40), ("😀 سلام ok " * 60), "x" * 600)
    for length in range(0, 600, 3):
        for source in sources:
            text = source[:length]
            elsewhere = rng.choice([None, "email", "telegram"])
            language = rng.choice(["fa", "en"])
            result = shorten(text, max_parts=max_parts, ref=REF, elsewhere=elsewhere, language=language)
            assert parts(result) <= max_parts, (length, source[:10], elsewhere, language)
            if parts(text) <= max_parts:
                assert result == text
            else:
                assert result.endswith("[T-1042]") and result[:20] == text[:20]
