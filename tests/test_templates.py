"""Customer message templates: every message in every language on every channel, SMS lengths, the
fallback order, strict values and the admin override directory."""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

import jinja2
import pytest

from channels.sms.text import LIMITS, encoding, parts
from gateway.domain import ChannelKind
from workflows.messages import (
    BUILTIN_DIR,
    DEFAULT_LANGUAGE,
    TemplateMissing,
    names,
    render,
    template_names,
)

NAMES = {"acknowledgement", "resolved", "survey", "survey_thanks", "reopened"}
#: The example workflow's own acknowledgements and the resolution notice with its survey in one message.
EXTRA = {"ack_billing", "after_hours", "resolved_survey"}
LANGUAGES = ("fa", "en")
CHANNELS = (ChannelKind.EMAIL, ChannelKind.SMS, ChannelKind.TELEGRAM)
REF = "T-1042"
CUSTOMERS = ("زهرا حسینی", "محمدرضا کریمی‌نژاد", "Sara Ahmadi", None)
OPENS = "شنبه ۷ آذر ۱۴۰۵، ساعت ۹:۰۰"


def values(name: str, *, ref: str = REF, customer: str | None = "زهرا حسینی", score: int = 5,
           url: str | None = "https://example.ir/survey/1042?t=abc") -> dict[str, object]:
    """Every value the built-in template `name` takes."""
    extra: dict[str, object] = {"survey": {"url": url}, "survey_thanks": {"score": score}}.get(name, {})
    return {"ref": ref, "name": customer, "opens": OPENS, **extra}


def test_the_built_in_names() -> None:
    assert names() == NAMES | EXTRA


@pytest.mark.parametrize("name", sorted(NAMES))
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_has_a_general_text_and_sms_and_email_variants(name: str, language: str) -> None:
    files = template_names()
    for suffix in ("", ".sms", ".email"):
        assert f"{name}.{language}{suffix}.j2" in files


@pytest.mark.parametrize(("name", "language", "channel"),
                         list(itertools.product(sorted(NAMES), LANGUAGES, CHANNELS)))
@pytest.mark.parametrize("customer", CUSTOMERS)
def test_every_message_renders(name: str, language: str, channel: ChannelKind, customer: str | None) -> None:
    text = render(name, language=language, channel=channel, **values(name, customer=customer))
    assert REF in text
    assert text == text.strip() and "{" not in text and "None" not in text
    assert "\n\n\n" not in text
    persian = re.search("[\u0600-\u06ff]", text.replace(customer or "", "")) is not None
    assert persian == (language == "fa")  # no Persian in the English texts, and Persian in the Persian
    if channel is ChannelKind.EMAIL:
        if customer:
            assert customer in text.splitlines()[0]  # the greeting names the customer
        assert "None" not in text.splitlines()[0]
    if channel is not ChannelKind.SMS and customer and name != "survey_thanks":
        assert customer in text


@pytest.mark.parametrize(("name", "language"), list(itertools.product(sorted(NAMES), LANGUAGES)))
@pytest.mark.parametrize("ref", [REF, "T-99999", "T-123456"])
@pytest.mark.parametrize("score", [1, 5])
def test_sms_texts_fit_one_part(name: str, language: str, ref: str, score: int) -> None:
    text = render(name, language=language, channel="sms", **values(name, ref=ref, score=score))
    assert parts(text) == 1
    assert len(text) <= LIMITS["ucs2"][0]  # one part even if a Persian name ever forced UCS-2
    if language == "en":
        assert encoding(text) == "gsm7"  # nothing in the English SMS texts forces UCS-2


def test_sms_texts_are_shorter_than_the_others() -> None:
    for name, language in itertools.product(NAMES, LANGUAGES):
        sms = render(name, language=language, channel="sms", **values(name))
        for channel in ("email", "telegram"):
            assert len(sms) < len(render(name, language=language, channel=channel, **values(name)))


@pytest.mark.parametrize("language", LANGUAGES)
def test_survey_says_how_to_answer_on_each_channel(language: str) -> None:
    def survey(channel: str, url: str | None = None) -> str:
        return render("survey", language=language, channel=channel, ref=REF, name="علی", url=url)

    one, five = ("۱", "۵") if language == "fa" else ("1", "5")
    for channel in ("sms", "email"):
        text = survey(channel)
        assert one in text and five in text
        assert ("رقم" if language == "fa" else "digit") in text
    assert ("دکمه" if language == "fa" else "button") in survey("telegram")
    assert ("دکمه" if language == "fa" else "button") not in survey("sms")
    link = "https://example.ir/csat/1042"
    assert link in survey("email", link)
    assert "http" not in survey("email", None)  # no dangling "click this link:" without a link


@pytest.mark.parametrize("language", LANGUAGES)
def test_survey_thanks_apologises_for_a_low_score(language: str) -> None:
    for channel in CHANNELS:
        low = render("survey_thanks", language=language, channel=channel, **values("survey_thanks", score=1))
        two = render("survey_thanks", language=language, channel=channel, **values("survey_thanks", score=2))
        high = render("survey_thanks", language=language, channel=channel, **values("survey_thanks", score=4))
        assert low == two != high
        sorry = "متأسف" if language == "fa" else "orry"
        assert sorry in low and sorry not in high


def test_email_variants_greet_and_sign_off() -> None:
    for name in NAMES:
        fa = render(name, language="fa", channel="email", **values(name, customer="مریم"))
        en = render(name, language="en", channel="email", **values(name, customer="Maryam"))
        assert fa.splitlines()[0] == "مریم گرامی، سلام" and fa.endswith("تیم پشتیبانی")
        assert en.splitlines()[0] == "Dear Maryam," and en.endswith("The support team")
        assert render(name, language="en", channel="email", **values(name, customer=None)).startswith("Hello,")


@pytest.mark.parametrize("language", [None, "", "de", "FA", "fa-IR", "x-../../etc", "123"])
def test_unknown_or_missing_language_falls_back_to_persian(language: str | None) -> None:
    for channel in CHANNELS:
        got = render("resolved", language=language, channel=channel, **values("resolved"))
        assert got == render("resolved", language="fa", channel=channel, **values("resolved"))


@pytest.mark.parametrize("language", ["en", "EN", "en-GB", "en_US"])
def test_a_language_tag_counts_by_its_primary_subtag(language: str) -> None:
    assert render("reopened", language=language, channel="sms", ref=REF, name=None) == (
        f"Your message reopened request {REF}. We will answer soon.")


def test_a_channel_without_a_variant_gets_the_general_text() -> None:
    general = (BUILTIN_DIR / "acknowledgement.en.j2").read_text(encoding="utf-8")
    assert "{{ ref }}" in general
    for channel in ("telegram", ChannelKind.LOOPBACK, "whatsapp"):
        assert render("acknowledgement", language="en", channel=channel, ref=REF, name="Ali") == (
            f"Hello Ali,\nwe received your message and opened request {REF}. One of us will answer soon.\n"
            "To add anything, just reply to this message.")


def test_a_missing_value_raises() -> None:
    with pytest.raises(jinja2.UndefinedError, match="ref"):
        render("acknowledgement", language="fa", channel="telegram", name="علی")
    with pytest.raises(jinja2.UndefinedError, match="name"):
        render("resolved", language="en", channel="email", ref=REF)
    with pytest.raises(jinja2.UndefinedError, match="score"):
        render("survey_thanks", language="fa", channel="sms", ref=REF, name=None)
    with pytest.raises(jinja2.UndefinedError, match="url"):
        render("survey", language="en", channel="email", ref=REF, name=None)


def test_values_are_not_escaped() -> None:
    text = render("acknowledgement", language="en", channel="telegram", ref=REF, name="O'Brien <&>")
    assert "O'Brien <&>" in text


def test_unknown_or_malformed_name() -> None:
    with pytest.raises(TemplateMissing, match="no message template named 'welcome'.*acknowledgement"):
        render("welcome", language="fa", channel="sms", ref=REF)
    assert issubclass(TemplateMissing, LookupError)
    for bad in ("../templates", "Survey", "", "survey.fa", "a/b"):
        with pytest.raises(ValueError, match="not a message template name"):
            render(bad, language="fa", channel="sms", ref=REF)
    with pytest.raises(ValueError, match="not a channel name"):
        render("survey", language="fa", channel="../sms", ref=REF)


# -- the admin override directory -------------------------------------------------------------------

def test_an_override_replaces_the_file_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "resolved.fa.sms.j2").write_text("کار {{ ref }} تمام شد.\n", encoding="utf-8")
    assert render("resolved", language="fa", channel="sms", extra_dir=tmp_path, ref=REF, name=None) == (
        f"کار {REF} تمام شد.")
    # The other files stay built-in, and without the directory nothing changed.
    assert render("resolved", language="fa", channel="telegram", extra_dir=tmp_path, ref=REF, name=None) == (
        render("resolved", language="fa", channel="telegram", ref=REF, name=None))
    assert "کار" not in render("resolved", language="fa", channel="sms", ref=REF, name=None)


def test_a_general_override_does_not_beat_a_built_in_channel_variant(tmp_path: Path) -> None:
    (tmp_path / "resolved.en.j2").write_text("Done: {{ ref }}", encoding="utf-8")
    assert render("resolved", language="en", channel="telegram", extra_dir=str(tmp_path), ref=REF,
                  name=None) == f"Done: {REF}"
    assert render("resolved", language="en", channel="sms", extra_dir=tmp_path, ref=REF, name=None) == (
        render("resolved", language="en", channel="sms", ref=REF, name=None))


def test_an_override_adds_languages_variants_and_messages(tmp_path: Path) -> None:
    (tmp_path / "resolved.de.j2").write_text("Anfrage {{ ref }} ist erledigt.", encoding="utf-8")
    (tmp_path / "acknowledgement.en.whatsapp.j2").write_text("WA {{ ref }}", encoding="utf-8")
    (tmp_path / "holiday.fa.j2").write_text("تا {{ until }} تعطیل هستیم.", encoding="utf-8")
    (tmp_path / "README.txt").write_text("not a template", encoding="utf-8")
    assert render("resolved", language="de-AT", channel="sms", extra_dir=tmp_path, ref=REF) == (
        f"Anfrage {REF} ist erledigt.")
    assert render("survey", language="de", channel="sms", extra_dir=tmp_path, ref=REF, name=None, url=None) == (
        render("survey", language="fa", channel="sms", ref=REF, name=None, url=None))  # no German survey
    assert render("acknowledgement", language="en", channel="whatsapp", extra_dir=tmp_path, ref=REF) == f"WA {REF}"
    assert names(tmp_path) == NAMES | EXTRA | {"holiday"}
    assert render("holiday", language="en", channel="sms", extra_dir=tmp_path, until="۱۵ فروردین") == (
        "تا ۱۵ فروردین تعطیل هستیم.")
    with pytest.raises(TemplateMissing, match="holiday"):
        render("holiday", language="fa", channel="sms", until="۱۵ فروردین")  # not without the directory


def test_a_message_with_no_text_in_reach(tmp_path: Path) -> None:
    (tmp_path / "promo.en.j2").write_text("Hi", encoding="utf-8")
    assert render("promo", language="en", channel="sms", extra_dir=tmp_path) == "Hi"
    with pytest.raises(TemplateMissing, match=r"'promo' has no template for language 'fa'.*promo\.fa\.j2"):
        render("promo", language="fa", channel="sms", extra_dir=tmp_path)


def test_an_override_may_include_a_built_in(tmp_path: Path) -> None:
    (tmp_path / "resolved.en.email.j2").write_text(
        '{% include "resolved.en.j2" %}\n\nP.S. We are closed on Friday.', encoding="utf-8")
    text = render("resolved", language="en", channel="email", extra_dir=tmp_path, ref=REF, name="Ali")
    assert text.startswith("Hello Ali,\nrequest T-1042") and text.endswith("closed on Friday.")


def test_an_edited_override_shows_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "reopened.en.j2"
    path.write_text("one {{ ref }}", encoding="utf-8")
    assert render("reopened", language="en", channel="telegram", extra_dir=tmp_path, ref=REF) == f"one {REF}"
    path.write_text("two {{ ref }}", encoding="utf-8")
    later = time.time() + 10
    os.utime(path, (later, later))  # a later modification time, however coarse the file system's clock
    assert render("reopened", language="en", channel="telegram", extra_dir=tmp_path, ref=REF) == f"two {REF}"


def test_the_default_language_is_persian() -> None:
    assert DEFAULT_LANGUAGE == "fa"


@pytest.mark.parametrize("name", sorted(EXTRA))
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_extra_messages_fit_one_sms_and_name_the_ticket(name: str, language: str) -> None:
    text = render(name, language=language, channel="sms", **values(name, ref="T-123456"))
    assert parts(text) == 1 and "T-123456" in text
