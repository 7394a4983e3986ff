"""Kavenegar callbacks: inbound SMS and delivery reports in every shape we accept, and every way one fails."""

from __future__ import annotations

import datetime as dt
import json
import random
from urllib.parse import quote

import pytest

from channels.sms.callbacks import (
    CallbackError,
    DeliveryReport,
    InboundSms,
    delivery_state,
    parse_delivery,
    parse_inbound,
)

ZWNJ = "\u200c"
FORM = "application/x-www-form-urlencoded"
SALAM = "سلام، سفارش من کو؟"
#: A GET as a PHP-style callback sends it: every field in the query string, percent-encoded UTF-8.
GET_QUERY = (
    "messageid=3127451987&from=%2B989121234567&to=10008445"
    "&message=%D8%B3%D9%84%D8%A7%D9%85%D8%8C+%D8%B3%D9%81%D8%A7%D8%B1%D8%B4+%D9%85%D9%86+%DA%A9%D9%88%D8%9F"
)


def _sms(messageid: str, sender: str, text: str, **more: object) -> InboundSms:
    fields: dict = {"receptor": "10008445", "received_at": None, "extra": {}, **more}
    return InboundSms(messageid=messageid, sender=sender, text=text, **fields)


def test_get_with_percent_encoded_persian_in_the_query() -> None:
    assert parse_inbound("GET", GET_QUERY, None, b"") == [_sms("3127451987", "+989121234567", SALAM)]


def test_post_form_in_utf8_keeps_the_zwnj_and_the_raw_sender() -> None:
    body = (
        b"messageid=3127451990&from=09121234567&to=10008445&message=%D9%85%DB%8C%E2%80%8C%D8%AE%D9%88"
        b"%D8%A7%D9%87%D9%85+%D8%B3%D9%81%D8%A7%D8%B1%D8%B4%D9%85+%D8%B1%D8%A7+%D9%84%D8%BA%D9%88+%DA%A9"
        b"%D9%86%D9%85"
    )
    [sms] = parse_inbound("POST", "", FORM, body)
    assert sms == _sms("3127451990", "09121234567", f"می{ZWNJ}خواهم سفارشم را لغو کنم")


def test_post_form_with_raw_utf8_and_a_lower_case_method() -> None:
    body = f"messageid=7&from=0912 123 4567&to=10008445&message={SALAM}".encode()
    assert parse_inbound("post", "", f"{FORM}; charset=UTF-8", body) == [_sms("7", "0912 123 4567", SALAM)]


def test_post_json_object_with_a_numeric_id_and_a_date() -> None:
    body = json.dumps({
        "messageid": 3127451999, "from": "+989121234567", "to": "10008445", "message": SALAM,
        "date": 1732611600,
    }, ensure_ascii=False).encode()
    [sms] = parse_inbound("POST", "", "application/json", body)
    assert sms.messageid == "3127451999" and sms.text == SALAM
    assert sms.received_at == dt.datetime(2024, 11, 26, 9, 0, tzinfo=dt.UTC)
    assert sms.extra == {}


def test_json_list_is_several_messages_in_order() -> None:
    body = json.dumps([
        {"messageid": "1", "from": "09121111111", "to": "10008445", "message": "اولی"},
        {"messageid": "2", "from": "09122222222", "to": "10008445", "message": "😀 دومی"},
    ], ensure_ascii=True).encode()
    result = parse_inbound("POST", "", "application/json; charset=utf-8", body)
    assert result == [_sms("1", "09121111111", "اولی"), _sms("2", "09122222222", "😀 دومی")]
    assert parse_inbound("POST", "", "application/json", b"[]") == []


def test_json_is_recognised_without_a_content_type_and_despite_a_bom() -> None:
    body = "\ufeff" + json.dumps({"messageid": "5", "from": "0912", "to": "10008445", "message": "hi"})
    assert parse_inbound("POST", "", None, body.encode()) == [_sms("5", "0912", "hi")]
    assert parse_inbound("POST", "", "text/plain", body.encode()) == [_sms("5", "0912", "hi")]


@pytest.mark.parametrize("body", [
    # An old Windows gateway: percent-escapes of windows-1256 bytes (Arabic yeh and kaf, as 1256 has them).
    (b"messageid=3127452001&from=09121234567&to=10008445&message=%D3%E1%C7%E3%A1+%81%ED%C7%E3%DF+%E3%E4+%D1%D3"
     b"%ED%CF%BF"),
    # The same text as raw windows-1256 bytes.
    (b"messageid=3127452001&from=09121234567&to=10008445&message="
     b"\xd3\xe1\xc7\xe3\xa1 \x81\xed\xc7\xe3\xdf \xe3\xe4 \xd1\xd3\xed\xcf\xbf"),
])
def test_form_in_windows_1256_is_decoded_by_the_declared_charset(body: bytes) -> None:
    [sms] = parse_inbound("POST", "", f'{FORM}; charset="windows-1256"', body)
    assert sms.text == "سلام، پيامك من رسيد؟"  # kept as sent: normalising ي and ك is not the parser's job


def test_json_in_windows_1256() -> None:
    body = '{"messageid": "9", "from": "0912", "message": "پيامك"}'.encode("windows-1256")
    [sms] = parse_inbound("POST", "", "application/json; charset=windows-1256", body)
    assert sms.text == "پيامك" and sms.receptor == ""


@pytest.mark.parametrize("names", [
    ("MessageId", "From", "To", "Message"),
    ("messageId", "FROM", "to", "MESSAGE"),
    ("message_id", "from", "To", "message"),
    ("msgid", "sender", "receptor", "text"),
    ("ID", "Sender", "Receptor", "Body"),
])
def test_field_names_in_any_case_and_the_aliases(names: tuple[str, str, str, str]) -> None:
    values = ("42", "+989121234567", "10008445", "سلام")
    query = "&".join(f"{name}={quote(value)}" for name, value in zip(names, values, strict=True))
    assert parse_inbound("GET", query, None, b"") == [_sms("42", "+989121234567", "سلام")]
    body = json.dumps(dict(zip(names, values, strict=True))).encode()
    assert parse_inbound("POST", "", "application/json", body) == [_sms("42", "+989121234567", "سلام")]


def test_the_first_alias_wins_and_extra_fields_are_kept_as_given() -> None:
    query = "id=row-7&messageid=42&from=0912&to=10008445&message=hi&Line=10008445&Cost=120&flags=&date=soon"
    [sms] = parse_inbound("GET", query, None, b"")
    assert sms.messageid == "42" and sms.received_at is None
    assert dict(sms.extra) == {  # the alias not taken and the date that could not be read are kept
        "id": "row-7", "Line": "10008445", "Cost": "120", "flags": "", "date": "soon",
    }
    with pytest.raises(TypeError):
        sms.extra["Cost"] = "0"  # type: ignore[index]


def test_json_values_that_are_no_strings() -> None:
    body = json.dumps({
        "messageid": 42.0, "from": "0912", "message": "", "urgent": True, "parts": [1, 2], "price": 1.5,
        "to": None,
    }).encode()
    [sms] = parse_inbound("POST", "", "application/json", body)
    assert (sms.messageid, sms.receptor, sms.text) == ("42", "", "")
    assert dict(sms.extra) == {"urgent": "true", "parts": "[1, 2]", "price": "1.5"}


def test_values_are_stripped_and_an_empty_sms_is_allowed() -> None:
    assert parse_inbound("GET", "messageid=+8+&from=%20%2B98912%0A&message=", None, b"") == [
        _sms("8", "+98912", "", receptor=""),
    ]
    assert parse_inbound("GET", "messageid=8&from=0912", None, b"")[0].text == ""


def test_a_body_overrides_the_query_string_which_fills_in_the_rest() -> None:
    body = b"messageid=11&from=0912&message=hi"
    [sms] = parse_inbound("POST", "messageid=99&to=10008445&line=2", FORM, body)
    assert (sms.messageid, sms.receptor, dict(sms.extra)) == ("11", "10008445", {"line": "2"})
    [sms] = parse_inbound("POST", "msgid=99", FORM, body)  # an alias of a field the body has
    assert sms.messageid == "11" and sms.extra == {}


def test_an_alias_with_a_value_beats_an_empty_one() -> None:
    [sms] = parse_inbound("GET", "messageid=&id=77&from=&sender=0912", None, b"")
    assert (sms.messageid, sms.sender) == ("77", "0912")
    assert dict(sms.extra) == {"messageid": "", "from": ""}


@pytest.mark.parametrize("date", ["0", "-5", "1e30", "nan", "1403/09/06"])
def test_a_date_that_is_no_sensible_unix_time_is_kept_unread(date: str) -> None:
    [sms] = parse_inbound("GET", f"messageid=1&from=0912&date={quote(date)}", None, b"")
    assert sms.received_at is None and sms.extra == {"date": date}


def test_records_are_hashable_and_equal_by_value() -> None:
    first, second = (parse_inbound("GET", GET_QUERY + "&line=1", None, b"")[0] for _ in range(2))
    assert first == second and hash(first) == hash(second)
    assert len({first, second}) == 1


def test_a_stray_percent_stays_as_written() -> None:
    [sms] = parse_inbound("GET", "messageid=1&from=0912&message=50%+off%ZZ", None, b"")
    assert sms.text == "50% off%ZZ"


@pytest.mark.parametrize(("method", "query", "content_type", "body", "message"), [
    ("GET", "from=0912&to=10008445&message=hi", None, b"",
     "no messageid in the inbound callback (fields: from, to, message)"),
    ("POST", "", FORM, b"messageid=4&to=10008445&message=hi",
     "no from in the inbound callback (fields: messageid, to, message)"),
    ("POST", "", FORM, b"messageid=4&from=+&message=hi",
     "the from in the inbound callback is empty (fields: messageid, from, message)"),
    ("POST", "", "application/json", b'[{"messageid": "1", "from": "0912"}, {"from": "0913"}]',
     "no messageid in item 2 of the inbound callback (fields: from)"),
    ("POST", "", "application/json", b"{}", "no messageid in the inbound callback (fields: none)"),
    ("GET", "", None, b"", "the inbound callback carried no fields"),
    ("POST", "", FORM, b"  \r\n", "the inbound callback carried no fields"),
    ("POST", "", "application/json", b'{"messageid": "1", "from": ',
     "the body of the inbound callback is not valid JSON (Expecting value at 27)"),
    ("POST", "", "application/json", b"42",
     "the JSON body of the inbound callback is a int, not an object or list"),
    ("POST", "", "application/json", b'"hi"',
     "the JSON body of the inbound callback is a str, not an object or list"),
    ("POST", "", "application/json", b"null",
     "the JSON body of the inbound callback is a NoneType, not an object or list"),
    ("POST", "", "application/json", b'[{"messageid": "1", "from": "0912"}, ["x"]]',
     "item 2 of the inbound callback is a JSON list, not an object"),
    ("POST", "", "application/json", b"[" * 100_000,
     "the inbound callback is larger than 65536 bytes"),
    ("POST", "", FORM, b"messageid=1&from=0912&message=%D8",
     "the body of the inbound callback has percent-escapes that are not valid utf-8"),
    ("GET", "messageid=1&from=0912&message=%E2%80", None, b"",
     "the query string of the inbound callback has percent-escapes that are not valid utf-8"),
    ("POST", "", FORM, b"messageid=1&from=0912&message=\xd3\xe1\xc7\xe3",
     "the body of the inbound callback is not valid utf-8 (byte 30)"),
    ("POST", "", f"{FORM}; charset=klingon", b"messageid=1",
     "the inbound callback declares an unknown charset 'klingon'"),
    ("POST", "", "multipart/form-data; boundary=x", b"--x\r\n",
     "the inbound callback came as multipart/form-data; only form and JSON bodies are read"),
    ("PUT", "", FORM, b"messageid=1&from=0912", "the inbound callback came as 'PUT'; only GET and POST are read"),
    ("POST", "", f"{FORM}; charset=base64", b"bWVzc2FnZWlk",
     "the inbound callback declares the charset 'base64', which decodes no text"),
    ("POST", "", f"{FORM}; charset=a\0b", b"messageid=1", "the inbound callback declares an unknown charset 'a\\x00b'"),
    ("POST", "", "application/json", b"[" * 60_000, "the body of the inbound callback is JSON too odd to read"),
    ("POST", "", "application/json", b'{"messageid": ' + b"9" * 5000 + b"}",
     "the body of the inbound callback is JSON too odd to read"),
    ("POST", "", "application/json", b'{"messageid": "1", "from": "0912", "message": "\\ud83d!"}',
     "the field message in the inbound callback has a lone UTF-16 surrogate"),
])
def test_a_malformed_inbound_callback_says_what_is_wrong(
    method: str, query: str, content_type: str | None, body: bytes, message: str
) -> None:
    with pytest.raises(CallbackError) as caught:
        parse_inbound(method, query, content_type, body)
    assert str(caught.value) == message


def test_the_size_limit_is_a_parameter() -> None:
    body = b"messageid=1&from=0912&message=" + b"x" * 100
    assert parse_inbound("POST", "", FORM, body, max_bytes=len(body))
    with pytest.raises(CallbackError, match="larger than 100 bytes"):
        parse_inbound("POST", "", FORM, body, max_bytes=100)
    with pytest.raises(CallbackError, match="larger than"):
        parse_inbound("GET", "messageid=1&from=0912&message=" + "x" * 200, None, b"", max_bytes=100)


def test_a_long_list_of_field_names_is_cut_in_the_message() -> None:
    query = "&".join(f"field{number}=x" for number in range(30)) + "&bad%0Aname=1"
    with pytest.raises(CallbackError) as caught:
        parse_inbound("GET", query, None, b"")
    assert str(caught.value).endswith("field10, field11, … 19 more)")
    with pytest.raises(CallbackError) as caught:
        parse_inbound("GET", "bad%0Aname=1", None, b"")
    assert str(caught.value) == "no messageid in the inbound callback (fields: 'bad\\nname')"


@pytest.mark.parametrize(("method", "query", "content_type", "body"), [
    ("GET", "messageid=3127451987&status=10", None, b""),
    ("POST", "", FORM, b"messageid=3127451987&status=10"),
    ("POST", "", "application/json", b'{"MessageId": 3127451987, "Status": 10}'),
    ("POST", "", None, b'{"msgid": "3127451987", "status": "10"}'),
])
def test_a_delivery_report_in_every_shape(method: str, query: str, content_type: str | None, body: bytes) -> None:
    [report] = parse_delivery(method, query, content_type, body)
    assert report == DeliveryReport("3127451987", 10)
    assert report.state == "delivered"


def test_several_delivery_reports_with_extra_fields() -> None:
    body = json.dumps([
        {"messageid": 1, "status": 10, "receptor": "09121234567"},
        {"messageid": 2, "status": "11", "statustext": "نرسیده به گیرنده"},
        {"messageid": 3, "status": 14},
    ], ensure_ascii=False).encode()
    reports = parse_delivery("POST", "", "application/json", body)
    assert [(report.messageid, report.state) for report in reports] == [
        ("1", "delivered"), ("2", "undelivered"), ("3", "blocked"),
    ]
    assert dict(reports[0].extra) == {"receptor": "09121234567"}  # no modelled field of a report
    assert dict(reports[1].extra) == {"statustext": "نرسیده به گیرنده"}


@pytest.mark.parametrize(("query", "message"), [
    ("status=10", "no messageid in the delivery callback (fields: status)"),
    ("messageid=1", "no status in the delivery callback (fields: messageid)"),
    ("messageid=1&status=", "the status in the delivery callback is empty (fields: messageid, status)"),
    ("messageid=1&status=ok", "the status in the delivery callback is not a whole number"),
    ("messageid=1&status=10.5", "the status in the delivery callback is not a whole number"),
])
def test_a_malformed_delivery_report_says_what_is_wrong(query: str, message: str) -> None:
    with pytest.raises(CallbackError) as caught:
        parse_delivery("GET", query, None, b"")
    assert str(caught.value) == message


@pytest.mark.parametrize(("status", "state"), [
    (1, "pending"), (2, "pending"), (4, "pending"), (5, "pending"),
    (6, "failed"), (10, "delivered"), (11, "undelivered"), (13, "cancelled"), (14, "blocked"),
    (0, "unknown"), (3, "unknown"), (50, "unknown"), (100, "unknown"), (-1, "unknown"),
])
def test_delivery_states(status: int, state: str) -> None:
    assert delivery_state(status) == state


def test_persian_digits_in_a_status_are_read() -> None:
    [report] = parse_delivery("GET", "messageid=1&status=%DB%B1%DB%B0", None, b"")
    assert report.status == 10


@pytest.mark.parametrize("seed", range(4))
def test_garbage_raises_only_callback_errors(seed: int) -> None:
    rng = random.Random(seed)
    content_types = [None, FORM, f"{FORM}; charset=windows-1256", "application/json", "text/plain",
                     "application/json; charset=latin-1", "multipart/form-data", "application/json; charset=x"]
    pieces = [b"messageid=", b"from=", b"&", b"=", b"%", b"%D8", b"{", b"}", b"[", b"]", b'"', b":", b",",
              b'"messageid"', b'"from"', b"1", b"\xff", b"\x00", "سلام".encode(), b" "]
    parsers = (parse_inbound, parse_delivery)
    for _ in range(500):
        if rng.random() < 0.5:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(24)))
        query = body.decode("latin-1") if rng.random() < 0.2 else ""
        method = rng.choice(["GET", "POST", "post", "HEAD"])
        try:
            result = rng.choice(parsers)(method, query, rng.choice(content_types), body, max_bytes=4096)
        except CallbackError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert isinstance(result, list)
