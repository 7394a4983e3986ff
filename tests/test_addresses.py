"""Addresses: one canonical spelling per email, phone (E.164) and Telegram id."""

from __future__ import annotations

import pytest

from gateway.addresses import Address, AddressError
from gateway.domain import AddressKind, parse_ticket_ref, ticket_ref


@pytest.mark.parametrize("raw", [
    "09121234567", "9121234567", "+989121234567", "00989121234567", "0912 123 4567", "0912-123-4567",
    "۰۹۱۲۱۲۳۴۵۶۷", "٠٩١٢١٢٣٤٥٦٧", "+۹۸ ۹۱۲ ۱۲۳ ۴۵ ۶۷", "(0912) 123-4567",
])
def test_every_common_spelling_of_an_iranian_mobile_is_one_e164_number(raw: str) -> None:
    assert Address.parse("phone", raw) == Address(AddressKind.PHONE, "+989121234567")


def test_a_foreign_number_keeps_its_country() -> None:
    assert Address.parse("phone", "+44 20 7946 0958").value == "+442079460958"


@pytest.mark.parametrize("raw", ["", "hello", "123", "+98"])
def test_text_that_is_no_phone_number_is_refused(raw: str) -> None:
    with pytest.raises(AddressError):
        Address.parse("phone", raw)


def test_emails_compare_without_case_or_brackets() -> None:
    assert Address.parse("email", " <Sara.Ahmadi@Example.COM> ").value == "sara.ahmadi@example.com"
    for bad in ("sara", "@example.com", "sara@", "sara @example.com", "sara@localhost"):
        with pytest.raises(AddressError):
            Address.parse("email", bad)


def test_telegram_ids_are_positive_integers() -> None:
    assert Address.parse("telegram", " 000731001 ").value == "731001"
    assert Address.parse("telegram", "۷۳۱۰۰۱").value == "731001"
    for bad in ("-100123", "0", "@sara", ""):
        with pytest.raises(AddressError):
            Address.parse("telegram", bad)


def test_ticket_references_round_trip_and_are_found_in_a_subject() -> None:
    assert ticket_ref(42) == "T-1042"
    assert parse_ticket_ref("Re: [T-1042] سفارش من") == 42
    assert parse_ticket_ref("re: t-1042") == 42
    assert parse_ticket_ref("T-0999 or T-12") is None
    assert parse_ticket_ref("no reference") is None
