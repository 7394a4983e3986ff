"""Reading Kavenegar's webhook calls (inbound SMS, delivery reports) into frozen records: pure functions.

Kavenegar does not publish the exact shape of these calls, so every plausible one is read the same
way: GET or POST; fields in the query string, a form body (`application/x-www-form-urlencoded`) or a
JSON body (one object, or a list of objects for several messages). A body is decoded by the charset
its Content-Type declares (UTF-8 by default), percent-escapes in it by that charset too; the query
string's percent-escapes are UTF-8. When a body is present, its fields win over the query string's.

Field names are matched without regard to case, `_` or `-` (`MessageId`, `message_id`), and these
aliases are accepted, the first one present winning:

    messageid   messageid, msgid, id
    sender      from, sender
    receptor    to, receptor
    text        message, text, body
    status      status             (delivery reports)
    date        date               (unix seconds)

Every other field is kept, as given, in `extra`. Anything malformed raises `CallbackError`, whose
message names what was wrong without quoting the customer's text.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import json
import re
import types
import urllib.parse
from collections.abc import Mapping
from typing import Any

MAX_BYTES = 64 * 1024

_ALIASES = {
    "messageid": ("messageid", "msgid", "id"),
    "sender": ("from", "sender"),
    "receptor": ("to", "receptor"),
    "text": ("message", "text", "body"),
    "status": ("status",),
    "date": ("date",),
}
_MODELLED = {name: field for field, names in _ALIASES.items() for name in names}
_INBOUND = frozenset({"messageid", "sender", "receptor", "text"})  # and "date" when it could be read
_DELIVERY = frozenset({"messageid", "status"})
_FORM = "application/x-www-form-urlencoded"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN_FIELDS = 12


class CallbackError(ValueError):
    """The callback cannot be read; str() says what was missing or wrong, in one line."""


@dataclasses.dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS a customer sent to our line. `sender` is the number exactly as Kavenegar wrote it."""

    messageid: str
    sender: str
    receptor: str
    text: str
    received_at: dt.datetime | None = None  # UTC, when the callback carried a `date`
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Kavenegar's word on an SMS we sent; `delivery_state(status)` says what the number means."""

    messageid: str
    status: int
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def state(self) -> str:
        return delivery_state(self.status)


_STATES = {10: "delivered", 11: "undelivered", 6: "failed", 13: "cancelled", 14: "blocked"}
_PENDING = frozenset({1, 2, 4, 5})  # queued, scheduled, sent to the centre, sent to the operator


def delivery_state(status: int) -> str:
    """Kavenegar's status number as one of "delivered", "undelivered", "failed", "cancelled",
    "blocked", "pending" or "unknown"; only "pending" may still change."""
    if status in _PENDING:
        return "pending"
    return _STATES.get(status, "unknown")


def parse_inbound(
    method: str, query: str, content_type: str | None, body: bytes, *, max_bytes: int = MAX_BYTES
) -> list[InboundSms]:
    """The SMS one inbound callback carries, in the order given. Raises CallbackError."""
    out = []
    for where, fields in _records("inbound", method, query, content_type, body, max_bytes):
        known, extra = _pick(fields, _INBOUND | {"date"})
        received_at = _unix_time(known.get("date"))
        if received_at is None:  # a date we cannot read is kept as given
            known, extra = _pick(fields, _INBOUND)
        for required in ("messageid", "sender"):
            if not known.get(required):
                raise CallbackError(_missing(required, where, fields))
        out.append(InboundSms(
            messageid=known["messageid"],
            sender=known["sender"],
            receptor=known.get("receptor", ""),
            text=known.get("text", ""),
            received_at=received_at,
            extra=extra,
        ))
    return out


def parse_delivery(
    method: str, query: str, content_type: str | None, body: bytes, *, max_bytes: int = MAX_BYTES
) -> list[DeliveryReport]:
    """The delivery reports one delivery callback carries, in the order given. Raises CallbackError."""
    out = []
    for where, fields in _records("delivery", method, query, content_type, body, max_bytes):
        known, extra = _pick(fields, _DELIVERY)
        for required in ("messageid", "status"):
            if not known.get(required):
                raise CallbackError(_missing(required, where, fields))
        try:
            status = int(known["status"])
        except ValueError:
            raise CallbackError(f"the status in {where} is not a whole number") from None
        out.append(DeliveryReport(messageid=known["messageid"], status=status, extra=extra))
    return out


def _records(
    kind: str, method: str, query: str, content_type: str | None, body: bytes, max_bytes: int
) -> list[tuple[str, list[tuple[str, str]]]]:
    """(where, fields) per message: `where` names it for error messages; fields keep their order."""
    where = f"the {kind} callback"
    if method.upper() not in ("GET", "POST"):
        raise CallbackError(f"{where} came as {method.upper()[:10]!r}; only GET and POST are read")
    if len(body) > max_bytes or len(query) > max_bytes:
        raise CallbackError(f"{where} is larger than {max_bytes} bytes")
    from_query = _form(query, "utf-8", f"the query string of {where}")
    if not body.strip():
        if not from_query:
            raise CallbackError(f"{where} carried no fields")
        return [(where, from_query)]
    media, charset = _content_type(content_type, where)
    text = _decode(body, charset, where)
    if media == "application/json" or media.endswith("+json") or (
        media != _FORM and text.lstrip()[:1] in ("{", "[")
    ):
        records = _json(text, where)
    elif media.startswith("multipart/"):
        raise CallbackError(f"{where} came as {media}; only form and JSON bodies are read")
    else:
        records = [(where, _form(text, charset, f"the body of {where}"))]
    records = [(place, _merged(fields, from_query)) for place, fields in records]
    for place, fields in records:
        for name, value in fields:
            if _SURROGATE.search(name + value):  # JSON's "\ud83d" alone: no UTF-8 can store it
                raise CallbackError(f"the field {_printable(name)} in {place} has a lone UTF-16 surrogate")
    return records


def _merged(fields: list[tuple[str, str]], fallback: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`fields`, then those of `fallback` naming what `fields` does not (under any alias)."""
    have = {_field(name) for name, _ in fields}
    return fields + [(name, value) for name, value in fallback if _field(name) not in have]


def _content_type(header: str | None, where: str) -> tuple[str, str]:
    """The media type, lower case, and the declared charset (UTF-8 if none)."""
    media, *params = (header or "").split(";")
    charset = "utf-8"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip("\"'"):
            charset = value.strip().strip("\"'")
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise CallbackError(f"{where} declares an unknown charset {charset[:40]!r}") from None
    return media.strip().lower(), charset


def _decode(body: bytes, charset: str, where: str) -> str:
    codec = "utf-8-sig" if codecs.lookup(charset).name == "utf-8" else charset  # a BOM is no field
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        raise CallbackError(f"the body of {where} is not valid {charset} (byte {exc.start})") from None
    except (LookupError, UnicodeError):  # a codec of bytes to bytes (base64), or one that reads nothing
        raise CallbackError(f"{where} declares the charset {charset[:40]!r}, which decodes no text") from None


def _form(text: str, charset: str, where: str) -> list[tuple[str, str]]:
    """Form fields; a `%` not followed by two hex digits stays as written (as browsers read it)."""
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
    except UnicodeError:  # UnicodeDecodeError, or the odd codec's plain UnicodeError (punycode)
        raise CallbackError(f"{where} has percent-escapes that are not valid {charset}") from None
    return [(name.strip(), value.strip()) for name, value in pairs if name.strip()]


def _json(text: str, where: str) -> list[tuple[str, list[tuple[str, str]]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CallbackError(f"the body of {where} is not valid JSON ({exc.msg} at {exc.pos})") from None
    except (ValueError, RecursionError):  # numbers over the digit limit, absurd nesting
        raise CallbackError(f"the body of {where} is JSON too odd to read") from None
    if isinstance(data, dict):
        items, places = [data], [where]
    elif isinstance(data, list):
        items, places = data, [f"item {number} of {where}" for number in range(1, len(data) + 1)]
    else:
        raise CallbackError(f"the JSON body of {where} is a {type(data).__name__}, not an object or list")
    out = []
    for item, place in zip(items, places, strict=True):
        if not isinstance(item, dict):
            raise CallbackError(f"{place} is a JSON {type(item).__name__}, not an object")
        fields = [(str(name).strip(), _scalar(value)) for name, value in item.items() if value is not None]
        out.append((place, [(name, value) for name, value in fields if name]))
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return "…"


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def _field(name: str) -> str:
    """The modelled field `name` is an alias of, else its key."""
    key = _key(name)
    return _MODELLED.get(key, key)


def _pick(fields: list[tuple[str, str]], wanted: frozenset[str]) -> tuple[dict[str, str], Mapping[str, str]]:
    """The `wanted` fields, each from the first alias present with a value (else the first present),
    and every field not taken, by its name as given, as the read-only `extra`. Of several fields of
    one name, the first counts."""
    by_key: dict[str, str] = {}
    for name, value in fields:
        by_key.setdefault(_key(name), value)
    known: dict[str, str] = {}
    taken: set[str] = set()
    for field in wanted:
        present = [name for name in _ALIASES[field] if name in by_key]
        key = next((name for name in present if by_key[name]), present[0] if present else None)
        if key is not None:
            known[field] = by_key[key]
            taken.add(key)
    extra: dict[str, str] = {}
    for name, value in fields:
        if _key(name) not in taken:
            extra.setdefault(name, value)
    return known, types.MappingProxyType(extra)


def _unix_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        seconds = float(value)
        return dt.datetime.fromtimestamp(seconds, dt.UTC) if seconds > 0 else None
    except (ValueError, OverflowError, OSError):
        return None


def _missing(field: str, where: str, fields: list[tuple[str, str]]) -> str:
    names = [_printable(name) for name, _ in fields[:_SHOWN_FIELDS]]
    if len(fields) > _SHOWN_FIELDS:
        names.append(f"… {len(fields) - _SHOWN_FIELDS} more")
    given = ", ".join(names) or "none"
    label = _ALIASES[field][0]
    if any(_field(name) == field for name, _ in fields):
        return f"the {label} in {where} is empty (fields: {given})"
    return f"no {label} in {where} (fields: {given})"


def _printable(name: str) -> str:
    return name if name.isprintable() and len(name) <= 40 else repr(name[:40])
