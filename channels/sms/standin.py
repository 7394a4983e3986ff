"""A loopback stand-in of Kavenegar's REST API (HTTPS, JSON, in memory), for tests and `kartabl demo`.

Point the `kavenegar` package at it with `api.host = s.host`, and make requests trust the stand-in's own CA
with `REQUESTS_CA_BUNDLE=s.ca_path`. Calls are `/v1/{api-key}/{scope}/{method}.json`, GET with a query
string or POST with a form body; every answer is `{"return": {"status", "message"}, "entries": ...}` with
the HTTP status equal to `return.status`, and Kavenegar's Persian messages.

Methods, as Kavenegar documents them:
- `sms/send` (receptor, message, sender, localid, date, type): one entry per receptor, billed per part
  (GSM-7: 160 septets in one part, 153 a part when split; UCS-2, so any Persian text: 70 and 67). A
  localid already used for the same receptor sends nothing and answers the earlier message's entry.
- `sms/status` (messageid) and `sms/statuslocalmessageid` (localid): an unknown id is status 100, with
  messageid 0 for an unknown localid.
- `sms/receive` (linenumber, isread): isread=0 gives at most 100 unread messages and MARKS THEM READ as it
  answers, so an answer the client loses takes the messages with it; isread=1 lists read ones. An empty
  inbox is status 200 with `entries: []`.
- `sms/inboxpaged` (linenumber, isread, startdate, enddate, pagenumber) is the paged inbox. Evidence:
  Kavenegar's own .NET SDK (kavenegar/kavenegar-dotnet, `InboxPaged`) calls it with exactly these
  parameters and reads `metadata` beside `entries`; the docs give 200 messages a page, a window of at most
  two days (the last two days when no date is given), and metadata totalcount, currentpage, totalpages,
  pagesize. With isread=0 it marks the page read too and totalcount counts what is left outside the page.
  The kavenegar Python package returns `entries` alone: its users never see `metadata`, so they page until
  a page comes back short.
- `account/info`: remaincredit, expiredate, type; sends draw the credit down and fail with 418 past it.

Where Kavenegar says nothing, the stand-in chooses, strictly: a missing parameter is 400 and a blank one
406; a parameter given twice is 400 (so nobody relies on how Kavenegar would merge them); receptors must be
Iranian mobile numbers (411); localids must be one per receptor (419); a line not the account's is 412; a
date more than a minute past is 417.

The test side plays the customers (`customer_sms`), the network (`deliver_after`, `set_outcome`) and the
failures (`fail_next`, `hang_next`, `drop_next`), and reads `sent`, `inbox`, `requests` and `callbacks`.
Callbacks to the gateway (an SMS arrived, a delivery report) go out by a plain asyncio HTTP client and are
retried while not answered 200. Neither the API key nor a callback URL is ever logged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import http.client
import itertools
import json
import logging
import math
import re
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

import trustme

from channels.standins import Signal

log = logging.getLogger(__name__)

Json = dict[str, Any]
Shape = Literal["get-query", "post-form", "post-json"]

PRICE_PER_PART = 1200  # rials, one price for every alphabet here
MAX_RECEPTORS = 200
MAX_IDS = 500  # ids in one status call
MAX_TEXT = 1800  # characters in one message, Kavenegar's limit for ordinary lines
RECEIVE_LIMIT = 100
INBOX_WINDOW = 2 * 86400  # seconds between startdate and enddate of the paged inbox, at most
MAX_BODY = 1 << 20

STATUS_TEXT = {
    1: "در صف ارسال",
    2: "زمان‌بندی شده",
    4: "ارسال شده به مخابرات",
    5: "ارسال شده به مخابرات",
    6: "خطا در ارسال پیام",
    10: "رسیده به گیرنده",
    11: "نرسیده به گیرنده",
    13: "لغو شده",
    14: "بلاک شده، عدم تمایل گیرنده به دریافت پیامک",
    100: "شناسه پیامک نامعتبر است",
}
#: Kavenegar's messages for its return codes (500 is what any server may say).
ERRORS = {
    200: "تایید شد",
    400: "پارامترها ناقص هستند",
    401: "حساب کاربری غیرفعال شده است",
    402: "عملیات ناموفق بود",
    403: "کد شناسائی API-Key معتبر نمی‌باشد",
    404: "متد نامشخص است",
    405: "متد Get/Post اشتباه است",
    406: "پارامترهای اجباری خالی ارسال شده اند",
    407: "دسترسی به اطلاعات مورد نظر برای شما امکان پذیر نیست",
    409: "سرور قادر به پاسخگوئی نیست بعدا تلاش کنید",
    411: "دریافت کننده نامعتبر است",
    412: "ارسال کننده نامعتبر است",
    413: "پیام خالی است و یا طول پیام بیش از حد مجاز می‌باشد",
    414: "حجم درخواست بیشتر از حد مجاز است",
    415: "اندیس شروع بزرگ تر از کل تعداد شماره های مورد نظر است",
    417: "تاریخ ارسال اشتباه است و فرمت آن صحیح نمی باشد",
    418: "اعتبار شما کافی نمی‌باشد",
    419: "طول آرایه متن و گیرنده و فرستنده هم اندازه نیست",
    420: "استفاده از لینک در متن پیام برای شما محدود شده است",
    422: "داده ها به دلیل وجود کاراکتر نامناسب قابل پردازش نیست",
    424: "الگوی مورد نظر پیدا نشد",
    426: "استفاده از این متد نیازمند سرویس پیشرفته می‌باشد",
    428: "ارسال کد از طریق تماس تلفنی امکان پذیر نیست",
    431: "ساختار کد صحیح نمی‌باشد",
    432: "پارامتر کد در متن پیام پیدا نشد",
    451: "فراخوانی بیش از حد در بازه زمانی مشخص IP محدود شده",
    501: "فقط امکان ارسال پیام تست به شماره صاحب حساب کاربری وجود دارد",
    500: "خطای داخلی سرور",
}

_GSM = frozenset("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
                 "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")  # an escape septet plus one: two septets each
_MOBILE = re.compile(r"(?:\+98|0098|0)?9\d{9}")
_ROUTE = re.compile(r"/v1/(?P<key>[^/]+)/(?P<scope>[A-Za-z]+)/(?P<method>[A-Za-z]+)\.json")
_FORM = "application/x-www-form-urlencoded"


def sms_parts(text: str) -> int:
    """The parts the network sends `text` in. Counted here, apart from the SMS channel's own splitter, so
    that the two check each other; like the network, it never splits an escape pair or a surrogate pair."""
    gsm = all(char in _GSM or char in _GSM_EXTENSION for char in text)
    if gsm:
        sizes, single, each = [2 if char in _GSM_EXTENSION else 1 for char in text], 160, 153
    else:
        sizes, single, each = [2 if ord(char) > 0xFFFF else 1 for char in text], 70, 67
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > each:
            parts, used = parts + 1, 0
        used += size
    return parts


@dataclasses.dataclass
class Sent:
    """An SMS the account sent. `status` moves on as the network reports: 1 queued (2 scheduled), then 10
    delivered or the outcome set for the receptor; `date` is when it goes out, in unix seconds."""

    messageid: int
    receptor: str
    sender: str
    message: str
    localid: str | None
    parts: int
    cost: int
    date: int
    status: int
    at: float

    def entry(self) -> Json:
        return {"messageid": self.messageid, "message": self.message, "status": self.status,
                "statustext": STATUS_TEXT[self.status], "sender": self.sender, "receptor": self.receptor,
                "date": self.date, "cost": self.cost}


@dataclasses.dataclass
class Inbound:
    """An SMS a customer sent to one of the account's lines; `read` once a receive call handed it out."""

    messageid: int
    sender: str
    receptor: str
    message: str
    date: int
    read: bool = False

    def entry(self) -> Json:
        return {"messageid": self.messageid, "message": self.message, "sender": self.sender,
                "receptor": self.receptor, "date": self.date}


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    """One API call as it arrived; the API key is in the path only, so it is in none of these fields."""

    method: str  # "sms/send"
    http_method: str
    params: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Callback:
    """One attempt to push a callback to the gateway; `status` is None when nothing answered."""

    kind: Literal["inbound", "delivery"]
    fields: Json
    status: int | None


class _ApiError(Exception):
    """A Kavenegar error answer, raised inside the stand-in and turned into the envelope in one place."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclasses.dataclass(frozen=True)
class _Fault:
    code: int | None = None  # answer this error
    hang: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection instead of answering
    after_effect: bool = False  # the call takes effect although no answer comes


@dataclasses.dataclass(frozen=True)
class _Answer:
    status: int
    body: Json

    def encode(self, keep_alive: bool) -> bytes:
        payload = json.dumps(self.body, ensure_ascii=False).encode()
        reason = http.client.responses.get(self.status, "Kavenegar Error")
        head = (f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        return head.encode("latin-1") + payload


def _envelope(code: int, **fields: Any) -> _Answer:
    body: Json = {"return": {"status": code, "message": ERRORS.get(code, "خطا")}, "entries": None}
    return _Answer(code, {**body, **fields})


class _Malformed(Exception):
    """Not an HTTP request the stand-in reads; answered with `code` and the connection closed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclasses.dataclass(frozen=True)
class _HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    def params(self) -> dict[str, str]:
        """Query string and form body together; a name given twice is refused (400)."""
        pairs = _form_pairs(self.query)
        if self.body and self.headers.get("content-type", "").lower().startswith(_FORM):
            pairs += _form_pairs(self.body)
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise _ApiError(400)
        return dict(pairs)


def _form_pairs(raw: str | bytes) -> list[tuple[str, str]]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _ApiError(422) from None
    return [(name.lower(), value) for name, value in pairs]


class _Params:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def required(self, name: str) -> str:
        if name not in self.values:
            raise _ApiError(400)
        value = self.values[name].strip()
        if not value:
            raise _ApiError(406)
        return value

    def optional(self, name: str) -> str | None:
        return self.values.get(name, "").strip() or None

    def listed(self, name: str) -> list[str]:
        return [item.strip() for item in self.required(name).split(",")]

    def unix(self, name: str) -> int | None:
        value = self.optional(name)
        try:
            return None if value is None else int(value)
        except ValueError:
            raise _ApiError(417) from None


def _national(number: str) -> str:
    """A mobile number's last ten digits: one key for 0912..., +98912... and 0098912..."""
    return re.sub(r"\D", "", number)[-10:]


class StandInKavenegar:
    """Kavenegar's REST API for one account, on loopback HTTPS; customers, the network and failures are
    driven by the test. Use within one event loop: `async with StandInKavenegar(key) as s: ...`."""

    def __init__(self, api_key: str, *, line: str = "10004346", credit: int = 10**9,
                 callback_url: str | None = None, callback_shape: Shape = "post-form",
                 delivery_url: str | None = None, delivery_shape: Shape = "post-form",
                 deliver_after: float = 0.0) -> None:
        self._api_key = api_key
        self.line = line
        self.lines = {line}
        self.credit = credit
        self.expiredate = int(time.time()) + 365 * 86400
        self.callback_url, self.callback_shape = callback_url, callback_shape
        self.delivery_url, self.delivery_shape = delivery_url, delivery_shape
        self.deliver_after = deliver_after  # seconds from going out to the final status
        self.page_size = 200  # of sms/inboxpaged
        self.callback_attempts, self.callback_retry_delay, self.callback_timeout = 4, 0.2, 5.0
        self.sent: list[Sent] = []
        self.inbox: list[Inbound] = []
        self.requests: list[ApiRequest] = []
        self.callbacks: list[Callback] = []
        self.connections = 0  # accepted, over the stand-in's life: keep-alive shows as fewer
        self.ca_path = ""  # set by start()
        self._port = 0
        self._outcomes: dict[str, int] = {}
        self._faults: dict[str | None, collections.deque[_Fault]] = collections.defaultdict(collections.deque)
        self._by_id: dict[int, Sent] = {}
        self._by_local: dict[tuple[str, str], Sent] = {}  # (national number, localid)
        self._by_localid: dict[str, list[Sent]] = collections.defaultdict(list)
        self._message_ids = itertools.count(85463238)
        self._inbound_ids = itertools.count(30034577)
        self._changed = Signal()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._server: asyncio.Server | None = None
        self._workdir: str | None = None
        self._methods: dict[str, Callable[[_Params], Json]] = {
            "sms/send": self._send, "sms/status": self._status, "sms/statuslocalmessageid": self._status_local,
            "sms/receive": self._receive, "sms/inboxpaged": self._inbox_paged, "account/info": self._account_info,
        }

    # --- life ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1, a free port, with a certificate for 127.0.0.1 and localhost from a new CA
        whose PEM is written to `ca_path`."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._workdir = tempfile.mkdtemp(prefix="kavenegar-standin-")
        self.ca_path = str(Path(self._workdir, "ca.pem"))
        ca.cert_pem.write_to_path(self.ca_path)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop at once: calls in flight (hung ones too) and pending callbacks are cut off."""
        for timer in self._timers.values():
            timer.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # at once: a TLS goodbye would outlive the loop
            writer.transport.abort()
        pending = [*self._tasks, *self._handlers]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        """What the kavenegar package's `host` attribute takes: "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self._port}"

    # --- the test's side ----------------------------------------------------------------------------

    def customer_sms(self, sender: str, text: str, *, receptor: str | None = None,
                     messageid: int | None = None) -> int:
        """`sender` texts our line (or `receptor`): kept unread, and pushed to `callback_url` if set, as the
        fields from, to, message, messageid and date. Returns the message id."""
        message = Inbound(next(self._inbound_ids) if messageid is None else messageid, sender,
                          receptor or self.line, text, int(time.time()))
        self.inbox.append(message)
        if self.callback_url:
            self._push("inbound", self.callback_url, self.callback_shape, {
                "from": sender, "to": message.receptor, "message": text, "messageid": message.messageid,
                "date": message.date})
        return message.messageid

    def set_outcome(self, receptor: str, status: int) -> None:
        """Messages to `receptor` end in `status` (6 failed, 11 undelivered, 14 blocked...), not 10."""
        if status not in STATUS_TEXT:
            raise ValueError(f"Kavenegar has no message status {status}")
        self._outcomes[_national(receptor)] = status

    def fail_next(self, code: int, *, times: int = 1, method: str | None = "send") -> None:
        """The next `times` calls of `method` ("send", "status"...; None for any) answer error `code` and
        do nothing else."""
        self._add_fault(method, _Fault(code=code), times)

    def hang_next(self, seconds: float, *, times: int = 1, method: str | None = "send",
                  after_effect: bool = True) -> None:
        """The next calls answer after `seconds`. With `after_effect` the call takes effect at once (the SMS
        goes out although the client may give up waiting); without, the connection is closed after the
        wait and nothing was done."""
        self._add_fault(method, _Fault(hang=seconds, drop=not after_effect, after_effect=after_effect), times)

    def drop_next(self, *, times: int = 1, method: str | None = "send", after_effect: bool = False) -> None:
        """The next calls get the connection closed without an answer (after taking effect, if asked)."""
        self._add_fault(method, _Fault(drop=True, after_effect=after_effect), times)

    async def wait_sent(self, n: int = 1, timeout: float = 5.0) -> list[Sent]:
        """The first `n` messages sent, once there are that many."""
        if not await self._changed.wait_until(lambda: len(self.sent) >= n, timeout):
            raise TimeoutError(f"{len(self.sent)} of {n} messages sent in {timeout}s")
        return self.sent[:n]

    async def wait_callbacks(self, n: int = 1, timeout: float = 5.0) -> list[Callback]:
        """The first `n` callback attempts, once there are that many."""
        if not await self._changed.wait_until(lambda: len(self.callbacks) >= n, timeout):
            raise TimeoutError(f"{len(self.callbacks)} of {n} callback attempts in {timeout}s")
        return self.callbacks[:n]

    def _add_fault(self, method: str | None, fault: _Fault, times: int) -> None:
        key = None if method is None else method.rpartition("/")[2].lower()
        self._faults[key].extend([fault] * times)

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                answer = await self._answer(request)
                if answer is None:
                    return
                writer.write(answer.encode(request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    return
        except _Malformed as malformed:
            writer.write(_envelope(malformed.code).encode(keep_alive=False))
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client went away; nobody is left to answer
        except asyncio.CancelledError:
            # stop() cut a kept-alive connection: end quietly (Python 3.11's stream server logs a
            # cancelled connection task as an error).
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, request: _HttpRequest) -> _Answer | None:
        """The answer to one request, or None to close the connection without one."""
        route = _ROUTE.fullmatch(request.path)
        if route is None:
            log.debug("%s to a path that is no API call", request.method)  # the path may hold a key: unlogged
            return _envelope(404)
        log.debug("%s /v1/***/%s/%s.json", request.method, route["scope"], route["method"])
        if urllib.parse.unquote(route["key"]) != self._api_key:
            return _envelope(403)
        name = f"{route['scope']}/{route['method']}".lower()
        handler = self._methods.get(name)
        if handler is None:
            return _envelope(404)
        if request.method not in ("GET", "POST"):
            return _envelope(405)
        try:
            params = _Params(request.params())
        except _ApiError as error:
            return _envelope(error.code)
        self.requests.append(ApiRequest(name, request.method, dict(params.values)))
        run = functools.partial(self._run, name, handler, params)
        fault = self._next_fault(route["method"].lower())
        return run() if fault is None else await self._faulted(fault, run)

    def _next_fault(self, method: str) -> _Fault | None:
        for key in (method, None):
            if self._faults[key]:
                return self._faults[key].popleft()
        return None

    async def _faulted(self, fault: _Fault, run: Callable[[], _Answer]) -> _Answer | None:
        if fault.code is not None:
            return _envelope(fault.code)
        answer = run() if fault.after_effect else None
        await asyncio.sleep(fault.hang)
        if fault.drop:
            log.info("closed the connection without answering, as asked")
            return None
        return answer

    def _run(self, name: str, handler: Callable[[_Params], Json], params: _Params) -> _Answer:
        try:
            body = handler(params)
        except _ApiError as error:
            log.info("%s answered %d", name, error.code)
            return _envelope(error.code)
        except Exception:
            log.exception("the stand-in failed on %s; answering 500", name)  # a bug here, shown to the client
            return _envelope(500)
        return _Answer(200, {"return": {"status": 200, "message": ERRORS[200]}, **body})

    # --- sms/send -----------------------------------------------------------------------------------

    def _send(self, params: _Params) -> Json:
        receptors = params.listed("receptor")
        message = params.values.get("message", "")
        if not message.strip() or len(message) > MAX_TEXT:
            raise _ApiError(413)
        sender = params.optional("sender") or self.line
        if sender not in self.lines:
            raise _ApiError(412)
        if len(receptors) > MAX_RECEPTORS:
            raise _ApiError(414)
        if not all(_MOBILE.fullmatch(receptor) for receptor in receptors):
            raise _ApiError(411)
        localids = _localids(params, len(receptors))
        when = _send_date(params)
        parts = sms_parts(message)
        fresh = sum(self._earlier(r, local) is None for r, local in zip(receptors, localids))
        if fresh * parts * PRICE_PER_PART > self.credit:
            raise _ApiError(418)
        return {"entries": [
            earlier.entry() if (earlier := self._earlier(receptor, local)) is not None
            else self._dispatch(receptor, local, sender, message, parts, when)
            for receptor, local in zip(receptors, localids)]}

    def _earlier(self, receptor: str, localid: str | None) -> Sent | None:
        return None if localid is None else self._by_local.get((_national(receptor), localid))

    def _dispatch(self, receptor: str, localid: str | None, sender: str, message: str, parts: int,
                  when: int) -> Json:
        """Sends one SMS; returns its entry as it stands now, before any delivery."""
        now = time.time()
        sent = Sent(next(self._message_ids), receptor, sender, message, localid, parts, parts * PRICE_PER_PART,
                    when, 2 if when > now + 1 else 1, now)
        self.credit -= sent.cost
        self.sent.append(sent)
        self._by_id[sent.messageid] = sent
        if localid is not None:
            self._by_local[(_national(receptor), localid)] = sent
            self._by_localid[localid].append(sent)
        entry = sent.entry()
        self._changed.fire()
        delay = max(when - now, 0) + self.deliver_after
        if delay <= 0:
            self._deliver(sent)
        else:
            self._timers[sent.messageid] = asyncio.get_running_loop().call_later(delay, self._deliver, sent)
        return entry

    def _deliver(self, sent: Sent) -> None:
        self._timers.pop(sent.messageid, None)
        sent.status = self._outcomes.get(_national(sent.receptor), 10)
        self._changed.fire()
        if self.delivery_url:
            self._push("delivery", self.delivery_url, self.delivery_shape, {
                "messageid": sent.messageid, "status": sent.status, "statustext": STATUS_TEXT[sent.status]})

    # --- status -------------------------------------------------------------------------------------

    def _status(self, params: _Params) -> Json:
        ids = params.listed("messageid")
        if len(ids) > MAX_IDS:
            raise _ApiError(414)
        return {"entries": [self._status_entry(given) for given in ids]}

    def _status_entry(self, given: str) -> Json:
        sent = self._by_id.get(int(given)) if given.isdigit() else None
        if sent is None:
            return {"messageid": int(given) if given.isdigit() else 0, "status": 100,
                    "statustext": STATUS_TEXT[100]}
        return {"messageid": sent.messageid, "status": sent.status, "statustext": STATUS_TEXT[sent.status]}

    def _status_local(self, params: _Params) -> Json:
        localids = params.listed("localid")
        if len(localids) > MAX_IDS:
            raise _ApiError(414)
        entries = []
        for localid in localids:
            matches = self._by_localid.get(localid, [])
            entries += [{"messageid": s.messageid, "localid": localid, "status": s.status,
                         "statustext": STATUS_TEXT[s.status]} for s in matches]
            if not matches:
                entries.append({"messageid": 0, "localid": localid, "status": 100, "statustext": STATUS_TEXT[100]})
        return {"entries": entries}

    # --- the inbox ----------------------------------------------------------------------------------

    def _receive(self, params: _Params) -> Json:
        line = self._line(params)
        if _wants_unread(params.required("isread")):
            taken = [m for m in self.inbox if m.receptor == line and not m.read][:RECEIVE_LIMIT]
            for message in taken:
                message.read = True
        else:
            taken = [m for m in self.inbox if m.receptor == line and m.read][-RECEIVE_LIMIT:]
        return {"entries": [message.entry() for message in taken]}

    def _inbox_paged(self, params: _Params) -> Json:
        line = self._line(params)
        isread = params.optional("isread")
        read = None if isread is None else not _wants_unread(isread)  # None: read and unread alike
        start, end = _window(params)
        page = params.optional("pagenumber") or "1"
        if not page.isdigit() or int(page) < 1:
            raise _ApiError(400)
        number, size = int(page), self.page_size
        matching = [m for m in self.inbox if m.receptor == line and start <= m.date <= end
                    and (read is None or m.read == read)]
        chunk = matching[(number - 1) * size:number * size]
        total = len(matching)
        if read is False:
            for message in chunk:
                message.read = True
            total -= len(chunk)  # what is left outside this page, as Kavenegar counts unread pages
        metadata = {"totalcount": total, "currentpage": number, "totalpages": math.ceil(total / size),
                    "pagesize": size}
        return {"entries": [message.entry() for message in chunk], "metadata": metadata}

    def _line(self, params: _Params) -> str:
        line = params.required("linenumber")
        if line not in self.lines:
            raise _ApiError(412)
        return line

    def _account_info(self, _: _Params) -> Json:
        return {"entries": {"remaincredit": self.credit, "expiredate": self.expiredate, "type": "Master"}}

    # --- callbacks to the gateway -------------------------------------------------------------------

    def _push(self, kind: Literal["inbound", "delivery"], url: str, shape: Shape, fields: Json) -> None:
        task = asyncio.get_running_loop().create_task(self._push_until_taken(kind, url, shape, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_until_taken(self, kind: Literal["inbound", "delivery"], url: str, shape: Shape,
                                fields: Json) -> None:
        """Calls the gateway until it answers 200, `callback_attempts` times at most, as a provider does."""
        for attempt in range(1, self.callback_attempts + 1):
            status = await self._call_gateway(url, shape, fields)
            self.callbacks.append(Callback(kind, fields, status))
            self._changed.fire()
            if status == 200:
                return
            log.info("the %s callback was answered %s (attempt %d of %d)", kind, status or "by nothing",
                     attempt, self.callback_attempts)
            if attempt < self.callback_attempts:
                await asyncio.sleep(self.callback_retry_delay)

    async def _call_gateway(self, url: str, shape: Shape, fields: Json) -> int | None:
        try:
            async with asyncio.timeout(self.callback_timeout):
                return await _http_call(url, shape, fields)
        except (OSError, TimeoutError, ValueError):
            return None


# --- parameters ------------------------------------------------------------------------------------

def _localids(params: _Params, count: int) -> list[str | None]:
    given = params.optional("localid")
    if given is None:
        return [None] * count
    localids = [item.strip() or None for item in given.split(",")]
    if len(localids) != count:
        raise _ApiError(419)
    return localids


def _send_date(params: _Params) -> int:
    """When the SMS goes out: now, unless `date` names a later unix time."""
    now, date = int(time.time()), params.unix("date")
    if not date:
        return now
    if date < now - 60:
        raise _ApiError(417)
    return max(date, now)


def _wants_unread(isread: str) -> bool:
    if isread not in ("0", "1"):
        raise _ApiError(400)
    return isread == "0"


def _window(params: _Params) -> tuple[int, int]:
    """The paged inbox's [startdate, enddate]: the last two days by default, never more than two days."""
    end = params.unix("enddate") or int(time.time())
    start = params.unix("startdate") or end - INBOX_WINDOW
    if not 0 <= end - start <= INBOX_WINDOW:
        raise _ApiError(417)
    return start, end


# --- HTTP/1.1, both ways ---------------------------------------------------------------------------

async def _read_request(reader: asyncio.StreamReader) -> _HttpRequest | None:
    """The next request on a keep-alive connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as closed:
        if closed.partial.strip():
            raise _Malformed(400) from None
        return None
    except asyncio.LimitOverrunError:
        raise _Malformed(414) from None
    request_line, *lines = head.decode("latin-1").strip("\r\n").split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _Malformed(400) from None
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:  # requests sends form bodies with a Content-Length
        raise _Malformed(400)
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise _Malformed(400 if not length.isdigit() else 414)
    body = await reader.readexactly(int(length))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    path, _, query = target.partition("?")
    return _HttpRequest(method.upper(), path, query, headers, body, keep_alive)


async def _http_call(url: str, shape: Shape, fields: Json) -> int:
    """One request to `url` carrying `fields` as `shape` says; the HTTP status of the answer."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError("the callback URL names no host")
    secure = parts.scheme == "https"
    form = urllib.parse.urlencode(fields)
    query, body, kind = parts.query, b"", None
    if shape == "get-query":
        query = f"{query}&{form}" if query else form
    elif shape == "post-form":
        body, kind = form.encode(), _FORM
    else:
        body, kind = json.dumps(fields, ensure_ascii=False).encode(), "application/json"
    target = (parts.path or "/") + (f"?{query}" if query else "")
    head = [f"{'GET' if shape == 'get-query' else 'POST'} {target} HTTP/1.1", f"Host: {parts.netloc}",
            "Connection: close"]
    if shape != "get-query":
        head += [f"Content-Type: {kind}", f"Content-Length: {len(body)}"]
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.open_connection(parts.hostname, port,
                                                   ssl=ssl.create_default_context() if secure else None)
    try:
        writer.write("\r\n".join([*head, "", ""]).encode("latin-1") + body)
        await writer.drain()
        status_line = (await reader.readline()).split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ValueError("not an HTTP answer")
        return int(status_line[1])
    finally:
        writer.close()
