"""Customer addresses (email, phone, Telegram id) and their one canonical spelling each."""

from __future__ import annotations

import dataclasses

import phonenumbers

from gateway.domain import AddressKind

#: Persian (U+06F0..) and Arabic-Indic (U+0660..) digits to ASCII.
_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
DEFAULT_REGION = "IR"
_CONTROLS = frozenset(map(chr, [*range(0x20), *range(0x7f, 0xa0)]))


class AddressError(ValueError):
    """The text cannot be read as an address of the given kind."""


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """A normalized address; build it with `Address.parse` so equal addresses compare equal."""

    kind: AddressKind
    value: str

    @classmethod
    def parse(cls, kind: AddressKind | str, raw: str) -> Address:
        kind = AddressKind(kind)
        return cls(kind, _NORMALIZERS[kind](raw))

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def normalize_email(raw: str) -> str:
    value = raw.strip().strip("<>").strip().lower()
    local, _, domain = value.rpartition("@")
    # No white space or control character inside: a NUL is more than PostgreSQL can store.
    if not local or not domain or "." not in domain or any(c.isspace() or c in _CONTROLS for c in value):
        raise AddressError(f"not an email address: {raw!r}")
    return value


def normalize_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 for any common spelling: 0912..., 912..., +98..., 0098..., Persian digits, spaces, dashes."""
    text = raw.translate(_DIGITS).strip()
    text = "".join(ch for ch in text if ch.isdigit() or ch == "+")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise AddressError(f"not a phone number: {raw!r}") from None
    if not phonenumbers.is_possible_number(number):
        raise AddressError(f"not a phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_telegram(raw: str) -> str:
    text = str(raw).strip()
    try:
        number = int(text) if text.isdigit() else 0
    except ValueError:  # a digit int() cannot read ("²"), or more digits than it will read
        number = 0
    if number <= 0:
        raise AddressError(f"not a Telegram user id: {raw!r}")
    return str(number)


_NORMALIZERS = {
    AddressKind.EMAIL: normalize_email,
    AddressKind.PHONE: normalize_phone,
    AddressKind.TELEGRAM: normalize_telegram,
}
