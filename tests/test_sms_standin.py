"""The Kavenegar stand-in, driven by the real `kavenegar` package (requests, in a thread) over HTTPS."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import kavenegar
import pytest
import requests
import uvicorn
from kavenegar import APIException, HTTPException, KavenegarAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.sms.standin import PRICE_PER_PART, StandInKavenegar, sms_parts
from gateway.http import EmbeddedServer, listen_socket

KEY = "6A4B7C2D-standin-secret-key"
LINE = "10004346"
SARA, REZA = "09121234567", "+989351234567"


@pytest.fixture
async def kavenegar_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandInKavenegar]:
    async with StandInKavenegar(KEY, line=LINE) as standin:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", standin.ca_path)  # how requests is told to trust the CA
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield standin


@pytest.fixture
def api(kavenegar_api: StandInKavenegar) -> KavenegarAPI:
    client = KavenegarAPI(KEY)
    client.host = kavenegar_api.host
    return client


async def call(method: Callable[..., Any], *args: Any) -> Any:
    """The package is synchronous: each call runs in a thread while the stand-in serves on this loop."""
    return await asyncio.to_thread(method, *args)


def said(error: APIException) -> str:
    """The package raises APIException(bytes): the code and Kavenegar's message, UTF-8 encoded."""
    return error.args[0].decode()


def with_client_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """kavenegar 1.1.2 (the newest on PyPI) passes no timeout to requests.post; give it one."""
    monkeypatch.setattr(kavenegar.requests, "post", functools.partial(requests.post, timeout=seconds))


def client_context(standin: StandInKavenegar) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=standin.ca_path)


# --- a receiver for the callbacks the stand-in pushes ----------------------------------------------

@dataclass
class Received:
    method: str
    content_type: str
    fields: dict[str, Any]


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # statuses to answer, in turn; 200 once used up
    calls: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, n: int) -> list[Received]:
        async with asyncio.timeout(5):
            while len(self.calls) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.calls


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sock = listen_socket("127.0.0.1", 0)
    box = Receiver(f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/s3cret")

    async def hook(request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        body = await request.body()
        if kind.startswith("application/json"):
            fields = json.loads(body)
        else:
            fields = dict(urllib.parse.parse_qsl(body.decode() if body else request.url.query))
        box.calls.append(Received(request.method, kind, fields))
        box.arrived.set()
        return Response(status_code=box.answers.pop(0) if box.answers else 200)

    config = uvicorn.Config(Starlette(routes=[Route("/hooks/s3cret", hook, methods=["GET", "POST"])]),
                            log_config=None, access_log=False, lifespan="off", ws="none")
    server = EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    yield box
    server.should_exit = True
    await serving


# --- sending ---------------------------------------------------------------------------------------

async def test_send_answers_one_entry_shaped_as_kavenegar_documents(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    [entry] = await call(api.sms_send, {"receptor": SARA, "message": "Your ticket #12 is answered", "sender": LINE})

    assert set(entry) == {"messageid", "message", "status", "statustext", "sender", "receptor", "date", "cost"}
    assert (entry["status"], entry["statustext"]) == (1, "در صف ارسال")
    assert (entry["sender"], entry["receptor"], entry["cost"]) == (LINE, SARA, PRICE_PER_PART)
    assert isinstance(entry["messageid"], int) and abs(entry["date"] - time.time()) < 5
    [sent] = await kavenegar_api.wait_sent(1)
    assert (sent.messageid, sent.message, sent.parts, sent.localid) == (
        entry["messageid"], "Your ticket #12 is answered", 1, None)


async def test_persian_text_is_billed_in_ucs2_parts(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    one, two = "س" * 70, "س" * 71
    entries = await call(api.sms_send, {"receptor": SARA, "message": one})
    entries += await call(api.sms_send, {"receptor": SARA, "message": two})
    assert [e["cost"] for e in entries] == [PRICE_PER_PART, 2 * PRICE_PER_PART]
    assert [s.parts for s in kavenegar_api.sent] == [1, 2]


@pytest.mark.parametrize(("text", "parts"), [
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("€" * 80, 1), ("€" * 81, 2),  # an extension character takes two septets
    ("a" * 152 + "€" + "a" * 152, 3),  # 306 septets, but the escape pair is not split across parts
    ("س" * 66 + "😀" + "س" * 66, 3),  # 134 units, but the surrogate pair is not split either
    ("س" * 70, 1), ("س" * 71, 2), ("س" * 134, 2), ("س" * 135, 3),
    ("hello é ü", 1), ("hello ê", 1),  # ê is not GSM-7: the whole text goes as UCS-2, still one part
    ("😀" * 35, 1), ("😀" * 36, 2),  # outside the BMP: two UTF-16 units each
])
def test_parts_are_counted_as_the_network_does(text: str, parts: int) -> None:
    assert sms_parts(text) == parts


async def test_several_receptors_get_one_message_each(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    entries = await call(api.sms_send, {"receptor": f"{SARA},{REZA}", "message": "سلام"})
    assert [e["receptor"] for e in entries] == [SARA, REZA]
    assert len({e["messageid"] for e in entries}) == 2
    assert [s.receptor for s in kavenegar_api.sent] == [SARA, REZA]


async def test_a_localid_already_used_for_the_receptor_sends_nothing_again(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    [first] = await call(api.sms_send, {"receptor": SARA, "message": "one", "localid": "reply-7"})
    [again] = await call(api.sms_send, {"receptor": "+989121234567", "message": "one", "localid": "reply-7"})
    [other] = await call(api.sms_send, {"receptor": REZA, "message": "one", "localid": "reply-7"})

    assert again["messageid"] == first["messageid"] and again["status"] == 10  # the earlier one, as it is now
    assert other["messageid"] != first["messageid"]
    assert [(s.receptor, s.localid) for s in kavenegar_api.sent] == [(SARA, "reply-7"), (REZA, "reply-7")]


async def test_a_scheduled_send_waits_in_status_2(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    later = int(time.time()) + 3600
    [entry] = await call(api.sms_send, {"receptor": SARA, "message": "later", "date": later})
    assert (entry["status"], entry["date"]) == (2, later)
    [status] = await call(api.sms_status, {"messageid": entry["messageid"]})
    assert status["status"] == 2


# --- status ----------------------------------------------------------------------------------------

async def test_status_follows_the_network(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.set_outcome(REZA, 14)
    entries = await call(api.sms_send, {"receptor": f"{SARA},{REZA}", "message": "hi"})
    ids = ",".join(str(e["messageid"]) for e in entries)

    statuses = await call(api.sms_status, {"messageid": f"{ids},12345,oops"})

    assert [(s["status"], s["statustext"]) for s in statuses] == [
        (10, "رسیده به گیرنده"), (14, "بلاک شده، عدم تمایل گیرنده به دریافت پیامک"),
        (100, "شناسه پیامک نامعتبر است"), (100, "شناسه پیامک نامعتبر است")]
    assert [s["messageid"] for s in statuses][2:] == [12345, 0]


async def test_status_by_localid_known_and_unknown(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    [sent] = await call(api.sms_send, {"receptor": SARA, "message": "hi", "localid": "outbox-41"})
    entries = await call(api.sms_statuslocalmessageid, {"localid": "outbox-41,never-sent"})
    assert entries == [
        {"messageid": sent["messageid"], "localid": "outbox-41", "status": 10, "statustext": "رسیده به گیرنده"},
        {"messageid": 0, "localid": "never-sent", "status": 100, "statustext": "شناسه پیامک نامعتبر است"},
    ]


# --- the inbox -------------------------------------------------------------------------------------

async def test_receive_hands_out_unread_messages_once_and_marks_them_read(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    first = kavenegar_api.customer_sms(SARA, "سفارشم نرسیده")
    second = kavenegar_api.customer_sms(REZA, "hello")

    unread = await call(api.sms_receive, {"linenumber": LINE, "isread": 0})

    assert [(m["messageid"], m["sender"], m["receptor"], m["message"]) for m in unread] == [
        (first, SARA, LINE, "سفارشم نرسیده"), (second, REZA, LINE, "hello")]
    assert await call(api.sms_receive, {"linenumber": LINE, "isread": 0}) == []  # gone: a lost answer loses them
    assert [m["messageid"] for m in await call(api.sms_receive, {"linenumber": LINE, "isread": 1})] == [
        first, second]
    assert all(m.read for m in kavenegar_api.inbox)


async def test_receive_gives_at_most_100_at_a_time(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    for n in range(105):
        kavenegar_api.customer_sms(SARA, f"message {n}")
    assert len(await call(api.sms_receive, {"linenumber": LINE, "isread": 0})) == 100
    rest = await call(api.sms_receive, {"linenumber": LINE, "isread": 0})
    assert [m["message"] for m in rest] == [f"message {n}" for n in range(100, 105)]


async def test_the_paged_inbox_lists_read_messages_page_by_page(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.page_size = 2
    ids = [kavenegar_api.customer_sms(SARA, f"m{n}") for n in range(5)]
    await call(api.sms_receive, {"linenumber": LINE, "isread": 0})

    pages = [await call(api._request, "sms", "inboxpaged", {"linenumber": LINE, "isread": 1, "pagenumber": page})
             for page in (1, 2, 3, 4)]  # the package has no method for it; _request builds the same call

    assert [[m["messageid"] for m in page] for page in pages] == [ids[:2], ids[2:4], ids[4:], []]
    # The package keeps `entries` only; the metadata Kavenegar sends beside it is seen on the wire.
    async with httpx.AsyncClient(verify=client_context(kavenegar_api)) as client:
        answer = await client.get(f"https://{kavenegar_api.host}/v1/{KEY}/sms/inboxpaged.json",
                                  params={"linenumber": LINE, "isread": 1})
    assert answer.json()["metadata"] == {"totalcount": 5, "currentpage": 1, "totalpages": 3, "pagesize": 2}


async def test_the_paged_inbox_marks_an_unread_page_read(kavenegar_api: StandInKavenegar) -> None:
    kavenegar_api.page_size = 2
    for n in range(3):
        kavenegar_api.customer_sms(SARA, f"m{n}")
    url = f"https://{kavenegar_api.host}/v1/{KEY}/sms/inboxpaged.json"
    async with httpx.AsyncClient(verify=client_context(kavenegar_api)) as client:
        first = (await client.post(url, data={"linenumber": LINE, "isread": 0})).json()
        second = (await client.post(url, data={"linenumber": LINE, "isread": 0})).json()
    assert [m["message"] for m in first["entries"]] == ["m0", "m1"]
    assert first["metadata"]["totalcount"] == 1  # left outside the page: page 1 again gives the rest
    assert [m["message"] for m in second["entries"]] == ["m2"] and second["metadata"]["totalcount"] == 0


async def test_account_info_for_a_health_check(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    before = await call(api.account_info)
    await call(api.sms_send, {"receptor": SARA, "message": "x" * 200})
    after = await call(api.account_info)
    assert before["type"] == "Master" and before["expiredate"] > time.time()
    assert before["remaincredit"] - after["remaincredit"] == 2 * PRICE_PER_PART


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "code"), [
    ({"message": "x"}, 400),
    ({"receptor": " ", "message": "x"}, 406),
    ({"receptor": [SARA, REZA], "message": "x"}, 400),  # a list goes as a repeated field: refused
    ({"receptor": "12345", "message": "x"}, 411),
    ({"receptor": SARA, "message": "x", "sender": "30001234"}, 412),
    ({"receptor": SARA, "message": ""}, 413),
    ({"receptor": SARA, "message": "x" * 1801}, 413),
    ({"receptor": ",".join([SARA] * 201), "message": "x"}, 414),
    ({"receptor": SARA, "message": "x", "date": "tomorrow"}, 417),
    ({"receptor": SARA, "message": "x", "date": 1000}, 417),
    ({"receptor": f"{SARA},{REZA}", "message": "x", "localid": "only-one"}, 419),
])
async def test_a_bad_send_raises_api_exception_with_the_code(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, params: dict[str, Any], code: int) -> None:
    with pytest.raises(APIException, match=rf"APIException\[{code}\]"):
        await call(api.sms_send, params)
    assert kavenegar_api.sent == []


@pytest.mark.parametrize(("scope", "method", "params", "code"), [
    ("sms", "nosuchmethod", {}, 404),
    ("sms", "receive", {"isread": 0}, 400),
    ("sms", "receive", {"linenumber": LINE, "isread": 2}, 400),
    ("sms", "receive", {"linenumber": "2000", "isread": 0}, 412),
    ("sms", "inboxpaged", {"linenumber": LINE, "startdate": 1_700_000_000, "enddate": 1_700_300_000}, 417),
    ("sms", "status", {"messageid": ",".join(["1"] * 501)}, 414),
])
async def test_other_bad_calls(api: KavenegarAPI, scope: str, method: str, params: dict[str, Any],
                               code: int) -> None:
    with pytest.raises(APIException, match=rf"APIException\[{code}\]"):
        await call(api._request, scope, method, params)


async def test_credit_runs_out_with_418(monkeypatch: pytest.MonkeyPatch) -> None:
    async with StandInKavenegar(KEY, credit=PRICE_PER_PART) as standin:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", standin.ca_path)
        api = KavenegarAPI(KEY)
        api.host = standin.host
        await call(api.sms_send, {"receptor": SARA, "message": "one"})
        with pytest.raises(APIException, match=r"APIException\[418\]") as refused:
            await call(api.sms_send, {"receptor": SARA, "message": "two"})
    assert said(refused.value) == "APIException[418] اعتبار شما کافی نمی‌باشد"
    assert [s.message for s in standin.sent] == ["one"]


@pytest.mark.parametrize("code", [401, 402, 407, 409, 411, 418, 422, 451, 500, 501])
async def test_an_injected_error_is_raised_and_does_nothing(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, code: int) -> None:
    kavenegar_api.fail_next(code)
    with pytest.raises(APIException, match=rf"APIException\[{code}\]") as refused:
        await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    assert KEY not in str(refused.value)
    assert kavenegar_api.sent == []
    await call(api.sms_send, {"receptor": SARA, "message": "hi"})  # the fault was for the next call only
    assert len(kavenegar_api.sent) == 1


async def test_a_fault_waits_for_its_method(kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.fail_next(409, method="status", times=2)
    await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    for _ in range(2):
        with pytest.raises(APIException, match=r"APIException\[409\]"):
            await call(api.sms_status, {"messageid": kavenegar_api.sent[0].messageid})
    assert (await call(api.sms_status, {"messageid": kavenegar_api.sent[0].messageid}))[0]["status"] == 10


async def test_a_wrong_api_key_is_refused_with_403(kavenegar_api: StandInKavenegar) -> None:
    other = KavenegarAPI("not-the-key")
    other.host = kavenegar_api.host
    with pytest.raises(APIException, match=r"APIException\[403\]") as refused:
        await call(other.sms_send, {"receptor": SARA, "message": "hi"})
    assert "API-Key" in said(refused.value) and "not-the-key" not in str(refused.value)
    assert kavenegar_api.sent == [] and kavenegar_api.requests == []


async def test_the_http_status_is_the_return_status(kavenegar_api: StandInKavenegar) -> None:
    async with httpx.AsyncClient(verify=client_context(kavenegar_api)) as client:
        refused = await client.get(f"https://{kavenegar_api.host}/v1/wrong/sms/status.json", params={"messageid": 1})
        found = await client.get(f"https://{kavenegar_api.host}/v1/{KEY}/sms/status.json", params={"messageid": 1})
        missing = await client.get(f"https://{kavenegar_api.host}/v1/{KEY}/account/infos.json")
    assert refused.status_code == 403 and refused.json()["return"]["status"] == 403
    assert found.status_code == 200 and found.json()["entries"][0]["status"] == 100
    assert missing.status_code == 404 and missing.json() == {
        "return": {"status": 404, "message": "متد نامشخص است"}, "entries": None}
    assert kavenegar_api.connections == 1  # keep-alive: three calls, one connection


# --- hangs and drops -------------------------------------------------------------------------------

async def test_the_package_has_no_timeout_and_waits_out_a_hang(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.hang_next(0.5)
    started = time.monotonic()
    [entry] = await call(api.sms_send, {"receptor": SARA, "message": "slow"})
    assert time.monotonic() - started >= 0.5
    assert entry["receptor"] == SARA


async def test_a_send_the_client_gave_up_on_still_went_out(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    with_client_timeout(monkeypatch, 0.3)
    kavenegar_api.hang_next(30)
    with pytest.raises(HTTPException, match="Read timed out") as timed_out:
        await call(api.sms_send, {"receptor": SARA, "message": "lost answer", "localid": "outbox-9"})
    assert KEY not in str(timed_out.value)

    [status] = await call(api.sms_statuslocalmessageid, {"localid": "outbox-9"})  # how the gateway finds out
    [sent] = kavenegar_api.sent
    assert (status["messageid"], status["status"]) == (sent.messageid, 10)


async def test_a_hang_without_effect_sent_nothing(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    with_client_timeout(monkeypatch, 0.3)
    kavenegar_api.hang_next(30, after_effect=False)
    with pytest.raises(HTTPException, match="Read timed out"):
        await call(api.sms_send, {"receptor": SARA, "message": "never", "localid": "outbox-10"})
    [status] = await call(api.sms_statuslocalmessageid, {"localid": "outbox-10"})
    assert status["status"] == 100 and kavenegar_api.sent == []


async def test_a_dropped_connection_raises_http_exception(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.drop_next()
    with pytest.raises(HTTPException, match="Connection aborted") as dropped:
        await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    assert KEY not in str(dropped.value)
    assert kavenegar_api.sent == []


async def test_resending_with_the_same_localid_after_a_lost_answer_sends_once(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI) -> None:
    kavenegar_api.drop_next(after_effect=True)
    with pytest.raises(HTTPException):
        await call(api.sms_send, {"receptor": SARA, "message": "hi", "localid": "outbox-11"})
    [entry] = await call(api.sms_send, {"receptor": SARA, "message": "hi", "localid": "outbox-11"})
    [sent] = kavenegar_api.sent
    assert entry["messageid"] == sent.messageid


# --- the API key stays out of sight ----------------------------------------------------------------

async def test_the_standin_never_logs_the_api_key(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="channels.sms.standin")
    await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    kavenegar_api.fail_next(418)
    with pytest.raises(APIException):
        await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    kavenegar_api.drop_next()
    with pytest.raises(HTTPException):
        await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    assert "/v1/***/sms/send.json" in caplog.text
    assert KEY not in caplog.text
    assert all(KEY not in json.dumps(r.params) for r in kavenegar_api.requests)


async def test_the_package_puts_the_api_key_in_connection_errors_and_its_repr(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Facts about kavenegar 1.1.2 the gateway must redact: urllib3 names the URL, key and all."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nobody = KavenegarAPI(KEY)
    nobody.host = f"127.0.0.1:{port}"
    with pytest.raises(HTTPException, match="Max retries exceeded") as refused:
        await call(nobody.account_info)
    assert f"/v1/{KEY}/account/info.json" in str(refused.value)

    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the stand-in's certificate is now untrusted
    with pytest.raises(HTTPException, match="SSLError") as untrusted:
        await call(api.account_info)
    assert KEY in str(untrusted.value)
    assert KEY in repr(api) and KEY in str(api)


# --- callbacks to the gateway ----------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "method", "content_type"), [
    ("get-query", "GET", ""),
    ("post-form", "POST", "application/x-www-form-urlencoded"),
    ("post-json", "POST", "application/json"),
])
async def test_an_arriving_sms_is_pushed_to_the_callback(
        kavenegar_api: StandInKavenegar, receiver: Receiver, shape: Any, method: str, content_type: str) -> None:
    kavenegar_api.callback_url, kavenegar_api.callback_shape = receiver.url, shape
    messageid = kavenegar_api.customer_sms(SARA, "سلام، پیگیری سفارش ۱۲")

    [got] = await receiver.wait(1)

    assert (got.method, got.content_type) == (method, content_type)
    assert {k: str(v) for k, v in got.fields.items() if k != "date"} == {
        "from": SARA, "to": LINE, "message": "سلام، پیگیری سفارش ۱۲", "messageid": str(messageid)}
    assert abs(int(got.fields["date"]) - time.time()) < 5
    assert [c.status for c in await kavenegar_api.wait_callbacks(1)] == [200]


async def test_a_callback_is_retried_until_answered_200(
        kavenegar_api: StandInKavenegar, receiver: Receiver) -> None:
    receiver.answers = [500, 503]
    kavenegar_api.callback_url, kavenegar_api.callback_retry_delay = receiver.url, 0.01
    kavenegar_api.customer_sms(SARA, "hi")
    attempts = await kavenegar_api.wait_callbacks(3)
    assert [a.status for a in attempts] == [500, 503, 200]
    assert len({json.dumps(c.fields) for c in await receiver.wait(3)}) == 1  # the same call each time


async def test_an_unreachable_callback_is_given_up(kavenegar_api: StandInKavenegar) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        kavenegar_api.callback_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    kavenegar_api.callback_attempts, kavenegar_api.callback_retry_delay = 2, 0.01
    kavenegar_api.customer_sms(SARA, "hi")
    assert [a.status for a in await kavenegar_api.wait_callbacks(2)] == [None, None]
    assert len(kavenegar_api.inbox) == 1 and not kavenegar_api.inbox[0].read  # still there for receive


async def test_delivery_reports_are_posted(
        kavenegar_api: StandInKavenegar, api: KavenegarAPI, receiver: Receiver) -> None:
    kavenegar_api.delivery_url = receiver.url
    kavenegar_api.set_outcome(REZA, 11)
    entries = await call(api.sms_send, {"receptor": f"{SARA},{REZA}", "message": "hi"})

    reports = await receiver.wait(2)

    assert {r.method for r in reports} == {"POST"}
    assert sorted((r.fields["messageid"], r.fields["status"]) for r in reports) == [
        (str(entries[0]["messageid"]), "10"), (str(entries[1]["messageid"]), "11")]
    assert all(r.fields["statustext"] for r in reports)


async def test_delivery_can_take_a_while(api: KavenegarAPI, kavenegar_api: StandInKavenegar,
                                         receiver: Receiver) -> None:
    kavenegar_api.deliver_after, kavenegar_api.delivery_url = 0.2, receiver.url
    [entry] = await call(api.sms_send, {"receptor": SARA, "message": "hi"})
    assert (await call(api.sms_status, {"messageid": entry["messageid"]}))[0]["status"] == 1
    [report] = await receiver.wait(1)
    assert report.fields["status"] == "10"
    assert (await call(api.sms_status, {"messageid": entry["messageid"]}))[0]["status"] == 10
