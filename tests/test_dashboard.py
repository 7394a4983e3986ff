"""The managers' dashboard: signing in, the live queue's counts on both backends, a ticket's story with
hostile text shown literally, Persian and English pages, the SVG charts on their own, and the pages as
headless Chromium renders them (driven over the DevTools protocol on a pipe, stdlib only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from channels.loopback import LoopbackChannel
from gateway import charts
from gateway.compose import build_runtime
from gateway.dashboard import (
    LOGIN_COOKIE, SESSION_COOKIE, SOON, Locale, Sessions, parse_day, read_queue, report_charts,
)
from gateway.domain import ChannelKind, ticket_ref
from gateway.events import event_row
from gateway.jalali import TEHRAN, jalali_date
from gateway.report_model import BACKLOG_BUCKETS, RESPONSE_BUCKETS, Day, Durations, Figures, Report
from gateway.schema import agents, customers, departments, events, messages, tickets
from gateway.settings import HttpSettings, Secret
from tests.conftest import Gateway, RecordingDesk, make_settings

TOKEN = "s3cret-admin-token-for-tests"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).with_name("artifacts")
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold?</b> & «سلام»'
SVG = "{http://www.w3.org/2000/svg}"


# --- Charts, on their own ---------------------------------------------------------------------------

def _svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # well-formed XML, or this raises


def _bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_bar_heights_are_proportional_to_the_values() -> None:
    root = _svg(charts.bars("c", title="t", desc="d", categories=["a", "b", "c", "d"], values=[1, 2, 4, 0],
                            series_name="n", x_label="x", y_label="y"))
    rects = _bars(root)
    assert [float(r.get("data-value")) for r in rects] == [1, 2, 4]  # a zero draws nothing
    heights = [float(r.get("height")) for r in rects]
    assert heights[1] == pytest.approx(2 * heights[0], abs=0.02)
    assert heights[2] == pytest.approx(4 * heights[0], abs=0.02)
    bottoms = {round(float(r.get("y")) + float(r.get("height")), 1) for r in rects}
    assert len(bottoms) == 1  # every bar stands on the axis
    lefts = [float(r.get("x")) for r in rects]
    assert lefts == sorted(lefts)  # left to right


def test_stacked_segments_sit_on_each_other_in_series_order() -> None:
    root = _svg(charts.stacked_bars(
        "v", title="t", desc="d", categories=["mon", "tue"],
        series=[charts.Series("email", [3, 1]), charts.Series("sms", [1, 0]), charts.Series("telegram", [2, 5])],
        x_label="x", y_label="y"))
    rects = _bars(root)
    monday = [r for r in rects if float(r.get("x")) < 360]
    assert [r.get("data-series") for r in monday] == ["email", "sms", "telegram"]
    for lower, upper in zip(monday, monday[1:]):
        assert float(upper.get("y")) + float(upper.get("height")) == pytest.approx(float(lower.get("y")), abs=0.02)
    unit = float(monday[0].get("height")) / 3
    tuesday_total = sum(float(r.get("height")) for r in rects if r not in monday)
    assert tuesday_total == pytest.approx(6 * unit, abs=0.05)
    legend = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "legend" for t in g.iter(f"{SVG}text")]
    assert legend == ["email", "sms", "telegram"]


def test_right_to_left_charts_run_from_the_right() -> None:
    kwargs: dict[str, Any] = dict(title="t", desc="d", categories=["1", "2", "3"], values=[1, 1, 1],
                                  series_name="n", x_label="x", y_label="y")
    ltr = [float(r.get("x")) for r in _bars(_svg(charts.bars("a", **kwargs)))]
    rtl_root = _svg(charts.bars("b", rtl=True, **kwargs))
    rtl = [float(r.get("x")) for r in _bars(rtl_root)]
    assert ltr == sorted(ltr) and rtl == sorted(rtl, reverse=True)
    assert rtl_root.get("direction") == "rtl"
    axis = [line for line in rtl_root.iter(f"{SVG}line") if line.get("class") == "axis"][0]
    assert float(axis.get("x1")) > charts.WIDTH / 2  # the value axis on the right


def test_every_label_is_escaped_and_the_chart_has_a_text_alternative() -> None:
    evil = '</text><script>alert("x")</script>&'
    markup = charts.stacked_bars("chart 1", title=f"Title {evil}", desc=f"Desc {evil}", categories=[evil],
                                 series=[charts.Series(evil, [2])], x_label=evil, y_label=evil, number=lambda v: evil)
    assert "<script>" not in markup
    root = _svg(markup)
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter("script"))
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    found = {el.get("id"): el.text for el in root.iter() if el.get("id")}
    assert found[title_id] == f"Title {evil}" and found[desc_id] == f"Desc {evil}"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count(evil) >= 4  # legend, category, both axis labels (and the ticks)
    assert re.fullmatch(r"[A-Za-z][\w-]*", root.get("id"))


def test_a_line_joins_the_days_that_have_a_value() -> None:
    root = _svg(charts.line("s", title="t", desc="d", categories=list("abcde"), values=[None, 4, None, 2.5, 5],
                            series_name="avg", x_label="x", y_label="y", low=1, high=5, step=1))
    points = [c for c in root.iter(f"{SVG}circle")]
    assert [float(c.get("data-value")) for c in points] == [4, 2.5, 5]
    ys = [float(c.get("cy")) for c in points]
    assert ys[2] < ys[0] < ys[1]  # higher scores sit higher
    top_to_bottom = (ys[1] - ys[2]) / (5 - 2.5)
    assert (ys[1] - ys[0]) == pytest.approx(top_to_bottom * 1.5, abs=0.05)
    (polyline,) = root.iter(f"{SVG}polyline")
    assert len(polyline.get("points").split()) == 3
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
    assert ticks == ["1", "2", "3", "4", "5"]


def test_charts_of_nothing_and_bad_input() -> None:
    root = _svg(charts.bars("z", title="t", desc="d", categories=["a", "b"], values=[0, 0], series_name="n",
                            x_label="x", y_label="y"))
    assert _bars(root) == []
    _svg(charts.line("e", title="t", desc="d", categories=[], values=[], series_name="n", x_label="x", y_label="y"))
    with pytest.raises(ValueError, match="2 values for 3 categories"):
        charts.bars("x", title="t", desc="d", categories=["a", "b", "c"], values=[1, 2], series_name="n",
                    x_label="x", y_label="y")
    with pytest.raises(ValueError, match="negative"):
        charts.bars("x", title="t", desc="d", categories=["a"], values=[-1], series_name="n", x_label="x", y_label="y")


@pytest.mark.parametrize(("largest", "integer", "scale"), [
    (0, True, (1, 1)), (1, True, (1, 1)), (7, True, (8, 2)), (10, True, (10, 5)), (123, True, (150, 50)),
    (0.3, False, (0.3, 0.1)), (3.7, False, (4, 1)), (3.7, True, (4, 1)),
])
def test_nice_scale(largest: float, integer: bool, scale: tuple[float, float]) -> None:
    got = charts.nice_scale(largest, integer=integer)
    assert got.top == pytest.approx(scale[0]) and got.step == pytest.approx(scale[1])
    assert got.top >= largest


# --- Sessions, language and dates -------------------------------------------------------------------

def test_sessions_are_signed_expire_and_end() -> None:
    sessions, now = Sessions(Secret(TOKEN)), 1_800_000_000.0
    cookie = sessions.issue(now)
    assert TOKEN not in cookie
    session = sessions.check(cookie, now + 60)
    assert session is not None
    assert sessions.check(cookie, now + sessions.lifetime + 1) is None  # expired
    version, expiry, sid, signature = cookie.split(".")
    assert sessions.check(f"{version}.{int(expiry) + 10**6}.{sid}.{signature}", now) is None  # extended by hand
    assert sessions.check(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1], now) is None
    assert Sessions(Secret("another token")).check(cookie, now) is None
    assert sessions.form_ok(session, sessions.form_token(session))
    assert not sessions.form_ok(session, "") and not sessions.form_ok(session, Sessions(Secret("x")).form_token(session))
    sessions.end(cookie, now + 120)
    assert sessions.check(cookie, now + 121) is None
    nonce = sessions.login_nonce(now)
    assert sessions.login_ok(nonce, sessions.login_token(nonce), now)
    assert not sessions.login_ok(nonce, sessions.login_token(nonce), now + 7200)
    assert not sessions.login_ok(None, sessions.login_token(nonce), now)
    assert not sessions.login_ok(sessions.login_nonce(now), sessions.login_token(nonce), now)


def test_locale_speaks_persian_and_english() -> None:
    moment = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)  # 13:30 in Tehran, 1405/09/02
    fa, en = Locale("fa", TEHRAN, moment), Locale("en", TEHRAN, moment)
    assert fa.when(moment) == "۱۴۰۵/۰۹/۰۲ ۱۳:۳۰" and en.when(moment) == "2026-11-23 13:30"
    assert fa.num(12345) == "۱۲٬۳۴۵" and en.num(12345) == "12,345"
    assert fa.pct(0.125) == "۱۲٫۵٪" and en.pct(0.125) == "12.5%"
    assert en.duration(2 * 86400 + 4 * 3600 + 5 * 60) == "2d 4h" and en.duration(3725) == "1h 2m"
    assert fa.duration(3725) == "۱ ساعت ۲ دقیقه" and en.duration(20) == "<1m" and en.duration(None) == "—"
    assert fa.duration(20) == "کمتر از ۱ دقیقه"
    assert fa.word("priority", "urgent") == "فوری" and en.word("sla", "overdue") == "Overdue"
    assert fa.dir == "rtl" and en.dir == "ltr"


@pytest.mark.parametrize(("text", "day"), [
    ("2026-11-23", dt.date(2026, 11, 23)), ("1405/09/02", dt.date(2026, 11, 23)),
    ("۱۴۰۵/۰۹/۰۲", dt.date(2026, 11, 23)), (" 1405-9-2 ", dt.date(2026, 11, 23)),
])
def test_report_days_are_read_in_either_calendar(text: str, day: dt.date) -> None:
    assert parse_day(text) == day


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "1405/12/31", "2026/11"])
def test_a_bad_report_day_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_day(text)


# --- A seeded desk ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Desk:
    now: dt.datetime
    ids: dict[str, int]  # ticket name -> id


async def seed(gw: Gateway, now: dt.datetime) -> Desk:
    """Departments, an agent, customers, and tickets in every queue state relative to `now`."""
    h = dt.timedelta(hours=1)
    plan = {
        # name: (department, priority, status, first_response_at, first_response_due, resolution_due)
        "overdue-first": ("billing", "urgent", "new", None, now - 2 * h, now + 20 * h),
        "overdue-resolution": ("billing", "urgent", "open", None, now + h, now - dt.timedelta(minutes=5)),
        "soon-resolution": ("billing", "high", "open", now - 3 * h, now - 2 * h, now + 0.5 * h),
        "on-track": ("tech", "normal", "waiting", now - h, now - 0.5 * h, now + 5 * h),
        "no-sla": ("tech", "low", "open", None, None, None),
        "soon-first": (None, "normal", "new", None, now + dt.timedelta(minutes=10), None),
        "resolved": ("billing", "normal", "resolved", now - h, now - 2 * h, now - h),
        "closed": ("tech", "urgent", "closed", None, now - 9 * h, now - 8 * h),
    }

    def work(conn: sa.Connection) -> Desk:
        dept = {name: conn.execute(sa.insert(departments).returning(departments.c.id), {
            "name": name, "title": title, "created_at": now}).scalar_one()
            for name, title in (("billing", "مالی"), ("tech", None))}
        agent = conn.execute(sa.insert(agents).returning(agents.c.id), {
            "name": "Reza <agent>", "created_at": now}).scalar_one()
        customer = conn.execute(sa.insert(customers).returning(customers.c.id), {
            "name": "سارا <i>Sara</i>", "created_at": now}).scalar_one()
        ids = {}
        for n, (name, (department, priority, status, answered, first_due, resolution_due)) in enumerate(plan.items()):
            ids[name] = conn.execute(sa.insert(tickets).returning(tickets.c.id), {
                "customer_id": customer, "subject": f"ticket {name}", "status": status, "priority": priority,
                "department_id": dept.get(department), "assignee_id": agent if n % 2 else None,
                "channel": "email", "reply_kind": "email", "reply_to": "sara@example.com",
                "created_at": now - (n + 1) * h, "updated_at": now, "first_response_at": answered,
                "first_response_due": first_due, "resolution_due": resolution_due,
                "resolved_at": now - h if status == "resolved" else None, "tags": ["vip"]}).scalar_one()
        return Desk(now, ids)
    return await gw.runtime.db.run_write(work)


async def seed_hostile(gw: Gateway, desk: Desk) -> int:
    """A ticket whose customer writes markup, with a failed reply, a note, an automatic message and events."""
    ticket_id = desk.ids["overdue-first"]
    now = desk.now

    def work(conn: sa.Connection) -> None:
        dept = dict(conn.execute(sa.select(departments.c.name, departments.c.id)).all())
        agent = conn.execute(sa.select(agents.c.id)).scalar_one()
        conn.execute(sa.update(tickets).where(tickets.c.id == ticket_id).values(subject=f"Re: {HOSTILE}"))
        base = {"ticket_id": ticket_id, "channel": "email", "created_at": now, "sender": None, "subject": None,
                "provider_id": None, "agent_id": None, "delivery_error": None, "attempts": 0, "automatic": False}
        conn.execute(sa.insert(messages), [{**base, **m} for m in (
            {"direction": "in", "sender": "email:sara@example.com", "subject": HOSTILE, "text": HOSTILE,
             "delivery_state": "received", "provider_id": "p1"},
            {"direction": "out", "agent_id": agent, "text": "We are on it.", "delivery_state": "failed",
             "delivery_error": "550 <mailbox@example.com> unavailable", "attempts": 3},
            {"direction": "note", "agent_id": agent, "text": "Internal: customer is a VIP <b>",
             "delivery_state": "received"},
            {"direction": "out", "automatic": True, "text": "Your request is T-1001", "delivery_state": "sent"},
        )])
        conn.execute(sa.insert(events), [
            event_row(now, "ticket.routed", ticket_id=ticket_id, data={"department": "billing", "priority": "urgent"}),
            event_row(now, "ticket.department", ticket_id=ticket_id, actor=f"agent:{agent}", field="department_id",
                      old=dept["billing"], new=dept["tech"], data={"reason": "needs <code>"}),
            event_row(now, "sla.breached", ticket_id=ticket_id,
                      data={"kind": "first_response", "due": (now - dt.timedelta(hours=2)).isoformat()}),
            event_row(now, "survey.answered", ticket_id=ticket_id, actor="customer:1", data={"score": 4, "via": "link"}),
        ])
    await gw.runtime.db.run_write(work)
    return ticket_id


async def start_dashboard(start_gateway: Callable[..., Any]) -> Gateway:
    return await start_gateway(http=HttpSettings(enabled=True, port=0, admin_token=Secret(TOKEN)))


def client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.runtime.http_port}", timeout=30)


async def sign_in(http: httpx.AsyncClient, token: str = TOKEN, **extra: str) -> httpx.Response:
    form = await http.get("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return await http.post("/dashboard/login", data={"csrf": csrf, "token": token, **extra})


# --- Signing in -------------------------------------------------------------------------------------

async def test_sign_in_and_out(start_gateway: Callable[..., Any]) -> None:
    gw = await start_dashboard(start_gateway)
    async with client(gw) as http:
        for page in ("/dashboard", "/dashboard/reports", "/dashboard/tickets/T-1001"):
            away = await http.get(page)
            assert away.status_code == 303 and away.headers["location"].startswith("/dashboard/login?next=")
            assert away.headers["cache-control"] == "no-store"
        form = await http.get("/dashboard/login")
        assert form.status_code == 200 and form.headers["cache-control"] == "no-store"
        assert 'type="password"' in form.text and LOGIN_COOKIE in form.headers["set-cookie"]

        wrong = await sign_in(http, "not the token")
        assert wrong.status_code == 401 and "توکن درست نیست" in wrong.text and 'type="password"' in wrong.text
        assert SESSION_COOKIE not in http.cookies

        forged = await http.post("/dashboard/login", data={"csrf": "made-up", "token": TOKEN})
        assert forged.status_code == 400 and SESSION_COOKIE not in http.cookies

        right = await sign_in(http, next="/dashboard/reports?since=2026-01-01")
        assert right.status_code == 303 and right.headers["location"] == "/dashboard/reports?since=2026-01-01"
        set_cookie = [v for k, v in right.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE)][0]
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie.replace("Strict", "strict")
        assert "Path=/dashboard" in set_cookie and "Max-Age=" in set_cookie
        session = http.cookies[SESSION_COOKIE]
        assert TOKEN not in session and session.count(".") == 3

        page = await http.get("/dashboard")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)

        assert (await http.post("/dashboard/logout", data={"csrf": "wrong"})).status_code == 403
        out = await http.post("/dashboard/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        assert SESSION_COOKIE not in http.cookies
        # The old cookie, kept by someone, no longer opens anything.
        http.cookies.set(SESSION_COOKIE, session, domain="127.0.0.1", path="/dashboard")
        assert (await http.get("/dashboard")).status_code == 303

        assert (await sign_in(http, next="https://evil.example/")).headers["location"] == "/dashboard"


async def test_no_admin_token_no_dashboard(start_gateway: Callable[..., Any]) -> None:
    gw = await start_gateway(http=HttpSettings(enabled=True, port=0))
    async with client(gw) as http:
        assert (await http.get("/dashboard/login")).status_code == 404
        assert (await http.get("/dashboard")).status_code == 404


# --- The queue --------------------------------------------------------------------------------------

async def test_queue_counts(start_gateway: Callable[..., Any]) -> None:
    gw = await start_dashboard(start_gateway)
    desk = await seed(gw, dt.datetime.now(dt.UTC))
    view = await gw.runtime.db.run_read(lambda conn: read_queue(conn, desk.now))
    assert view.total == 6
    # By shown name ("tech" has no title; billing's is Persian), then the tickets with no department.
    assert [(key, name, count) for key, name, count in view.departments] == [
        ("tech", "tech", 2), ("billing", "مالی", 3), ("-", "", 1)]
    assert dict(view.priorities) == {"urgent": 2, "high": 1, "normal": 2, "low": 1}
    assert view.sla == {"overdue": 2, "soon": 2, "on_track": 1, "none": 1}
    names = {v: k for k, v in desk.ids.items()}
    assert [names[t.id] for t in view.urgent] == [
        "overdue-first", "overdue-resolution", "soon-first", "soon-resolution", "on-track", "no-sla"]
    first = view.urgent[0]
    assert (first.ref, first.department, first.customer, first.due_kind, first.sla) == (
        ticket_ref(desk.ids["overdue-first"]), "مالی", "سارا <i>Sara</i>", "first response", "overdue")
    assert view.urgent[1].due_kind == "resolution" and view.urgent[-1].due is None

    billing = await gw.runtime.db.run_read(lambda conn: read_queue(conn, desk.now, department="billing"))
    assert billing.total == 3 and billing.sla == {"overdue": 2, "soon": 1, "on_track": 0, "none": 0}
    assert dict(billing.priorities) == {"urgent": 2, "high": 1, "normal": 0, "low": 0}
    assert {key: count for key, _, count in billing.departments} == {"billing": 3, "tech": 2, "-": 1}  # faceted
    urgent = await gw.runtime.db.run_read(lambda conn: read_queue(conn, desk.now, priority="urgent"))
    assert urgent.total == 2 and {key: count for key, _, count in urgent.departments} == {"billing": 2, "tech": 0}
    nowhere = await gw.runtime.db.run_read(lambda conn: read_queue(conn, desk.now, department="-"))
    assert nowhere.total == 1 and [names[t.id] for t in nowhere.urgent] == ["soon-first"]
    later = await gw.runtime.db.run_read(lambda conn: read_queue(conn, desk.now + SOON, limit=2))
    assert later.sla["overdue"] == 4 and len(later.urgent) == 2

    async with client(gw) as http:
        await sign_in(http)
        page = await http.get("/dashboard", params={"lang": "en"})
        assert page.status_code == 200
        assert re.search(r'id="open-total">6<', page.text)
        assert re.search(r'data-sla="overdue">.*?<span class="count">2</span>', page.text, re.S)
        refs = re.findall(r'<tr class="sla-row-\w+" data-ref="(T-\d+)"', page.text)
        assert refs == [ticket_ref(desk.ids[n]) for n in (
            "overdue-first", "overdue-resolution", "soon-first", "soon-resolution", "on-track", "no-sla")]
        assert "&lt;i&gt;Sara&lt;/i&gt;" in page.text and "<i>Sara</i>" not in page.text
        filtered = await http.get("/dashboard", params={"department": "tech", "priority": "low"})
        assert re.findall(r'data-ref="(T-\d+)"', filtered.text) == [ticket_ref(desk.ids["no-sla"])]


# --- One ticket -------------------------------------------------------------------------------------

async def test_ticket_page_shows_hostile_text_literally(start_gateway: Callable[..., Any]) -> None:
    gw = await start_dashboard(start_gateway)
    desk = await seed(gw, dt.datetime.now(dt.UTC))
    ticket_id = await seed_hostile(gw, desk)
    async with client(gw) as http:
        await sign_in(http)
        page = await http.get(f"/dashboard/tickets/{ticket_ref(ticket_id)}", params={"lang": "en"})
        assert page.status_code == 200
        html = page.text
        assert "<script>window.pwned" not in html and "<img src=x" not in html and "<b>bold?</b>" not in html
        assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;&lt;img src=x onerror=&#34;window.pwned = 2&#34;&gt;" in html
        assert html.count("&lt;b&gt;bold?&lt;/b&gt; &amp; «سلام»") >= 3  # subject, message subject, message text
        assert 'class="msg msg-in' in html and 'class="msg msg-note' in html and "msg-auto" in html
        assert "Internal note" in html and "Automatic" in html
        assert "delivery-state-failed" in html and "550 &lt;mailbox@example.com&gt; unavailable" in html
        assert "3 attempts" in html and "Reza &lt;agent&gt;" in html
        referrals = re.search(r'<ol class="referrals">(.*?)</ol>', html, re.S).group(1)
        assert re.findall(r"<bdi>(.*?)</bdi>", referrals) == ["مالی", "tech"]
        assert "needs &lt;code&gt;" in html and "SLA breached" in html and "Referred" in html
        assert re.search(r'score</span>: <bdi>4</bdi>', html) and "Survey answered" in html
        assert "email:sara@example.com" in html
        assert len(re.findall(r'<ul class="earlier">.*?</ul>', html, re.S)) == 1
        assert html.count('href="/dashboard/tickets/T-') >= 5  # the customer's other tickets (five shown)
        assert (await http.get("/dashboard/tickets/T-99999")).status_code == 404
        assert (await http.get("/dashboard/tickets/nonsense")).status_code == 404


# --- Language ---------------------------------------------------------------------------------------

async def test_persian_by_default_english_on_request(start_gateway: Callable[..., Any]) -> None:
    gw = await start_dashboard(start_gateway)
    desk = await seed(gw, dt.datetime.now(dt.UTC))
    ticket = ticket_ref(desk.ids["on-track"])
    async with client(gw) as http:
        await sign_in(http)
        fa = await http.get(f"/dashboard/tickets/{ticket}")
        assert '<html lang="fa" dir="rtl">' in fa.text
        created = (desk.now - 4 * dt.timedelta(hours=1)).astimezone(TEHRAN)
        assert jalali_date(created.date()) in fa.text  # Jalali, in Persian digits
        assert re.search(r"[۰-۹]{4}/[۰-۹]{2}/[۰-۹]{2} [۰-۹]{2}:[۰-۹]{2}", fa.text)
        assert "در انتظار مشتری" in fa.text and "اولویت" in fa.text
        queue = await http.get("/dashboard")
        assert re.search(r'id="open-total">۶<', queue.text)

        en = await http.get(f"/dashboard/tickets/{ticket}", params={"lang": "en"})
        assert '<html lang="en" dir="ltr">' in en.text and created.date().isoformat() in en.text
        assert "Waiting on customer" in en.text
        assert "kartabl_lang=en" in en.headers["set-cookie"]
        remembered = await http.get("/dashboard")  # the choice is kept in a cookie
        assert '<html lang="en" dir="ltr">' in remembered.text and re.search(r'id="open-total">6<', remembered.text)
        back = await http.get("/dashboard", params={"lang": "fa"})
        assert 'dir="rtl"' in back.text


# --- Reports ----------------------------------------------------------------------------------------

def _figures(**values: Any) -> Figures:
    none = Durations(0, None, None, None, None)
    base: dict[str, Any] = dict(
        group="all", new=0, resolved=0, open=0, backlog=dict.fromkeys(BACKLOG_BUCKETS, 0), first_response=none,
        resolution=none, sla_breaches=0, breach_rate=None, reopened=0, reopen_rate=None, complaints=0,
        csat_average=None, csat_count=0, messages_in={}, messages_out={}, delivery_failures={},
        contacts_per_customer_month=None)
    return Figures(**{**base, **values})


def fixed_report(since: dt.datetime, until: dt.datetime) -> Report:
    days = []
    day = since.astimezone(TEHRAN).date()
    while dt.datetime.combine(day, dt.time(), TEHRAN) < until:
        n = len(days)
        days.append(Day(day, {"email": n % 4, "telegram": 2, "sms": n % 2}, n % 3, 4.0 + (n % 2) / 2 if n % 5 else None,
                        0 if n % 5 == 0 else 2))
        day += dt.timedelta(days=1)
    total = _figures(new=1234, resolved=1100, open=87, sla_breaches=31, breach_rate=0.0432, reopened=12,
                     reopen_rate=0.0109, complaints=9, csat_average=4.37, csat_count=310,
                     first_response=Durations(900, 3000.0, 20000.0, 1800.0, 14400.0),
                     resolution=Durations(1100, 90000.0, 400000.0, 28800.0, 172800.0))
    return Report(since, until, None, total, (), tuple(days), dict(zip(RESPONSE_BUCKETS, (120, 300, 250, 90, 40, 12))))


def test_report_charts_speak_the_page_language() -> None:
    since = dt.datetime(2026, 11, 1, tzinfo=TEHRAN)
    report = fixed_report(since, since + dt.timedelta(days=7))
    now = since + dt.timedelta(days=7)
    fa = report_charts(report, Locale("fa", TEHRAN, now))
    en = report_charts(report, Locale("en", TEHRAN, now))
    for markup in (*fa.values(), *en.values()):
        _svg(str(markup))
    assert _svg(str(fa["volume"])).get("direction") == "rtl" and _svg(str(en["volume"])).get("direction") == "ltr"
    volume = _svg(str(en["volume"]))
    assert {r.get("data-series") for r in _bars(volume)} == {"Email", "Telegram", "SMS"}
    assert "busiest day" in volume.find(f"{SVG}desc").text
    assert "ایمیل" in str(fa["volume"]) and "۱۴۰۵" in _svg(str(fa["volume"])).find(f"{SVG}desc").text
    response = _svg(str(en["response"]))
    assert [float(r.get("data-value")) for r in _bars(response)] == [120, 300, 250, 90, 40, 12]
    csat = _svg(str(en["csat"]))
    assert len(list(csat.iter(f"{SVG}circle"))) == sum(1 for d in report.days if d.csat_count)


async def test_reports_page(start_gateway: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[dt.datetime, dt.datetime, dict[str, Any]]] = []

    async def report(db: Any, since: dt.datetime, until: dt.datetime, **options: Any) -> Report:
        asked.append((since, until, options))
        return fixed_report(since, until)
    monkeypatch.setattr("gateway.dashboard.build_report", report)
    gw = await start_dashboard(start_gateway)
    async with client(gw) as http:
        await sign_in(http)
        page = await http.get("/dashboard/reports", params={"lang": "en", "since": "2026-11-01", "until": "2026-11-07"})
        assert page.status_code == 200
        since, until, options = asked[-1]
        assert since == dt.datetime(2026, 11, 1, tzinfo=TEHRAN) and until == dt.datetime(2026, 11, 8, tzinfo=TEHRAN)
        assert options["zone"] == TEHRAN and options["calendar"].zone == TEHRAN
        assert "complaint" in options["complaint_tags"]
        html = page.text
        for card, value in (("new", "1,234"), ("resolved", "1,100"), ("open", "87"), ("breaches", "31"),
                            ("reopen", "1.1%"), ("complaints", "9"), ("csat", "4.37"), ("first-response", "30m")):
            assert re.search(rf'id="kpi-{card}">.*?class="kpi-value">{re.escape(value)}<', html, re.S), card
        assert "4h" in html and "rate 4.3%" in html and "average of 310 scores" in html
        assert html.count('<svg xmlns="http://www.w3.org/2000/svg"') == 4 and 'role="img"' in html

        fa = await http.get("/dashboard/reports", params={"lang": "fa", "since": "۱۴۰۵/۰۸/۱۰", "until": "1405/08/16"})
        assert asked[-1][0] == dt.datetime(2026, 11, 1, tzinfo=TEHRAN)
        assert 'dir="rtl"' in fa.text and "۱٬۲۳۴" in fa.text and 'value="1405/08/10"' in fa.text

        default = await http.get("/dashboard/reports")
        assert default.status_code == 200 and (asked[-1][1] - asked[-1][0]).days in (29, 30, 31)
        bad = await http.get("/dashboard/reports", params={"since": "2026-12-01", "until": "2026-11-01", "lang": "en"})
        assert bad.status_code == 400 and "must start before it ends" in bad.text
        bad = await http.get("/dashboard/reports", params={"since": "<script>", "lang": "en"})
        assert bad.status_code == 400 and "<script>" not in bad.text


async def test_reports_page_with_the_real_report(start_gateway: Callable[..., Any]) -> None:
    gw = await start_dashboard(start_gateway)
    await seed(gw, dt.datetime.now(dt.UTC))
    async with client(gw) as http:
        await sign_in(http)
        page = await http.get("/dashboard/reports", params={"lang": "en"})
        assert page.status_code == 200, page.text[:2000]
        assert re.search(r'id="kpi-new">.*?class="kpi-value">8<', page.text, re.S)
        assert page.text.count("<svg") == 4 and 'class="bar"' in page.text


# --- In a real browser ------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (its fds 3 and 4): JSON messages
    ended by NUL, no extra packages, no port."""

    def __init__(self, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"  # a file, not a pipe nobody drains while it talks
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        def wire() -> None:  # in the child: our pipe ends become its fds 3 (commands) and 4 (replies)
            a, b = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10), fcntl.fcntl(replies_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile / 'data'}",
                 "--window-size=1280,1600", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False, preexec_fn=wire)
        os.close(commands_r)
        os.close(replies_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30,
             browser: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for n, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[: n + 1]
                    return event
            self.events.append(self._read(max(0.1, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                raise AssertionError(f"Chromium sent no {method} in {timeout}s")

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"Chromium said nothing for {timeout}s")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise AssertionError(f"Chromium closed its pipe: {self.log.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open_tab(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 browser=True)["sessionId"]
        self.send("Page.enable")
        self.send("Network.enable")
        # The window's size includes its (invisible) frame: fix the page's own viewport instead.
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1600, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def go(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # the browser may be gone already; the process is ended below
            self.send("Browser.close", browser=True, timeout=10)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", png[16:24])


@pytest.fixture
async def sqlite_gateway(tmp_path: Path) -> Any:
    """A gateway with the dashboard on SQLite only: the browser needs one backend, not two."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'kartabl.db'}", tmp_path,
                             http=HttpSettings(enabled=True, port=0, admin_token=Secret(TOKEN)))
    channel, recording = LoopbackChannel(), RecordingDesk()
    runtime = build_runtime(settings, channels={ChannelKind.LOOPBACK: channel}, desks=[recording])
    await runtime.start()
    yield Gateway(runtime, channel, recording)
    await runtime.stop()


async def test_dashboard_in_headless_chromium(sqlite_gateway: Gateway, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: this test renders the dashboard in Debian's chromium package "
                    "(`apt-get install chromium`, as .ci/run does). It must not be skipped.", pytrace=False)
    gw = sqlite_gateway
    desk = await seed(gw, dt.datetime.now(dt.UTC))
    hostile = await seed_hostile(gw, desk)
    base = f"http://127.0.0.1:{gw.runtime.http_port}"
    async with client(gw) as http:
        assert (await sign_in(http)).status_code == 303
        session = http.cookies[SESSION_COOKIE]

    def browse() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        browser = Chromium(tmp_path / "chromium-profile")
        try:
            browser.open_tab()
            assert browser.send("Network.setCookie", {
                "name": SESSION_COOKIE, "value": session, "url": f"{base}/dashboard", "path": "/dashboard",
                "httpOnly": True, "sameSite": "Strict"})["success"]
            browser.go(f"{base}/dashboard")
            seen["queue"] = browser.evaluate("""({
                url: location.pathname, dir: document.documentElement.dir, lang: document.documentElement.lang,
                rows: [...document.querySelectorAll('#urgent tbody tr')].map(r => r.dataset.ref),
                total: document.getElementById('open-total').textContent,
                overdue: document.querySelector('[data-sla="overdue"] .count').textContent,
                subject: document.querySelector('#urgent tbody tr td.subject').textContent.trim(),
                pwned: window.pwned === undefined ? null : window.pwned,
                injected: document.querySelectorAll('#urgent img, #urgent script, #urgent b').length,
                styled: getComputedStyle(document.querySelector('.facets')).display,
                tableRight: document.querySelector('#urgent th').getBoundingClientRect().right,
            })""")
            seen["queue_png"] = browser.screenshot(ARTIFACTS / "dashboard-queue.png")
            browser.go(f"{base}/dashboard/tickets/{ticket_ref(hostile)}")
            seen["ticket"] = browser.evaluate("""({
                body: document.querySelector('.msg-in .msg-body').textContent,
                pwned: window.pwned === undefined ? null : window.pwned,
                injected: document.querySelectorAll('.conversation img, .conversation script, .conversation b').length,
                note: getComputedStyle(document.querySelector('.msg-note')).backgroundColor,
                customer: getComputedStyle(document.querySelector('.msg-in')).backgroundColor,
            })""")
            browser.screenshot(ARTIFACTS / "dashboard-ticket.png")
            browser.go(f"{base}/dashboard/reports")
            seen["reports"] = browser.evaluate("""({
                dir: document.documentElement.dir,
                charts: document.querySelectorAll('svg.chart').length,
                bars: document.querySelectorAll('svg rect.bar').length,
                titles: [...document.querySelectorAll('svg.chart > title')].map(t => t.textContent),
                labelled: [...document.querySelectorAll('svg.chart')].every(s =>
                    s.getAttribute('aria-labelledby').split(' ').every(id => document.getElementById(id))),
                chartWidth: document.querySelector('svg.chart').getBoundingClientRect().width,
                cards: document.querySelectorAll('.kpi').length,
                newTickets: document.querySelector('#kpi-new .kpi-value').textContent,
            })""")
            seen["reports_png"] = browser.screenshot(ARTIFACTS / "dashboard-reports.png")
            browser.go(f"{base}/dashboard?lang=en")
            seen["english"] = browser.evaluate("""({dir: document.documentElement.dir,
                heading: document.querySelector('h1').textContent,
                tableLeft: document.querySelector('#urgent th').getBoundingClientRect().left})""")
        finally:
            browser.close()
        return seen

    seen = await asyncio.to_thread(browse)
    queue, ticket, reports, english = seen["queue"], seen["ticket"], seen["reports"], seen["english"]
    assert queue["url"] == "/dashboard", "the session cookie did not sign the browser in"
    assert (queue["dir"], queue["lang"]) == ("rtl", "fa")
    assert queue["total"] == "۶" and queue["overdue"] == "۲"
    assert queue["rows"] == [ticket_ref(desk.ids[n]) for n in (
        "overdue-first", "overdue-resolution", "soon-first", "soon-resolution", "on-track", "no-sla")]
    assert queue["subject"] == f"Re: {HOSTILE}" and queue["pwned"] is None and queue["injected"] == 0
    assert queue["styled"] == "grid", "the stylesheet from /dashboard/static did not load"
    assert queue["tableRight"] > 1000  # right to left: the first column at the right
    assert ticket["body"] == HOSTILE and ticket["pwned"] is None and ticket["injected"] == 0
    assert ticket["note"] != ticket["customer"]  # internal notes look different
    assert reports["dir"] == "rtl" and reports["charts"] == 4 and reports["bars"] > 0 and reports["labelled"]
    assert reports["titles"][0] == "درخواست‌های جدید روزانه به تفکیک کانال" and reports["chartWidth"] > 300
    assert reports["cards"] == 9 and reports["newTickets"] == "۸"
    assert english["dir"] == "ltr" and english["heading"].startswith("Open tickets") and english["tableLeft"] < 100
    for name in ("queue_png", "reports_png"):
        assert _png_size(seen[name]) == (1280, 1600)
        assert len(seen[name]) > 20_000  # a rendered page, not a blank one
