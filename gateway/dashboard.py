"""The managers' dashboard: the live queue, one ticket's whole story and the period's KPIs, as
server-rendered pages (Jinja2, inline SVG from `gateway.charts`) behind the admin token.

Signing in: the admin token, compared in constant time, buys a session cookie (HttpOnly,
SameSite=Strict, path /dashboard) that holds a random session id and its expiry signed with a key
derived from the token, never the token itself. Every POST carries a form token derived from the
session (the login form's from a short-lived nonce cookie) on top of SameSite. Pages are Persian
(right to left, Jalali dates, Persian digits) or English (left to right, Gregorian), chosen by
`?lang=fa|en` and remembered in a cookie; never cached, never framed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import charts
from gateway.db import Database
from gateway.domain import Direction, Priority, TicketStatus, parse_ticket_ref, ticket_ref
from gateway.errors import TicketNotFound
from gateway.http import secret_matches
from gateway.jalali import TEHRAN, gregorian_to_jalali, jalali_date, jalali_to_gregorian, persian_digits
from gateway.messages import utcnow
from gateway.report_model import RESPONSE_BUCKETS, Report
from gateway.reports import build_report
from gateway.schema import agents, attachments, customers, departments, events, messages, tickets
from gateway.settings import Secret, Settings
from gateway.tickets import TicketService, TicketSummary

PAGES_DIR = Path(__file__).with_name("pages")
STATIC_DIR = Path(__file__).with_name("static")

SESSION_COOKIE = "kartabl_session"
LOGIN_COOKIE = "kartabl_login"
LANG_COOKIE = "kartabl_lang"
#: A session lasts a working day; then the manager signs in again.
SESSION_SECONDS = 12 * 3600
#: How long a login form may sit before it is sent.
LOGIN_FORM_SECONDS = 3600
#: Open tickets listed on the queue page, most urgent first.
URGENT_SHOWN = 50
#: "Due soon" on the queue: a deadline within this much wall-clock time.
SOON = dt.timedelta(hours=1)
#: The longest period the reports page builds (a year and a bit).
MAX_REPORT_DAYS = 400
DEFAULT_REPORT_DAYS = 30

OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.WAITING)
SLA_STATES = ("overdue", "soon", "on_track", "none")
_PRIORITY_ORDER = (Priority.URGENT, Priority.HIGH, Priority.NORMAL, Priority.LOW)
_NO_DEPARTMENT = "-"
_MAX_FORM_BYTES = 4096
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex",
    # Inline SVG is markup, not a resource: nothing here needs an inline script or style.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

#: The report builder (`gateway.reports.build_report`): (db, since, until, *, calendar, complaint_tags, zone).
ReportBuilder = Callable[..., Awaitable[Report]]
#: The workflow's business calendar as it is now (it is reloaded with the workflow file).
CalendarSource = Callable[[], Any]


# --- Sessions ---------------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Sessions:
    """Signed, expiring dashboard sessions, and the form tokens tied to them.

    The signing key is derived from the admin token, so a new token ends every session, and several
    gateway processes accept each other's sessions. A session ended by logout is refused by this
    process from then on (the browser's cookie is cleared too).
    """

    def __init__(self, token: Secret, lifetime: float = SESSION_SECONDS) -> None:
        self._key = hmac.new(token.reveal().encode(), b"kartabl dashboard sessions v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._ended: dict[str, float] = {}

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def issue(self, now: float) -> str:
        """A new session's cookie value: `v1.<expiry>.<id>.<signature>`."""
        body = f"v1.{int(now + self.lifetime)}.{_b64(secrets.token_bytes(18))}"
        return f"{body}.{self._mac(body)}"

    def check(self, cookie: str | None, now: float) -> str | None:
        """The session id of a cookie we signed that has neither expired nor been ended; else None."""
        parts = (cookie or "").split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit() or len(cookie or "") > 200:
            return None
        if not hmac.compare_digest(parts[3].encode(), self._mac(".".join(parts[:3])).encode()):
            return None
        if int(parts[1]) <= now or parts[2] in self._ended:
            return None
        return parts[2]

    def end(self, cookie: str | None, now: float) -> None:
        """Log a session out: refused from now until it would have expired anyway."""
        session = self.check(cookie, now)
        if session is not None:
            self._ended[session] = int((cookie or "").split(".")[1])
        self._ended = {s: until for s, until in self._ended.items() if until > now}

    def form_token(self, session: str) -> str:
        return self._mac(f"form:{session}")

    def form_ok(self, session: str, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.form_token(session).encode())

    def login_nonce(self, now: float) -> str:
        """The login form's cookie: a random nonce and its expiry, signed."""
        body = f"{int(now + LOGIN_FORM_SECONDS)}.{_b64(secrets.token_bytes(12))}"
        return f"{body}.{self._mac('nonce:' + body)}"

    def login_token(self, nonce: str) -> str:
        return self._mac(f"login:{nonce}")

    def login_ok(self, nonce: str | None, given: str, now: float) -> bool:
        parts = (nonce or "").split(".")
        if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) <= now:
            return False
        if not hmac.compare_digest(parts[2].encode(), self._mac("nonce:" + ".".join(parts[:2])).encode()):
            return False
        return hmac.compare_digest(given.encode(), self.login_token(nonce or "").encode())


# --- Language ---------------------------------------------------------------------------------------

#: English text of the pages to Persian; English is the key, so templates read plainly.
PERSIAN = {
    "Kartabl": "کارتابل", "Dashboard": "داشبورد", "Queue": "صف", "Reports": "گزارش‌ها", "Sign out": "خروج",
    "Sign in": "ورود", "Admin token": "توکن مدیریت", "Sign in to the dashboard": "ورود به داشبورد",
    "The token is not right.": "توکن درست نیست.",
    "The form had expired; please try again.": "فرم منقضی شده بود؛ لطفاً دوباره تلاش کنید.",
    "Open tickets": "درخواست‌های باز", "By department": "بر اساس واحد", "By priority": "بر اساس اولویت",
    "By SLA": "بر اساس SLA", "Most urgent": "فوری‌ترین‌ها", "All": "همه", "No department": "بدون واحد",
    "Ref": "شماره", "Subject": "موضوع", "Customer": "مشتری", "Channel": "کانال", "Department": "واحد",
    "Assignee": "مسئول", "Priority": "اولویت", "Status": "وضعیت", "SLA due": "موعد SLA", "Age": "عمر",
    "Unassigned": "بدون مسئول", "No subject": "بدون موضوع", "No open tickets.": "درخواست بازی نیست.",
    "Filter": "صافی", "Clear filters": "حذف صافی‌ها", "first response": "اولین پاسخ", "resolution": "حل",
    "showing the first": "نمایش نخستین", "of": "از",
    "Conversation": "گفتگو", "Events": "رویدادها", "Referral chain": "زنجیره ارجاع",
    "Other tickets of this customer": "درخواست‌های دیگر این مشتری", "Addresses": "نشانی‌ها",
    "Internal note": "یادداشت داخلی", "Automatic": "خودکار", "Agent": "کارشناس", "Delivery": "تحویل",
    "Attachments": "پیوست‌ها", "left out": "نگه داشته نشد", "attempts": "تلاش",
    "Created": "ایجاد", "First response": "اولین پاسخ", "Resolved": "حل", "Closed": "بسته شد",
    "SLA breached": "نقض SLA", "Satisfaction": "رضایت", "Tags": "برچسب‌ها", "None": "هیچ",
    "in all": "در کل", "Not found": "پیدا نشد", "There is no ticket": "درخواستی نیست با شماره",
    "Back to the queue": "بازگشت به صف", "Reply address": "نشانی پاسخ", "Review": "بازبینی",
    "Survey sent": "نظرسنجی فرستاده شد", "Due": "موعد", "Sent": "فرستاده", "Delivered": "تحویل",
    "From": "از", "Until": "تا", "Show": "نمایش", "Period": "دوره",
    "New": "جدید", "Open at the end": "باز در پایان دوره", "First response (business time)": "اولین پاسخ (ساعت کاری)",
    "Resolution (business time)": "زمان حل (ساعت کاری)", "SLA breaches": "نقض‌های SLA", "Reopen rate": "نرخ بازگشایی",
    "Complaints": "شکایت‌ها", "median": "میانه", "p90": "صدک ۹۰", "rate": "نرخ", "scores": "امتیاز",
    "reopened": "بازگشایی", "average of": "میانگین از",
    "New tickets per day by channel": "درخواست‌های جدید روزانه به تفکیک کانال",
    "First responses by business time taken": "اولین پاسخ‌ها بر اساس زمان کاری صرف‌شده",
    "SLA breaches per day": "نقض‌های SLA در هر روز", "Average satisfaction per day": "میانگین رضایت روزانه",
    "Day": "روز", "Tickets": "درخواست", "Responses": "پاسخ", "Breaches": "نقض", "Score (1-5)": "امتیاز (۱ تا ۵)",
    "Business time to first response": "زمان کاری تا اولین پاسخ", "Average score": "میانگین امتیاز",
    "A date is not valid: use YYYY-MM-DD, or a Jalali YYYY/MM/DD.":
        "تاریخ معتبر نیست: به شکل ۱۴۰۵/۰۹/۰۲ (شمسی) یا 2026-11-23 بنویسید.",
    "The period must start before it ends, and span at most 400 days.":
        "آغاز دوره باید پیش از پایان آن باشد و دوره حداکثر ۴۰۰ روز.",
    "The report could not be built": "گزارش ساخته نشد",
    "no scores": "بدون امتیاز", "busiest day": "پرکارترین روز", "most on": "بیشترین در",
    "Updated": "به‌روز شده", "Satisfaction (1-5)": "رضایت (۱ تا ۵)",
    # The details of events, by their keys.
    "reason": "دلیل", "rule": "قانون", "why": "چرا", "kind": "نوع", "due": "موعد", "score": "امتیاز",
    "via": "از راه", "error": "خطا", "department": "واحد", "priority": "اولویت", "tags": "برچسب‌ها",
    "review": "بازبینی",
}

#: How enum values read, per language.
WORDS = {
    "en": {
        "status": {"new": "New", "open": "Open", "waiting": "Waiting on customer", "resolved": "Resolved",
                   "closed": "Closed"},
        "priority": {"low": "Low", "normal": "Normal", "high": "High", "urgent": "Urgent"},
        "channel": {"email": "Email", "sms": "SMS", "telegram": "Telegram", "loopback": "Loopback"},
        "sla": {"overdue": "Overdue", "soon": "Due within the hour", "on_track": "On track", "none": "No SLA"},
        "delivery": {"received": "Received", "pending": "Pending", "sent": "Sent", "delivered": "Delivered",
                     "failed": "Failed", "held": "Held for review", "rejected": "Rejected by a lead"},
        "bucket": {"<15m": "<15m", "15m-1h": "15m-1h", "1-4h": "1-4h", "4-8h": "4-8h", "1-2d": "1-2d", ">2d": ">2d"},
        "event": {},
    },
    "fa": {
        "status": {"new": "جدید", "open": "باز", "waiting": "در انتظار مشتری", "resolved": "حل‌شده", "closed": "بسته"},
        "priority": {"low": "کم", "normal": "عادی", "high": "زیاد", "urgent": "فوری"},
        "channel": {"email": "ایمیل", "sms": "پیامک", "telegram": "تلگرام", "loopback": "آزمایشی"},
        "sla": {"overdue": "گذشته از موعد", "soon": "موعد در یک ساعت آینده", "on_track": "در موعد", "none": "بدون SLA"},
        "delivery": {"received": "دریافت‌شده", "pending": "در صف ارسال", "sent": "فرستاده‌شده", "delivered": "تحویل‌شده",
                     "failed": "ناموفق", "held": "در انتظار تأیید سرپرست", "rejected": "ردشده توسط سرپرست"},
        "bucket": {"<15m": "کمتر از ۱۵ دقیقه", "15m-1h": "۱۵ دقیقه تا ۱ ساعت", "1-4h": "۱ تا ۴ ساعت",
                   "4-8h": "۴ تا ۸ ساعت", "1-2d": "۱ تا ۲ روز", ">2d": "بیش از ۲ روز"},
        "event": {
            "ticket.created": "درخواست ایجاد شد", "ticket.status": "تغییر وضعیت", "ticket.department": "ارجاع به واحد",
            "ticket.assignee": "تعیین مسئول", "ticket.priority": "تغییر اولویت", "ticket.routed": "مسیریابی",
            "rule.fired": "اجرای قانون", "sla.breached": "نقض SLA", "sla.restarted": "شروع دوباره SLA",
            "survey.answered": "پاسخ نظرسنجی", "reply.held": "پاسخ برای بازبینی نگه داشته شد",
            "reply.approved": "پاسخ تأیید شد", "reply.rejected": "پاسخ رد شد", "message.failed": "ارسال ناموفق",
            "message.delivered": "تحویل پیام", "message.sent": "ارسال پیام", "message.retried": "ارسال دوباره",
            "autoreply.suppressed": "پاسخ خودکار فرستاده نشد",
        },
    },
}
_ENGLISH_EVENTS = {
    "ticket.created": "Ticket created", "ticket.status": "Status changed", "ticket.department": "Referred",
    "ticket.assignee": "Assigned", "ticket.priority": "Priority changed", "ticket.routed": "Routed",
    "rule.fired": "Rule fired", "sla.breached": "SLA breached", "sla.restarted": "SLA restarted",
    "survey.answered": "Survey answered", "reply.held": "Reply held for review", "reply.approved": "Reply approved",
    "reply.rejected": "Reply rejected", "message.failed": "Delivery failed", "message.delivered": "Delivered",
    "message.sent": "Sent", "message.retried": "Send retried", "autoreply.suppressed": "Automatic reply withheld",
}
WORDS["en"]["event"] = _ENGLISH_EVENTS
_UNITS = {"en": ("d", "h", "m"), "fa": (" روز", " ساعت", " دقیقه")}
_TO_ASCII = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")


@dataclasses.dataclass(frozen=True)
class Locale:
    """How one page speaks: its language, the desk's time zone, and the moment it shows."""

    lang: str  # "fa" or "en"
    zone: ZoneInfo
    now: dt.datetime

    @property
    def fa(self) -> bool:
        return self.lang == "fa"

    @property
    def dir(self) -> str:
        return "rtl" if self.fa else "ltr"

    def __call__(self, text: str) -> str:
        return PERSIAN.get(text, text) if self.fa else text

    def word(self, kind: str, value: object) -> str:
        """A status, priority, channel, SLA state, delivery state, bucket or event kind, as this language says it."""
        text = "" if value is None else str(value)
        return WORDS[self.lang][kind].get(text, text)

    def digits(self, text: object) -> str:
        return persian_digits(str(text)) if self.fa else str(text)

    def num(self, value: float | None, places: int = 0) -> str:
        if value is None:
            return "—"
        text = f"{value:,.{places}f}"
        return persian_digits(text.replace(",", "٬").replace(".", "٫")) if self.fa else text

    def pct(self, ratio: float | None) -> str:
        if ratio is None:
            return "—"
        return self.num(ratio * 100, 1) + ("٪" if self.fa else "%")

    def when(self, moment: dt.datetime | None) -> str:
        """A moment in the desk's zone: `۱۴۰۵/۰۹/۰۲ ۱۴:۳۰` or `2026-11-23 14:30`."""
        if moment is None:
            return "—"
        local = moment.astimezone(self.zone)
        return f"{self.day(local.date())} {self.digits(f'{local:%H:%M}')}"

    def day(self, day: dt.date, *, short: bool = False) -> str:
        if self.fa:
            if short:
                _, month, mday = gregorian_to_jalali(day)
                return persian_digits(f"{month:02d}/{mday:02d}")
            return jalali_date(day)
        return f"{day:%b} {day.day}" if short else day.isoformat()

    def day_field(self, day: dt.date) -> str:
        """A day as the reports form shows it and reads it back."""
        return jalali_date(day, persian=False) if self.fa else day.isoformat()

    def duration(self, seconds: float | None) -> str:
        """Two units at most: `2d 4h`, `3h 5m`, `۲ روز ۴ ساعت`."""
        if seconds is None:
            return "—"
        minutes = int(max(seconds, 0) // 60)
        parts = [(minutes // 1440, 0), (minutes % 1440 // 60, 1), (minutes % 60, 2)]
        shown = [(n, unit) for n, unit in parts if n][:2]
        if not shown:  # "<" would mirror in a right-to-left line: Persian says it in words
            return "کمتر از ۱ دقیقه" if self.fa else "<1m"
        if shown[0][1] == 0 and len(shown) == 2 and shown[1][1] == 2:  # days and minutes: say days alone
            shown = shown[:1]
        return self.digits(" ".join(f"{n}{_UNITS[self.lang][unit]}" for n, unit in shown))

    def age(self, since: dt.datetime) -> str:
        return self.duration((self.now - since).total_seconds())


def _language(request: Request) -> tuple[str, bool]:
    """The page's language, and whether it was chosen just now (to be remembered)."""
    asked = request.query_params.get("lang")
    if asked in ("fa", "en"):
        return asked, True
    return ("en" if request.cookies.get(LANG_COOKIE) == "en" else "fa"), False


def parse_day(text: str) -> dt.date:
    """A date typed in the reports form: `2026-11-23`, or Jalali `1405/09/02` (Persian digits too)."""
    cleaned = text.strip().translate(_TO_ASCII).replace("/", "-")
    parts = cleaned.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a date: {text!r}")
    year, month, day = map(int, parts)
    return jalali_to_gregorian(year, month, day) if year < 1700 else dt.date(year, month, day)


# --- The queue --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class QueueTicket:
    id: int
    ref: str
    subject: str | None
    customer: str
    channel: str
    department: str | None
    assignee: str | None
    priority: str
    status: str
    created_at: dt.datetime
    due: dt.datetime | None  # the next deadline: the first response's while unanswered, else the resolution's
    due_kind: str | None  # "first response" or "resolution"
    sla: str  # one of SLA_STATES


@dataclasses.dataclass(frozen=True, slots=True)
class QueueView:
    """The open tickets now. Each breakdown is faceted: by department under the priority filter, by
    priority under the department filter, by SLA state (and the total) under both."""

    total: int
    departments: list[tuple[str, str, int]]  # (filter value, name, count)
    priorities: list[tuple[str, int]]
    sla: dict[str, int]
    urgent: list[QueueTicket]
    department: str | None
    priority: str | None


def _next_due() -> sa.ColumnElement[Any]:
    t = tickets
    first_pending = sa.and_(t.c.first_response_at.is_(None), t.c.first_response_due.is_not(None),
                            sa.or_(t.c.resolution_due.is_(None), t.c.first_response_due <= t.c.resolution_due))
    return sa.case((first_pending, t.c.first_response_due), else_=t.c.resolution_due)


def _sla_state(now: dt.datetime) -> sa.ColumnElement[str]:
    """Where `_next_due()` falls against now, spelled without it: the earlier of two deadlines is past a
    moment when either is (and this is a third of the work per row for SQLite)."""
    t = tickets
    first_pending = sa.and_(t.c.first_response_at.is_(None), t.c.first_response_due.is_not(None))
    return sa.case(
        (sa.or_(sa.and_(first_pending, t.c.first_response_due < now), t.c.resolution_due < now), "overdue"),
        (sa.or_(sa.and_(first_pending, t.c.first_response_due < now + SOON), t.c.resolution_due < now + SOON), "soon"),
        (sa.or_(first_pending, t.c.resolution_due.is_not(None)), "on_track"),
        else_="none")


def _names(conn: sa.Connection, table: sa.Table, ids: set[int]) -> dict[int, str | None]:
    """The names of a few agents or customers, by id."""
    if not ids:
        return {}
    return dict(conn.execute(sa.select(table.c.id, table.c.name).where(table.c.id.in_(sorted(ids)))).all())


def read_queue(conn: sa.Connection, now: dt.datetime, *, department: str | None = None,
               priority: str | None = None, limit: int = URGENT_SHOWN) -> QueueView:
    """The live queue in three statements: the open tickets counted by (department, priority, SLA state)
    in SQL, the most urgent ones (earliest deadline first, then priority, then age) with LIMIT, and the
    names of the few departments, agents and customers they show."""
    t = tickets
    is_open = t.c.status.in_([str(s) for s in OPEN_STATUSES])
    known = conn.execute(sa.select(departments.c.id, departments.c.name, departments.c.title)).all()
    names = {row.id: row.title or row.name for row in known}  # as the desk calls them
    by_name = {row.name: row.id for row in known}  # as the filter names them
    if priority not in {str(p) for p in Priority}:
        priority = None
    if department is not None and department != _NO_DEPARTMENT and department not in by_name:
        department = None
    wanted_department = None if department in (None, _NO_DEPARTMENT) else by_name[department]

    # Grouped by the state's output name: PostgreSQL would not match the CASE's bound moments twice.
    groups = conn.execute(sa.select(t.c.department_id, t.c.priority, _sla_state(now).label("sla"), sa.func.count())
                          .where(is_open).group_by(t.c.department_id, t.c.priority, sa.literal_column("sla"))).all()

    def in_department(dept_id: int | None) -> bool:
        return department is None or dept_id == wanted_department

    per_department: dict[int | None, int] = {}
    per_priority: dict[str, int] = {}
    per_sla = dict.fromkeys(SLA_STATES, 0)
    for dept_id, prio, state, count in groups:
        if priority is None or prio == priority:
            per_department[dept_id] = per_department.get(dept_id, 0) + count
        if in_department(dept_id):
            per_priority[prio] = per_priority.get(prio, 0) + count
            if priority is None or prio == priority:
                per_sla[state] = per_sla.get(state, 0) + count
    by_department = [(name_key, names[i], per_department.get(i, 0))
                     for name_key, i in sorted(by_name.items(), key=lambda kv: names[kv[1]])]
    if None in per_department or department == _NO_DEPARTMENT:
        by_department.append((_NO_DEPARTMENT, "", per_department.get(None, 0)))
    priorities = [(str(p), per_priority.get(str(p), 0)) for p in _PRIORITY_ORDER]

    where = [is_open]
    if department == _NO_DEPARTMENT:
        where.append(t.c.department_id.is_(None))
    elif wanted_department is not None:
        where.append(t.c.department_id == wanted_department)
    if priority is not None:
        where.append(t.c.priority == priority)
    rank = sa.case({str(p): n for n, p in enumerate(_PRIORITY_ORDER)}, value=t.c.priority, else_=len(_PRIORITY_ORDER))
    rows = conn.execute(
        sa.select(t.c.id, t.c.subject, t.c.customer_id, t.c.reply_to, t.c.channel, t.c.department_id,
                  t.c.assignee_id, t.c.priority, t.c.status, t.c.created_at, t.c.first_response_at,
                  t.c.first_response_due, t.c.resolution_due)
        .where(*where).order_by(_next_due().asc().nulls_last(), rank, t.c.id).limit(limit)).all()
    people = _names(conn, agents, {r.assignee_id for r in rows if r.assignee_id is not None})
    customer_names = _names(conn, customers, {r.customer_id for r in rows})
    urgent = []
    for r in rows:
        first = r.first_response_at is None and r.first_response_due is not None and (
            r.resolution_due is None or r.first_response_due <= r.resolution_due)
        due = r.first_response_due if first else r.resolution_due
        state = "none" if due is None else "overdue" if due < now else "soon" if due < now + SOON else "on_track"
        urgent.append(QueueTicket(
            id=r.id, ref=ticket_ref(r.id), subject=r.subject, customer=customer_names.get(r.customer_id) or r.reply_to,
            channel=r.channel, department=names.get(r.department_id), assignee=people.get(r.assignee_id),
            priority=r.priority, status=r.status, created_at=r.created_at, due=due,
            due_kind=None if due is None else "first response" if first else "resolution", sla=state))
    return QueueView(total=sum(per_sla.values()), departments=by_department, priorities=priorities, sla=per_sla,
                     urgent=urgent, department=department, priority=priority)


# --- One ticket -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class StoryMessage:
    id: int
    direction: str
    channel: str
    text: str
    subject: str | None
    sender: str | None
    agent: str | None
    automatic: bool
    delivery_state: str
    delivery_error: str | None
    attempts: int
    created_at: dt.datetime
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    attachments: tuple[tuple[str, str | None], ...]  # (file name, why it was left out)


@dataclasses.dataclass(frozen=True, slots=True)
class StoryEvent:
    at: dt.datetime
    actor: str
    kind: str
    old: str | None
    new: str | None
    details: tuple[tuple[str, object], ...]  # (name, value); a datetime value is shown as a moment


@dataclasses.dataclass(frozen=True, slots=True)
class Story:
    """What the ticket page shows beyond the ticket's card: its state, every message, every event."""

    state: Any  # the ticket row: status, tags, the SLA and survey stamps
    department: str | None  # as the desk calls it (its title, else its name)
    messages: list[StoryMessage]
    events: list[StoryEvent]
    referrals: list[str]  # the departments the ticket went through, in order


_DETAIL_KEYS = ("reason", "rule", "why", "kind", "due", "score", "via", "error", "department", "priority", "tags",
                "review")


def read_story(conn: sa.Connection, ticket_id: int) -> Story:
    t, m = tickets, messages
    state = conn.execute(sa.select(
        t.c.status, t.c.department_id, t.c.tags, t.c.first_response_at, t.c.resolved_at, t.c.closed_at, t.c.sla_breached_at,
        t.c.survey_sent_at, t.c.csat_score, t.c.csat_at, t.c.review, t.c.updated_at).where(t.c.id == ticket_id)).one_or_none()
    if state is None:
        raise TicketNotFound(f"no ticket {ticket_ref(ticket_id)}")
    known = conn.execute(sa.select(departments.c.id, departments.c.name, departments.c.title)).all()
    department_names = {row.id: row.title or row.name for row in known}
    shown_as = {row.name: row.title or row.name for row in known}  # routing events name a department
    rows = conn.execute(sa.select(
        m.c.id, m.c.direction, m.c.channel, m.c.text, m.c.subject, m.c.sender, m.c.agent_id, m.c.automatic,
        m.c.delivery_state, m.c.delivery_error, m.c.attempts, m.c.created_at, m.c.sent_at, m.c.delivered_at)
        .where(m.c.ticket_id == ticket_id).order_by(m.c.id)).all()
    files: dict[int, list[tuple[str, str | None]]] = {}
    if rows:
        for message_id, name, omitted in conn.execute(
                sa.select(attachments.c.message_id, attachments.c.filename, attachments.c.omitted)
                .where(attachments.c.message_id.in_([r.id for r in rows])).order_by(attachments.c.id)):
            files.setdefault(message_id, []).append((name, omitted))
    happened = conn.execute(sa.select(events.c.created_at, events.c.actor, events.c.kind, events.c.field,
                                      events.c.old, events.c.new, events.c.data)
                            .where(events.c.ticket_id == ticket_id).order_by(events.c.id)).all()
    agent_ids = {r.agent_id for r in rows if r.agent_id is not None}
    for e in happened:
        if e.actor.startswith("agent:") and e.actor[6:].isdigit():
            agent_ids.add(int(e.actor[6:]))
        if e.field == "assignee_id":
            agent_ids.update(int(v) for v in (e.old, e.new) if v and v.isdigit())
    people = _names(conn, agents, agent_ids)

    def name_of(field: str | None, value: str | None) -> str | None:
        if value is None or not value.isdigit():
            return value
        if field == "department_id":
            return department_names.get(int(value), value)
        if field == "assignee_id":
            return people.get(int(value), value)
        return value

    story_events, referrals = [], []
    for e in happened:
        data = e.data if isinstance(e.data, dict) else {}
        actor = e.actor
        if actor.startswith("agent:") and actor[6:].isdigit():
            actor = people.get(int(actor[6:]), actor)
        details = []
        for key in _DETAIL_KEYS:
            if data.get(key) in (None, "", [], {}):
                continue
            value: object = data[key]
            if key == "due" and isinstance(value, str):
                with contextlib.suppress(ValueError):  # not a time after all: shown as written
                    value = dt.datetime.fromisoformat(value)
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            details.append((key, value))
        if e.kind == "ticket.routed" and data.get("department") and not referrals:
            referrals.append(shown_as.get(str(data["department"]), str(data["department"])))
        if e.kind == "ticket.department":
            if not referrals and e.old:
                referrals.append(name_of("department_id", e.old) or "")
            referrals.append(name_of("department_id", e.new) or "—")
        story_events.append(StoryEvent(at=e.created_at, actor=actor, kind=e.kind, old=name_of(e.field, e.old),
                                       new=name_of(e.field, e.new), details=tuple(details)))
    story_messages = [StoryMessage(
        id=r.id, direction=r.direction, channel=r.channel, text=r.text, subject=r.subject, sender=r.sender,
        agent=people.get(r.agent_id) if r.agent_id is not None else None, automatic=bool(r.automatic),
        delivery_state=r.delivery_state, delivery_error=r.delivery_error, attempts=r.attempts or 0,
        created_at=r.created_at, sent_at=r.sent_at, delivered_at=r.delivered_at,
        attachments=tuple(files.get(r.id, ()))) for r in rows]
    return Story(state=state, department=department_names.get(state.department_id), messages=story_messages,
                 events=story_events, referrals=referrals)


# --- The reports' charts ----------------------------------------------------------------------------

def report_charts(report: Report, locale: Locale) -> dict[str, Markup]:
    """The four charts of the reports page, in the page's language and direction."""
    L = locale
    days = [L.day(d.day, short=True) for d in report.days]
    channels = sorted({c for d in report.days for c in d.new_by_channel},
                      key=lambda c: -sum(d.new_by_channel.get(c, 0) for d in report.days))
    volume = [charts.Series(L.word("channel", c), [d.new_by_channel.get(c, 0) for d in report.days]) for c in channels]
    totals = {c: sum(d.new_by_channel.get(c, 0) for d in report.days) for c in channels}
    busiest = max(report.days, key=lambda d: sum(d.new_by_channel.values()), default=None)
    volume_desc = (f"{L('New tickets per day by channel')}: {L.num(sum(totals.values()))} {L('in all')}; "
                   + "; ".join(f"{L.word('channel', c)} {L.num(n)}" for c, n in totals.items())
                   + (f". {L('busiest day')}: {L.day(busiest.day)} ({L.num(sum(busiest.new_by_channel.values()))})"
                      if busiest is not None and busiest.new_by_channel else ""))
    buckets = [L.word("bucket", b) for b in RESPONSE_BUCKETS]
    counts = [report.response_histogram.get(b, 0) for b in RESPONSE_BUCKETS]
    response_desc = (f"{L('First responses by business time taken')}: "
                     + "; ".join(f"{name} {L.num(n)}" for name, n in zip(buckets, counts)))
    breaches = [d.sla_breaches for d in report.days]
    worst = max(report.days, key=lambda d: d.sla_breaches, default=None)
    breach_desc = (f"{L('SLA breaches per day')}: {L.num(sum(breaches))} {L('in all')}"
                   + (f"; {L('most on')} {L.day(worst.day)} ({L.num(worst.sla_breaches)})"
                      if worst is not None and worst.sla_breaches else ""))
    scores = [d.csat_average if d.csat_count else None for d in report.days]
    scored = [(d, s) for d, s in zip(report.days, scores) if s is not None]
    csat_desc = (f"{L('Average satisfaction per day')}: "
                 + ("; ".join(f"{L.day(d.day)} {L.num(s, 1)}" for d, s in scored) or L("no scores")))
    number = L.num
    return {
        "volume": Markup(charts.stacked_bars(
            "chart-volume", title=L("New tickets per day by channel"), desc=volume_desc, categories=days,
            series=volume or [charts.Series(L("Tickets"), [0] * len(days))], x_label=L("Day"), y_label=L("Tickets"),
            rtl=L.fa, number=number)),
        "response": Markup(charts.bars(
            "chart-response", title=L("First responses by business time taken"), desc=response_desc,
            categories=buckets, values=counts, series_name=L("Responses"),
            x_label=L("Business time to first response"), y_label=L("Responses"), rtl=L.fa, number=number)),
        "breaches": Markup(charts.bars(
            "chart-breaches", title=L("SLA breaches per day"), desc=breach_desc, categories=days, values=breaches,
            series_name=L("Breaches"), x_label=L("Day"), y_label=L("Breaches"), rtl=L.fa, number=number)),
        "csat": Markup(charts.line(
            "chart-csat", title=L("Average satisfaction per day"), desc=csat_desc, categories=days, values=scores,
            series_name=L("Average score"), x_label=L("Day"), y_label=L("Score (1-5)"), low=1, high=5, step=1,
            rtl=L.fa, number=lambda v: L.num(v, 0 if float(v).is_integer() else 1))),
    }


# --- The pages --------------------------------------------------------------------------------------

@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(PAGES_DIR), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def _signed_in(handler: Callable[[Dashboard, Request, str], Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """A page for a signed-in manager; anyone else is sent to the login form, and back here after it."""
    @functools.wraps(handler)
    async def page(self: Dashboard, request: Request) -> Response:
        session = self.sessions.check(request.cookies.get(SESSION_COOKIE), self._now())
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/dashboard/login?" + urllib.parse.urlencode({"next": target}), 303,
                                    headers=_HEADERS)
        return await handler(self, request, session)
    return page


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of this site, never elsewhere."""
    if target and target.startswith("/dashboard") and "\\" not in target and target.isprintable() \
            and not target.startswith("/dashboard/login"):
        return target
    return "/dashboard"


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form (Starlette's parser needs python-multipart); None if it is too big or broken."""
    try:
        if int(request.headers.get("content-length") or 0) > _MAX_FORM_BYTES:
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return None
        fields = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (ValueError, UnicodeDecodeError):
        return None
    return {key: values[0] for key, values in fields.items()}


class Dashboard:
    """The dashboard's routes over the database; `calendar` gives the desk's business calendar (its zone
    and business hours), `report` builds the KPIs (default `gateway.reports.build_report`)."""

    def __init__(self, db: Database, tickets_service: TicketService, settings: Settings, *,
                 calendar: CalendarSource | None = None, report: ReportBuilder | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        token = settings.http.admin_token
        if not token:
            raise ValueError("the dashboard needs http.admin_token")
        self.db = db
        self.tickets = tickets_service
        self.token = token
        self.sessions = Sessions(token)
        self.calendar = calendar
        self.report = report or build_report
        self.complaint_tags = settings.reports.complaint_tags
        self.clock = clock
        # Behind an HTTPS proxy the browser sees https even when this server is reached over plain HTTP.
        self.secure_cookies = settings.http.public_url.startswith("https://")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/dashboard", self.queue, methods=["GET"]),
            Route("/dashboard/login", self.login, methods=["GET", "POST"]),
            Route("/dashboard/logout", self.logout, methods=["POST"]),
            Route("/dashboard/tickets/{ref}", self.ticket, methods=["GET"]),
            Route("/dashboard/reports", self.reports, methods=["GET"]),
            Mount("/dashboard/static", app=StaticFiles(directory=STATIC_DIR), name="dashboard-static"),
        ]

    # -- plumbing

    def _now(self) -> float:
        return self.clock().timestamp()

    def _zone(self) -> ZoneInfo:
        zone = getattr(self.calendar(), "zone", None) if self.calendar is not None else None
        return zone if isinstance(zone, ZoneInfo) else TEHRAN

    def _locale(self, request: Request) -> Locale:
        return Locale(_language(request)[0], self._zone(), self.clock())

    def _secure(self, request: Request) -> bool:
        return self.secure_cookies or request.url.scheme == "https"

    def _render(self, request: Request, locale: Locale, template: str, *, session: str | None,
                status: int = 200, **values: Any) -> HTMLResponse:
        other = "en" if locale.fa else "fa"
        query = {**request.query_params, "lang": other}
        html = _environment().get_template(template).render(
            L=locale, csrf=self.sessions.form_token(session) if session else None, signed_in=session is not None,
            switch_url=f"{request.url.path}?{urllib.parse.urlencode(query)}", path=request.url.path, **values)
        response = HTMLResponse(html, status_code=status, headers=_HEADERS)
        if _language(request)[1]:
            response.set_cookie(LANG_COOKIE, locale.lang, max_age=365 * 86400, path="/dashboard",
                                secure=self._secure(request), httponly=True, samesite="lax")
        return response

    # -- signing in and out

    async def login(self, request: Request) -> Response:
        locale = self._locale(request)
        now = self._now()
        if request.method == "GET":
            return self._login_form(request, locale, _safe_next(request.query_params.get("next")))
        form = await _form(request) or {}
        target = _safe_next(form.get("next"))
        if not self.sessions.login_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf", ""), now):
            return self._login_form(request, locale, target, error="The form had expired; please try again.",
                                    status=400)
        if not secret_matches(form.get("token", ""), self.token):
            return self._login_form(request, locale, target, error="The token is not right.", status=401)
        response = RedirectResponse(target, 303, headers=_HEADERS)
        response.set_cookie(SESSION_COOKIE, self.sessions.issue(now), max_age=int(self.sessions.lifetime),
                            path="/dashboard", secure=self._secure(request), httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/dashboard/login", secure=self._secure(request), httponly=True,
                               samesite="strict")
        return response

    def _login_form(self, request: Request, locale: Locale, target: str, *, error: str | None = None,
                    status: int = 200) -> Response:
        nonce = self.sessions.login_nonce(self._now())
        response = self._render(request, locale, "login.html.j2", session=None, status=status, error=error,
                                next=target, login_token=self.sessions.login_token(nonce))
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_FORM_SECONDS, path="/dashboard/login",
                            secure=self._secure(request), httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.check(cookie, self._now())
        form = await _form(request) or {}
        if session is not None and not self.sessions.form_ok(session, form.get("csrf", "")):
            return Response("The form token is missing or wrong.", 403, headers=_HEADERS)
        self.sessions.end(cookie, self._now())
        response = RedirectResponse("/dashboard/login", 303, headers=_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/dashboard", secure=self._secure(request), httponly=True,
                               samesite="strict")
        return response

    # -- pages

    @_signed_in
    async def queue(self, request: Request, session: str) -> Response:
        locale = self._locale(request)
        params = request.query_params
        view = await self.db.run_read(lambda conn: read_queue(
            conn, locale.now, department=params.get("department") or None, priority=params.get("priority") or None))
        return self._render(request, locale, "queue.html.j2", session=session, view=view,
                            sla_states=SLA_STATES, limit=URGENT_SHOWN)

    @_signed_in
    async def ticket(self, request: Request, session: str) -> Response:
        locale = self._locale(request)
        ref = request.path_params["ref"]
        ticket_id = parse_ticket_ref(ref)
        try:
            if ticket_id is None or ref.upper() != ticket_ref(ticket_id):
                raise TicketNotFound(ref)
            summary: TicketSummary = await self.tickets.summary(ticket_id)
            story = await self.db.run_read(lambda conn: read_story(conn, ticket_id))
        except TicketNotFound:
            return self._render(request, locale, "missing.html.j2", session=session, status=404, ref=ref)
        return self._render(request, locale, "ticket.html.j2", session=session, ticket=summary, story=story,
                            Direction=Direction)

    @_signed_in
    async def reports(self, request: Request, session: str) -> Response:
        locale = self._locale(request)
        today = locale.now.astimezone(locale.zone).date()
        first, last = today - dt.timedelta(days=DEFAULT_REPORT_DAYS - 1), today
        error = None
        try:
            if request.query_params.get("since"):
                first = parse_day(request.query_params["since"])
            if request.query_params.get("until"):
                last = parse_day(request.query_params["until"])
        except ValueError:
            error = "A date is not valid: use YYYY-MM-DD, or a Jalali YYYY/MM/DD."
        if error is None and not 0 <= (last - first).days < MAX_REPORT_DAYS:
            error = "The period must start before it ends, and span at most 400 days."
        if error is not None:
            first, last = today - dt.timedelta(days=DEFAULT_REPORT_DAYS - 1), today
        since = dt.datetime.combine(first, dt.time(), locale.zone).astimezone(dt.UTC)
        until = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), locale.zone).astimezone(dt.UTC)
        report = await self.report(self.db, since, until, calendar=self.calendar() if self.calendar else None,
                                   complaint_tags=self.complaint_tags, zone=locale.zone)
        return self._render(request, locale, "reports.html.j2", session=session, status=400 if error else 200,
                            error=error, report=report, first=first, last=last, charts=report_charts(report, locale))

