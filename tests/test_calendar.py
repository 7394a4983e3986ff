"""Business time: Jalali dates, the desk's calendar, SLA targets and the escalation ladder."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.domain import Priority
from gateway.jalali import jalali_date, show_date, spoken_moment
from workflows.calendar import (
    BUSINESS_DAY,
    DEFAULT_HOURS,
    BusinessCalendar,
    EscalationStep,
    Ladder,
    SlaKind,
    SlaPolicies,
    SlaPolicy,
    Span,
    format_duration,
    gregorian_to_jalali,
    is_jalali_leap,
    jalali_to_gregorian,
    ladder_steps,
    parse_duration,
)

TEHRAN = ZoneInfo("Asia/Tehran")
HOUR = 3600
NOWRUZ_1405 = {"holidays": ["1405-01-01", "1405-01-02", "1405-01-03", "1405-01-04"]}


def tehran(*args: int) -> datetime:
    return datetime(*args, tzinfo=TEHRAN)  # type: ignore[misc]


# --- Jalali dates


@pytest.mark.parametrize(("jalali", "gregorian"), [
    ((1403, 1, 1), date(2024, 3, 20)),
    ((1404, 1, 1), date(2025, 3, 21)),
    ((1405, 1, 1), date(2026, 3, 21)),
    ((1399, 12, 30), date(2021, 3, 20)),  # leap year
    ((1403, 12, 30), date(2025, 3, 20)),  # leap year
    ((1408, 12, 30), date(2030, 3, 20)),  # leap after a five-year gap, not 1407
    ((1348, 10, 11), date(1970, 1, 1)),
    ((1357, 11, 22), date(1979, 2, 11)),
    ((1360, 5, 26), date(1981, 8, 17)),
    ((1391, 10, 21), date(2013, 1, 10)),
    ((1393, 5, 13), date(2014, 8, 4)),
    ((1404, 6, 31), date(2025, 9, 22)),
    ((1404, 7, 1), date(2025, 9, 23)),
])
def test_known_jalali_dates_convert_both_ways(jalali: tuple[int, int, int], gregorian: date) -> None:
    assert jalali_to_gregorian(*jalali) == gregorian
    assert gregorian_to_jalali(gregorian) == jalali


def test_leap_years_follow_the_official_calendar() -> None:
    assert [y for y in range(1390, 1420) if is_jalali_leap(y)] == [1391, 1395, 1399, 1403, 1408, 1412, 1416]


def test_every_day_for_two_centuries_round_trips_and_follows_the_one_before() -> None:
    day, previous = date(1900, 1, 1), gregorian_to_jalali(date(1899, 12, 31))
    while day < date(2100, 1, 1):
        jalali = gregorian_to_jalali(day)
        assert jalali_to_gregorian(*jalali) == day
        y, m, d = previous
        assert jalali in ((y, m, d + 1), (y, m + 1, 1), (y + 1, 1, 1))
        day, previous = day + timedelta(days=1), jalali


@pytest.mark.parametrize("jalali", [(1404, 12, 30), (1405, 13, 1), (1405, 0, 1), (1405, 7, 31), (1405, 1, 32)])
def test_days_the_jalali_calendar_does_not_have_are_refused(jalali: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        jalali_to_gregorian(*jalali)


# --- Holidays and parsing


@pytest.mark.parametrize(("raw", "closed"), [
    ("1405-01-01", date(2026, 3, 21)),
    ("۱۴۰۵/۰۱/۰۱", date(2026, 3, 21)),
    ("١٤٠٥/١/١", date(2026, 3, 21)),
    ("1403/12/30", date(2025, 3, 20)),
    ("2026-04-01", date(2026, 4, 1)),
    (date(2026, 4, 1), date(2026, 4, 1)),  # what TOML gives for a bare date
])
def test_a_holiday_is_a_gregorian_or_jalali_date_in_any_digits(raw: object, closed: date) -> None:
    calendar = BusinessCalendar.from_mapping({"holidays": [raw]})
    assert calendar.holidays == {closed}
    assert calendar.is_holiday(closed)
    assert not calendar.is_holiday(closed + timedelta(days=1))


def test_a_yearly_jalali_holiday_closes_that_day_every_year() -> None:
    calendar = BusinessCalendar.from_mapping({"holidays": ["*-01-01", "*/۰۱/۱۳", "*-12-30"]})
    assert calendar.yearly_holidays == {(1, 1), (1, 13), (12, 30)}
    for year in (1399, 1403, 1404, 1405, 1450):
        assert calendar.is_holiday(jalali_to_gregorian(year, 1, 1))
        assert calendar.is_holiday(jalali_to_gregorian(year, 1, 13))
        assert not calendar.is_holiday(jalali_to_gregorian(year, 1, 2))
    assert calendar.is_holiday(date(2025, 3, 20))  # 1403-12-30: Esfand 30 closes only in leap years
    assert not calendar.is_holiday(date(2026, 3, 20))  # 1404-12-29


def test_the_defaults_are_tehran_office_hours() -> None:
    calendar = BusinessCalendar.from_mapping({})
    assert calendar == BusinessCalendar()
    assert calendar.timezone == "Asia/Tehran"
    assert calendar.hours == DEFAULT_HOURS
    assert [str(s) for s in calendar.hours[3]] == ["09:00-13:00"]  # Thursday
    assert calendar.hours[4] == ()  # Friday


def test_a_day_may_have_several_spans_and_a_day_not_named_is_closed() -> None:
    calendar = BusinessCalendar.from_mapping({"timezone": "Europe/Berlin", "hours": {
        "monday": ["13:00-17:00", "۰۹:۰۰-۱۲:۰۰"], "tuesday": "00:00-24:00"}})
    assert calendar.hours[0] == (Span(540, 720), Span(780, 1020))
    assert calendar.hours[1] == (Span(0, 1440),)
    assert calendar.hours[2:] == ((),) * 5
    berlin = ZoneInfo("Europe/Berlin")
    assert calendar.is_open(datetime(2026, 5, 4, 11, 59, tzinfo=berlin))
    assert not calendar.is_open(datetime(2026, 5, 4, 12, 30, tzinfo=berlin))  # lunch
    assert calendar.is_open(datetime(2026, 5, 5, 23, 59, tzinfo=berlin))
    assert not calendar.is_open(datetime(2026, 5, 6, 0, 0, tzinfo=berlin))


@pytest.mark.parametrize(("data", "message"), [
    ({"hours": {"monday": ["9-17"]}}, 'calendar.hours.monday: "9-17" is not HH:MM-HH:MM'),
    ({"hours": {"monday": ["09:00-17:60"]}}, 'calendar.hours.monday: "09:00-17:60" is not HH:MM-HH:MM'),
    ({"hours": {"monday": ["09:00-24:30"]}}, 'calendar.hours.monday: "09:00-24:30" is not HH:MM-HH:MM'),
    ({"hours": {"monday": [9]}}, "calendar.hours.monday: 9 is not HH:MM-HH:MM"),
    ({"hours": {"monday": ["17:00-09:00"]}},
     'calendar.hours.monday: "17:00-09:00" ends before it starts (split a night shift at 24:00)'),
    ({"hours": {"monday": ["09:00-13:00", "12:00-17:00"]}},
     'calendar.hours.monday: "12:00-17:00" overlaps "09:00-13:00"'),
    ({"hours": {"mondy": []}},
     'calendar.hours: unknown day "mondy" (monday, tuesday, wednesday, thursday, friday, saturday, sunday)'),
    ({"hours": {"monday": 9}}, 'calendar.hours.monday: 9 is not a list of "HH:MM-HH:MM"'),
    ({"hours": ["09:00-17:00"]}, 'calendar.hours: ["09:00-17:00"] is not a table of weekdays'),
    ({"hours": {"friday": []}}, "calendar.hours: no day has business hours"),
    ({"timezone": "Asia/Tehrn"}, 'calendar.timezone: "Asia/Tehrn" is not a known time zone'),
    ({"timezone": 3.5}, "calendar.timezone: 3.5 is not a known time zone"),
    ({"holiday": []}, 'calendar: unknown key "holiday" (timezone, hours, holidays)'),
    ({"holidays": "1405-01-01"}, 'calendar.holidays: "1405-01-01" is not a list of dates'),
    ({"holidays": ["next friday"]},
     'calendar.holidays: "next friday" is not a date like "2026-03-21", "1405-01-01" or "*-01-01"'),
    ({"holidays": ["1404-12-30"]},
     'calendar.holidays: "1404-12-30" is not a date: Jalali month 1404/12 has no day 30'),
    ({"holidays": ["۱۴۰۵/۱۳/۰۱"]}, 'calendar.holidays: "۱۴۰۵/۱۳/۰۱" is not a date: Jalali month 13 is not 1..12'),
    ({"holidays": ["2026-02-30"]}, 'calendar.holidays: "2026-02-30" is not a date: day is out of range for month'),
    ({"holidays": ["*-07-31"]}, 'calendar.holidays: "*-07-31" is not a date: no Jalali year has month 7 day 31'),
    ({"holidays": ["*-13-01"]}, 'calendar.holidays: "*-13-01" is not a date: no Jalali year has month 13 day 1'),
])
def test_a_bad_calendar_setting_names_its_key_and_value(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        BusinessCalendar.from_mapping(data)
    assert str(caught.value) == message


def test_a_calendar_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="no day has business hours"):
        BusinessCalendar(hours=((),) * 7)
    with pytest.raises(ValueError, match="seven days"):
        BusinessCalendar(hours=DEFAULT_HOURS[:5])


# --- Opening hours


@pytest.mark.parametrize(("at", "is_open"), [
    (tehran(2026, 5, 4, 9, 0), True),  # Monday: opening time is inside
    (tehran(2026, 5, 4, 8, 59, 59), False),
    (tehran(2026, 5, 4, 16, 59, 59), True),
    (tehran(2026, 5, 4, 17, 0), False),  # closing time is outside
    (tehran(2026, 5, 7, 12, 59), True),  # Thursday, short day
    (tehran(2026, 5, 7, 13, 0), False),
    (tehran(2026, 5, 8, 11, 0), False),  # Friday
    (tehran(2026, 5, 9, 9, 0), True),  # Saturday
    (datetime(2026, 5, 4, 5, 30, tzinfo=UTC), True),  # 09:00 in Tehran
    (datetime(2026, 5, 4, 5, 29, tzinfo=UTC), False),
])
def test_is_open_at_the_edges(at: datetime, is_open: bool) -> None:
    assert BusinessCalendar().is_open(at) is is_open


def test_a_holiday_is_closed_all_day() -> None:
    calendar = BusinessCalendar.from_mapping(NOWRUZ_1405)
    assert not calendar.is_open(tehran(2026, 3, 21, 10, 0))  # a Saturday, but Nowruz


@pytest.mark.parametrize(("at", "opens"), [
    (tehran(2026, 5, 4, 10, 0), tehran(2026, 5, 4, 10, 0)),  # open: itself
    (tehran(2026, 5, 4, 7, 0), tehran(2026, 5, 4, 9, 0)),
    (tehran(2026, 5, 4, 17, 0), tehran(2026, 5, 5, 9, 0)),
    (tehran(2026, 5, 7, 13, 0), tehran(2026, 5, 9, 9, 0)),  # Thursday afternoon -> Saturday
])
def test_next_open(at: datetime, opens: datetime) -> None:
    found = BusinessCalendar().next_open(at)
    assert found == opens
    assert found.tzinfo is UTC


# --- Adding business time


@pytest.mark.parametrize(("start", "hours", "end"), [
    (tehran(2026, 5, 4, 10, 0), 1, tehran(2026, 5, 4, 11, 0)),
    (tehran(2026, 5, 4, 16, 0), 1, tehran(2026, 5, 4, 17, 0)),  # ends exactly at closing
    (tehran(2026, 5, 6, 16, 30), 1, tehran(2026, 5, 7, 9, 30)),  # Wednesday night -> Thursday
    (tehran(2026, 5, 7, 12, 30), 1, tehran(2026, 5, 9, 9, 30)),  # Thursday's short day, Friday off
    (tehran(2026, 5, 7, 20, 0), 2, tehran(2026, 5, 9, 11, 0)),  # starts outside hours
    (tehran(2026, 5, 8, 10, 0), 0.5, tehran(2026, 5, 9, 9, 30)),  # starts on Friday
    (tehran(2026, 5, 4, 3, 0), 8, tehran(2026, 5, 4, 17, 0)),  # a whole day, from before opening
    (tehran(2026, 5, 4, 9, 0), 44, tehran(2026, 5, 10, 17, 0)),  # a plain week (5 x 8h + 4h) ends Sunday
])
def test_add_business_hours(start: datetime, hours: float, end: datetime) -> None:
    assert BusinessCalendar().add(start, hours * HOUR) == end


@pytest.mark.parametrize(("start", "end"), [
    (tehran(2026, 5, 4, 10, 0), tehran(2026, 5, 4, 10, 0)),
    (tehran(2026, 5, 4, 17, 0), tehran(2026, 5, 5, 9, 0)),  # zero from outside hours: the next opening
    (tehran(2026, 5, 8, 12, 0), tehran(2026, 5, 9, 9, 0)),
])
def test_adding_nothing_is_the_next_business_moment(start: datetime, end: datetime) -> None:
    assert BusinessCalendar().add(start, 0) == end


def test_add_returns_utc_from_any_zone() -> None:
    start = datetime(2026, 5, 4, 6, 30, tzinfo=UTC)  # 10:00 Tehran
    end = BusinessCalendar().add(start.astimezone(ZoneInfo("America/New_York")), HOUR)
    assert end == datetime(2026, 5, 4, 7, 30, tzinfo=UTC)
    assert end.tzinfo is UTC


def test_the_clock_stops_over_nowruz() -> None:
    # Esfand 1404 ends on Friday 2026-03-20; Nowruz 1405 closes Saturday 21 to Tuesday 24 March.
    calendar = BusinessCalendar.from_mapping(NOWRUZ_1405)
    assert calendar.add(tehran(2026, 3, 19, 12, 0), 2 * HOUR) == tehran(2026, 3, 25, 10, 0)
    assert calendar.between(tehran(2026, 3, 19, 12, 0), tehran(2026, 3, 25, 10, 0)) == 2 * HOUR
    # 40 business hours from Thursday noon: Thursday 1h, Nowruz, Wednesday 8h, Thursday 4h, Saturday to
    # Monday 24h: 37h, so 3h into Tuesday 31 March.
    assert calendar.add(tehran(2026, 3, 19, 12, 0), 40 * HOUR) == tehran(2026, 3, 31, 12, 0)
    # Without the holidays: Thursday 1h, Saturday to Tuesday 32h, then 7h into Wednesday 25 March.
    assert BusinessCalendar().add(tehran(2026, 3, 19, 12, 0), 40 * HOUR) == tehran(2026, 3, 25, 16, 0)


def test_a_yearly_nowruz_holiday_run_is_skipped_every_year() -> None:
    calendar = BusinessCalendar.from_mapping({"holidays": ["*-01-01", "*-01-02", "*-01-03", "*-01-04",
                                                           "*-01-12", "*-01-13"]})
    start = tehran(2026, 3, 19, 12, 0)
    assert calendar.add(start, 40 * HOUR) == tehran(2026, 3, 31, 12, 0)
    # A year of business time later, every Nowruz in between is skipped.
    year_later = calendar.add(start, 2000 * HOUR)
    assert calendar.between(start, year_later) == 2000 * HOUR
    assert BusinessCalendar().add(start, 2000 * HOUR) < year_later


def test_long_durations_jump_weeks() -> None:
    calendar = BusinessCalendar.from_mapping({"holidays": ["*-01-01", "*-01-02", "*-01-03", "*-01-04",
                                                           "2026-06-01", "1405-03-14"]})
    start = tehran(2026, 3, 1, 10, 0)
    # 1000 business hours: about 22 weeks; a week holds 44 hours.
    end = calendar.add(start, 1000 * HOUR)
    assert calendar.between(start, end) == 1000 * HOUR
    assert not calendar.is_holiday(end.astimezone(TEHRAN).date())
    # Ten years of business time (the weeks are skipped, not walked hour by hour).
    far = calendar.add(start, 10 * 52 * 44 * HOUR)
    assert calendar.between(start, far) == 10 * 52 * 44 * HOUR
    assert datetime(2035, 1, 1, tzinfo=UTC) < far < datetime(2037, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("settings", [
    {"holidays": ["*-01-01", "2026-06-01"]},
    {"timezone": "Europe/Berlin", "holidays": ["2026-12-25"]},  # two clock changes on the way
])
def test_week_jumps_agree_with_walking_four_hours_at_a_time(settings: dict[str, object]) -> None:
    calendar = BusinessCalendar.from_mapping(settings)
    start = datetime(2026, 1, 3, 6, 0, tzinfo=UTC)  # a Saturday
    walked = start
    for _ in range(500):  # 2000 business hours: into November
        walked = calendar.add(walked, 4 * HOUR)
    assert calendar.add(start, 2000 * HOUR) == walked
    assert calendar.between(start, walked) == 2000 * HOUR


def test_negative_durations_and_naive_datetimes_are_refused() -> None:
    calendar = BusinessCalendar()
    with pytest.raises(ValueError, match="business_seconds"):
        calendar.add(tehran(2026, 5, 4, 10, 0), -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.add(datetime(2026, 5, 4, 10, 0), 60)
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.is_open(datetime(2026, 5, 4, 10, 0))


def test_a_calendar_of_holidays_only_refuses_instead_of_looping() -> None:
    every_day = [f"*-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 32 if m <= 6 else 31)]
    calendar = BusinessCalendar.from_mapping({"holidays": every_day})
    with pytest.raises(ValueError, match="no business hours"):
        calendar.add(tehran(2026, 5, 4, 10, 0), HOUR)


# --- Counting business time


@pytest.mark.parametrize(("a", "b", "hours"), [
    (tehran(2026, 5, 4, 10, 0), tehran(2026, 5, 4, 12, 30), 2.5),
    (tehran(2026, 5, 4, 12, 0), tehran(2026, 5, 4, 10, 0), 0),  # b before a
    (tehran(2026, 5, 4, 10, 0), tehran(2026, 5, 4, 10, 0), 0),
    (tehran(2026, 5, 7, 12, 0), tehran(2026, 5, 9, 10, 0), 2),  # over the weekend
    (tehran(2026, 5, 8, 0, 0), tehran(2026, 5, 8, 23, 59), 0),  # Friday
    (tehran(2026, 5, 2, 0, 0), tehran(2026, 5, 30, 0, 0), 4 * 44),  # four weeks from a Saturday
])
def test_between(a: datetime, b: datetime, hours: float) -> None:
    assert BusinessCalendar().between(a, b) == hours * HOUR


def test_between_undoes_add_for_random_starts_and_durations() -> None:
    calendar = BusinessCalendar.from_mapping({"holidays": ["*-01-01", "*-01-02", "*-01-03", "*-01-04",
                                                           "1405-01-12", "2026-06-04"]})
    rng = random.Random(1405)
    origin = datetime(2025, 12, 1, tzinfo=UTC)
    for _ in range(500):
        start = origin + timedelta(seconds=rng.randrange(400 * 24 * HOUR))
        seconds = rng.choice([0, rng.uniform(0, HOUR), rng.uniform(0, 50 * HOUR), rng.uniform(0, 600 * HOUR)])
        end = calendar.add(start, seconds)
        assert end >= start
        assert calendar.between(start, end) == pytest.approx(seconds, abs=1)
        # Just before the end, the target has not yet been reached.
        if seconds >= 1:
            assert calendar.between(start, end - timedelta(seconds=1)) < seconds


# --- Clock changes


def test_hours_are_placed_per_date_across_a_clock_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    calendar = BusinessCalendar.from_mapping({"timezone": "Europe/Berlin", "hours": {
        day: ["09:00-17:00"] for day in ("monday", "tuesday", "wednesday", "thursday", "friday")}})
    # Summer time starts on Sunday 29 March 2026: Friday's 16:00 + 2h is Monday 10:00 local, 08:00 UTC.
    end = calendar.add(datetime(2026, 3, 27, 16, 0, tzinfo=berlin), 2 * HOUR)
    assert end == datetime(2026, 3, 30, 10, 0, tzinfo=berlin) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert calendar.between(datetime(2026, 3, 23, tzinfo=berlin), datetime(2026, 4, 6, tzinfo=berlin)) == 80 * HOUR
    # And back on Sunday 25 October.
    assert calendar.add(datetime(2026, 10, 23, 16, 0, tzinfo=berlin), 2 * HOUR) == \
        datetime(2026, 10, 26, 10, 0, tzinfo=berlin)


@pytest.mark.parametrize(("day", "hours"), [
    (date(2026, 3, 29), 23),  # Berlin springs forward
    (date(2026, 10, 25), 25),  # and falls back
    (date(2026, 5, 4), 24),
])
def test_an_all_day_desk_counts_the_real_length_of_a_day(day: date, hours: int) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    calendar = BusinessCalendar.from_mapping({"timezone": "Europe/Berlin",
                                              "hours": {name: ["00:00-24:00"] for name in ("monday", "sunday")}})
    midnight = datetime(day.year, day.month, day.day, tzinfo=berlin)
    following = midnight.date() + timedelta(days=1)
    assert calendar.between(midnight, datetime(following.year, following.month, following.day, tzinfo=berlin)) \
        == hours * HOUR


def test_tehran_daylight_saving_before_2022_is_honoured() -> None:
    # Iran kept summer time until 2022: on 1 Farvardin 1400 (2021-03-22) midnight became 01:00.
    calendar = BusinessCalendar.from_mapping({"hours": {"monday": ["00:00-24:00"], "sunday": ["00:00-24:00"]}})
    assert calendar.between(tehran(2021, 3, 21), tehran(2021, 3, 23)) == 47 * HOUR
    weekday = BusinessCalendar()
    # Wednesday 17 March 2021 16:00 (+03:30) + 2h = Saturday 20 March 10:00 (+03:30) ...
    assert weekday.add(tehran(2021, 3, 17, 16, 0), 2 * HOUR) == tehran(2021, 3, 18, 10, 0)
    # ... and Sunday 21 March 16:30 (+03:30) + 1h = Monday 22 March 09:30 (+04:30): 05:00 UTC.
    assert weekday.add(tehran(2021, 3, 21, 16, 30), HOUR) == datetime(2021, 3, 22, 5, 0, tzinfo=UTC)


# --- SLA targets


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("1h 30m", 5400), ("40h", 144000),
    ("2d", 2 * BUSINESS_DAY), ("1d4h", 12 * HOUR), ("۲d", 16 * HOUR), ("90m", 5400), ("1H", 3600),
])
def test_durations_count_business_days_of_eight_hours(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("seconds", "text"), [(1800, "30m"), (5400, "1h30m"), (57600, "16h"), (0, "0m")])
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("priority", "first_response", "resolution"), [
    (Priority.URGENT, tehran(2026, 5, 4, 11, 0), tehran(2026, 5, 5, 10, 0)),
    (Priority.HIGH, tehran(2026, 5, 4, 14, 0), tehran(2026, 5, 7, 10, 0)),
    (Priority.NORMAL, tehran(2026, 5, 5, 10, 0), tehran(2026, 5, 10, 14, 0)),
    ("low", tehran(2026, 5, 6, 10, 0), tehran(2026, 5, 17, 10, 0)),
])
def test_default_sla_due_for_each_priority(priority: Priority | str, first_response: datetime,
                                           resolution: datetime) -> None:
    # Opened Monday 4 May 2026 at 10:00 Tehran; weeks hold 44 business hours (Thursday is short).
    policies, calendar, start = SlaPolicies(), BusinessCalendar(), tehran(2026, 5, 4, 10, 0)
    assert policies.due(priority, SlaKind.FIRST_RESPONSE, start, calendar) == first_response
    assert policies.due(priority, "resolution", start, calendar) == resolution


def test_sla_policies_from_settings_keep_defaults_for_what_is_left_out() -> None:
    policies = SlaPolicies.from_mapping({
        "urgent": {"first_response": "30m", "resolution": "4h"},
        "high": {"first_response": "2h"},
        "low": {"first_response": "2d", "resolution": "10d"},
    })
    assert policies.urgent == SlaPolicy(1800, 4 * HOUR)
    assert policies.high == SlaPolicy(2 * HOUR, 24 * HOUR)
    assert policies.normal == SlaPolicies().normal
    assert policies.target("low", "resolution") == 80 * HOUR
    assert SlaPolicies.from_mapping({}) == SlaPolicies()


def test_the_example_settings_are_the_defaults() -> None:
    assert SlaPolicies.from_mapping({
        "urgent": {"first_response": "1h", "resolution": "8h"},
        "high": {"first_response": "4h", "resolution": "24h"},
        "normal": {"first_response": "8h", "resolution": "40h"},
        "low": {"first_response": "16h", "resolution": "80h"},
    }) == SlaPolicies()


@pytest.mark.parametrize(("data", "message"), [
    ({"urgent": {"first_response": "1x"}},
     'sla.urgent.first_response: "1x" is not a duration like "30m", "1h30m" or "2d"'),
    ({"urgent": {"first_response": 4}}, 'sla.urgent.first_response: 4 is not a duration like "30m", "1h30m" or "2d"'),
    ({"urgent": {"resolution": ""}}, 'sla.urgent.resolution: "" is not a duration like "30m", "1h30m" or "2d"'),
    ({"urgent": {"resolution": "30m1h"}},
     'sla.urgent.resolution: "30m1h" is not a duration like "30m", "1h30m" or "2d"'),
    ({"urgent": {"resolution": "0h"}}, 'sla.urgent.resolution: "0h" must be longer than zero'),
    ({"critical": {}}, 'sla: unknown priority "critical" (low, normal, high, urgent)'),
    ({"urgent": "1h"}, 'sla.urgent: "1h" is not a table of first_response and resolution'),
    ({"urgent": {"first_reply": "1h"}}, 'sla.urgent: unknown key "first_reply" (first_response, resolution)'),
    ({"urgent": {"first_response": "10h"}}, "sla.urgent: first_response 10h is longer than resolution 8h"),
])
def test_a_bad_sla_setting_names_its_key_and_value(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SlaPolicies.from_mapping(data)
    assert str(caught.value) == message


def test_unknown_priorities_and_kinds_are_refused() -> None:
    with pytest.raises(ValueError):
        SlaPolicies().target("critical", "resolution")
    with pytest.raises(ValueError):
        SlaPolicies().target("urgent", "first_reply")


# --- Escalation ladder


def test_ladder_steps_fall_at_their_share_of_the_business_time() -> None:
    calendar = BusinessCalendar()
    start = tehran(2026, 5, 6, 13, 0)  # Wednesday
    due = SlaPolicies().due("urgent", "resolution", start, calendar)  # 8h: Wednesday 4h, Thursday 4h
    assert due == tehran(2026, 5, 7, 13, 0)
    assert ladder_steps(start, due, calendar) == [
        (EscalationStep.WARN, tehran(2026, 5, 7, 11, 0)),  # 6h in
        (EscalationStep.BREACH, due),
        (EscalationStep.REASSIGN, tehran(2026, 5, 9, 13, 0)),  # 12h in, past the Friday weekend
    ]
    assert all(at.tzinfo is UTC for _, at in ladder_steps(start, due, calendar))


def test_a_custom_ladder() -> None:
    calendar, start = BusinessCalendar(), tehran(2026, 5, 4, 9, 0)
    steps = ladder_steps(start, tehran(2026, 5, 4, 13, 0), calendar, Ladder(warn_at=0.5, breach_at=1, reassign_at=1))
    assert [(name.value, at) for name, at in steps] == [
        ("warn", tehran(2026, 5, 4, 11, 0)), ("breach", tehran(2026, 5, 4, 13, 0)),
        ("reassign", tehran(2026, 5, 4, 13, 0)),
    ]


def test_breach_never_comes_before_a_due_date_set_outside_hours() -> None:
    calendar, start = BusinessCalendar(), tehran(2026, 5, 7, 9, 0)  # Thursday
    due = tehran(2026, 5, 8, 12, 0)  # Friday noon: the business time runs out Thursday 13:00
    steps = dict(ladder_steps(start, due, calendar))
    assert steps[EscalationStep.WARN] == tehran(2026, 5, 7, 12, 0)
    assert steps[EscalationStep.BREACH] == due
    assert steps[EscalationStep.REASSIGN] == tehran(2026, 5, 9, 11, 0)


@pytest.mark.parametrize(("data", "message"), [
    ({"warn_at": 0}, "sla.ladder: needs 0 < warn_at < breach_at <= reassign_at, got 0, 1.0, 1.5"),
    ({"warn_at": 1.0}, "sla.ladder: needs 0 < warn_at < breach_at <= reassign_at, got 1.0, 1.0, 1.5"),
    ({"reassign_at": 0.9}, "sla.ladder: needs 0 < warn_at < breach_at <= reassign_at, got 0.75, 1.0, 0.9"),
    ({"warn_at": "3/4"}, 'sla.ladder.warn_at: "3/4" is not a number'),
    ({"warn_at": True}, "sla.ladder.warn_at: true is not a number"),
    ({"warn": 0.5}, 'sla.ladder: unknown key "warn" (warn_at, breach_at, reassign_at)'),
])
def test_a_bad_ladder_setting_names_its_key_and_value(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Ladder.from_mapping(data)
    assert str(caught.value) == message


def test_ladder_defaults_and_validation() -> None:
    assert Ladder.from_mapping({}) == Ladder(0.75, 1.0, 1.5)
    assert Ladder.from_mapping({"warn_at": 0.5, "reassign_at": 2}) == Ladder(0.5, 1.0, 2)
    with pytest.raises(ValueError, match="ladder: needs 0 < warn_at"):
        Ladder(warn_at=0.8, breach_at=0.8)


@pytest.mark.parametrize(("moment", "language", "said"), [
    (datetime(2026, 11, 28, 5, 30, tzinfo=UTC), "fa", "شنبه ۷ آذر ۱۴۰۵، ساعت ۹:۰۰"),
    (datetime(2026, 11, 28, 5, 30, tzinfo=UTC), "en", "Saturday 28 November 2026, 09:00 Tehran time"),
    (datetime(2027, 3, 20, 20, 45, tzinfo=UTC), "fa", "یکشنبه ۱ فروردین ۱۴۰۶، ساعت ۰:۱۵"),  # past midnight in Tehran
    (datetime(2026, 11, 28, 5, 30, tzinfo=UTC), None, "شنبه ۷ آذر ۱۴۰۵، ساعت ۹:۰۰"),
])
def test_a_moment_is_said_to_a_customer_in_tehran_time_jalali_in_persian(
        moment: datetime, language: str | None, said: str) -> None:
    assert spoken_moment(moment, language) == said


def test_report_dates_in_jalali_sort_as_text() -> None:
    days = [date(2026, 3, 20), date(2026, 3, 21), date(2026, 12, 31)]
    shown = [show_date(d, jalali=True) for d in days]
    assert shown == ["1404/12/29", "1405/01/01", "1405/10/10"] and shown == sorted(shown)
    assert jalali_date(days[1]) == "۱۴۰۵/۰۱/۰۱" and show_date(days[1], jalali=False) == "2026-03-21"
