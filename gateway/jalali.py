"""Jalali (Solar Hijri) dates: conversion both ways, and dates and times shown as a Persian or English reader expects."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

#: Jalali years the conversion covers. Borkowski's algorithm holds for -61..3177; 3000 is a round cap.
JALALI_YEARS = range(1, 3001)

# Years where the 33-year leap cycle shifts (Borkowski 1996, as used by jalaali-js and the Iranian
# calendar office's tables); it matches the astronomical calendar across the whole modern era.
_BREAKS = (-61, 9, 38, 199, 426, 686, 756, 818, 1111, 1181, 1210, 1635, 2060, 2097, 2192, 2262, 2324,
           2394, 2456, 3178)
_MONTH_OFFSETS = tuple(31 * m if m <= 6 else 186 + 30 * (m - 6) for m in range(12))  # day of year - 1


def _nowruz(jy: int) -> date:
    """The Gregorian date of 1 Farvardin `jy`."""
    if not 1 <= jy < _BREAKS[-1]:  # a little past JALALI_YEARS: leap years and year ends look one ahead
        _check_jalali_year(jy)
    leap_j, previous, jump = -14, _BREAKS[0], 0
    for limit in _BREAKS[1:]:
        jump = limit - previous
        if jy < limit:
            break
        leap_j += jump // 33 * 8 + jump % 33 // 4
        previous = limit
    n = jy - previous  # all terms are non-negative here, so floor division is the algorithm's truncation
    leap_j += n // 33 * 8 + (n % 33 + 3) // 4
    if jump % 33 == 4 and jump - n == 4:
        leap_j += 1
    gy = jy + 621
    leap_g = gy // 4 - (gy // 100 + 1) * 3 // 4 - 150
    return date(gy, 3, 20 + leap_j - leap_g)


def is_jalali_leap(jy: int) -> bool:
    """Whether Jalali year `jy` has 366 days (an Esfand 30)."""
    _check_jalali_year(jy)
    return (_nowruz(jy + 1) - _nowruz(jy)).days == 366


def jalali_to_gregorian(jy: int, jm: int, jd: int) -> date:
    """The Gregorian date of Jalali `jy/jm/jd`; ValueError for a day the Jalali calendar does not have."""
    _check_jalali_year(jy)
    if not 1 <= jm <= 12:
        raise ValueError(f"Jalali month {jm} is not 1..12")
    length = 31 if jm <= 6 else 30 if jm <= 11 or is_jalali_leap(jy) else 29
    if not 1 <= jd <= length:
        raise ValueError(f"Jalali month {jy}/{jm} has no day {jd}")
    return _nowruz(jy) + timedelta(days=_MONTH_OFFSETS[jm - 1] + jd - 1)


def gregorian_to_jalali(day: date) -> tuple[int, int, int]:
    """The Jalali (year, month, day) of a Gregorian date."""
    jy = day.year - 621
    if day < _nowruz(jy):
        jy -= 1
    _check_jalali_year(jy)
    offset = (day - _nowruz(jy)).days
    if offset < 186:
        return jy, offset // 31 + 1, offset % 31 + 1
    return jy, (offset - 186) // 30 + 7, (offset - 186) % 30 + 1


def _check_jalali_year(jy: int) -> None:
    if jy not in JALALI_YEARS:
        raise ValueError(f"Jalali year {jy} is outside {JALALI_YEARS.start}..{JALALI_YEARS.stop - 1}")


# --- Showing dates ---------------------------------------------------------------------------------

JALALI_MONTHS = ("فروردین", "اردیبهشت", "خرداد", "تیر", "مرداد", "شهریور", "مهر", "آبان", "آذر", "دی", "بهمن", "اسفند")
#: Monday first, as `date.weekday()` counts.
PERSIAN_WEEKDAYS = ("دوشنبه", "سه‌شنبه", "چهارشنبه", "پنجشنبه", "جمعه", "شنبه", "یکشنبه")
TEHRAN = ZoneInfo("Asia/Tehran")

_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


def persian_digits(text: str) -> str:
    """`text` with its ASCII digits written as Persian ones."""
    return text.translate(_PERSIAN_DIGITS)


def jalali_date(day: date, *, persian: bool = True) -> str:
    """`1405/09/02` (in Persian digits unless `persian` is False)."""
    jy, jm, jd = gregorian_to_jalali(day)
    text = f"{jy:04d}/{jm:02d}/{jd:02d}"
    return persian_digits(text) if persian else text


def show_date(day: date, *, jalali: bool) -> str:
    """A day as a report cell: `1405/09/02` (Jalali, ASCII digits, sorts as text) or `2026-11-23`."""
    return jalali_date(day, persian=False) if jalali else day.isoformat()


def spoken_moment(moment: datetime, language: str | None, zone: ZoneInfo = TEHRAN) -> str:
    """A moment as a sentence to a customer says it, in the desk's time zone: Persian (Jalali, with
    Persian digits) `شنبه ۸ آذر ۱۴۰۵، ساعت ۹:۰۰`; English `Saturday 29 November 2026, 09:00 Tehran time`."""
    local = moment.astimezone(zone)
    if (language or "fa") == "fa":
        jy, jm, jd = gregorian_to_jalali(local.date())
        text = f"{PERSIAN_WEEKDAYS[local.weekday()]} {jd} {JALALI_MONTHS[jm - 1]} {jy}، ساعت {local.hour}:{local.minute:02d}"
        return persian_digits(text)
    place = zone.key.rsplit("/", 1)[-1].replace("_", " ")
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {place} time"
