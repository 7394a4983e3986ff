"""SmsChannel: Kavenegar callbacks in (200 only after the commit), replies out through the outbox with no
double SMS, delivery reports, and the paged inbox reconciled so that nothing a callback or a crash
missed is lost."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from channels.sms.callbacks import CallbackError, InboundSms, delivery_state, parse_delivery, parse_inbound
from channels.sms.client import INBOX_PAGE, KavenegarClient
from channels.sms.settings import SmsSettings
from channels.sms.text import parts, shorten
from gateway.addresses import Address, AddressError
from gateway.domain import AddressKind, ChannelKind
from gateway.errors import AuthError, ChannelError, PermanentError, Postponed, Unavailable
from gateway.http import TooLarge, body_within, caller, secret_matches
from gateway.inlet import Inlet
from gateway.messages import DeliveryReport, InboundMessage, OutboundMessage, Receipt, utcnow

log = logging.getLogger("kartabl.channels.sms")
T = TypeVar("T")

#: Kavenegar's final delivery states; the others (queued, at the operator) wait for a later word.
FINAL = {"delivered", "undelivered", "failed", "cancelled", "blocked"}
#: A callback body larger than this is refused: an SMS callback is a few hundred bytes.
MAX_CALLBACK_BYTES = 64 * 1024
_STATUS_BATCH = 500
_BACKOFF_CAP_S = 300.0


class SmsChannel:
    """Customers text the company's Kavenegar line; replies go back from it.

    Inbound is Kavenegar's callback (`/webhooks/kavenegar/<secret>/inbound`), answered 200 only once
    every message in it is committed; or, where no callback URL can be had, `sms/receive` polling.
    `sms/receive` marks what it returns read, so a crash between its answer and the commit would lose
    those messages: each batch is stored before anything else, and a periodic reconcile reads the
    paged inbox of read messages, so whatever was missed is stored then (ingest drops what it has).
    Replies carry their own localid; a retry asks Kavenegar whether that localid went out before
    sending again, so a timeout never makes a second SMS.
    """

    kind = ChannelKind.SMS

    def __init__(self, settings: SmsSettings) -> None:
        self.settings = settings
        key = settings.api_key.reveal() if settings.api_key else ""
        self.client = KavenegarClient(key, settings.api_host, settings.timeout)
        self.state = "starting"
        self.last_error: str | None = None
        self._inlet: Inlet | None = None
        self._stopping = asyncio.Event()
        self._halted_until = 0.0
        self._halt_reason: str | None = None

    def describe(self) -> dict[str, object]:
        halted = self._halted_until > time.monotonic()
        state = "halted" if halted else self.state
        found: dict[str, object] = {"state": "running" if state in ("running", "starting") else state,
                                    "receive": self.settings.receive}
        if halted:
            found["sending"] = f"paused: {self._halt_reason}"
        if self.last_error:
            found["last_error"] = self.last_error
        return found

    # -- life -----------------------------------------------------------------------------------

    @property
    def exclusive(self) -> bool:
        """sms/receive marks what it returns read: one process polls it. Callbacks go to any process,
        and there every process also runs the reconcile and status rounds (what they find is stored once)."""
        return self.settings.receive == "poll"

    async def start(self, deliver: Inlet) -> None:
        self._inlet = deliver
        self._stopping.clear()
        self.state = "running"
        loops = [self._every(self.settings.reconcile_interval, self.reconcile, "reconcile"),
                 self._every(self.settings.status_interval, self.check_statuses, "delivery status")]
        if self.settings.receive == "poll":
            loops.append(self._every(self.settings.poll_interval, self.receive_unread, "receive"))
        await asyncio.gather(*loops)

    async def stop(self) -> None:
        self._stopping.set()

    async def _every(self, interval: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
        """`work` now and every `interval` seconds until stopping; a failure waits longer, then again."""
        failures = 0
        while not self._stopping.is_set():
            try:
                await work()
                failures = 0
                self.state, self.last_error = "running", None
            except ChannelError as exc:
                failures += 1
                self.state, self.last_error = "reconnecting", str(exc)
                log.warning("sms: %s failed: %s; trying again", name, exc)
            wait = interval if not failures else min(_BACKOFF_CAP_S, interval * 2 ** failures) * random.uniform(0.5, 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    # -- inbound --------------------------------------------------------------------------------

    async def receive_unread(self) -> int:
        """Unread messages of the line, stored at once: Kavenegar marked them read as it answered. Not
        while the database is known to be away: they stay unread at Kavenegar instead."""
        assert self._inlet is not None
        self._inlet.check_ready()
        entries = await asyncio.to_thread(self.client.receive, self.settings.sender)
        return await self._store([_entry_sms(e) for e in entries], "sms/receive")

    async def reconcile(self) -> int:
        """What a callback never brought (unread) and what a crash lost between `sms/receive` and the
        commit (read, the last two days), stored now; messages already stored are dropped by ingest."""
        stored = await self.receive_unread() if self.settings.receive == "callback" else 0
        page = 1
        while not self._stopping.is_set():
            entries = await asyncio.to_thread(self.client.read_inbox, self.settings.sender, page)
            stored += await self._store([_entry_sms(e) for e in entries], "reconcile")
            if len(entries) < INBOX_PAGE:
                break
            page += 1
        return stored

    async def _store(self, found: Sequence[InboundSms], source: str) -> int:
        """Ingest every message (concurrently: one shared commit); returns how many were new."""
        assert self._inlet is not None
        messages = [m for m in (await asyncio.gather(*(self._message(sms, source) for sms in found))) if m]
        results = await asyncio.gather(*(self._inlet(m) for m in messages))
        return sum(1 for r in results if not r.duplicate)

    async def _message(self, sms: InboundSms, source: str) -> InboundMessage | None:
        try:
            sender = Address.parse(AddressKind.PHONE, sms.sender)
        except AddressError as exc:  # a service line's name, not a number: kept, not a ticket
            assert self._inlet is not None
            raw = f"from={sms.sender}\nto={sms.receptor}\nmessageid={sms.messageid}\n\n{sms.text}".encode()
            await self._inlet.quarantine(str(self.kind), raw, str(exc), f"{source} {sms.messageid}")
            return None
        return InboundMessage(channel=self.kind, provider_id=sms.messageid, sender=sender, text=sms.text,
                              received_at=sms.received_at or utcnow(), language=_language(sms.text),
                              raw={"to": sms.receptor, **dict(sms.extra)})

    # -- callbacks ------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        if not self.settings.callback_secret:
            return []
        return [Route("/webhooks/kavenegar/{secret}/inbound", self._inbound_callback, methods=["GET", "POST"]),
                Route("/webhooks/kavenegar/{secret}/delivery", self._delivery_callback, methods=["GET", "POST"])]

    async def _inbound_callback(self, request: Request) -> Response:
        """An SMS arrived: 200 only when every message in the call is committed, so Kavenegar calls
        again after a failure; a wrong secret is 404 (and logged), an unreadable call 400 (and kept)."""
        found = await self._callback(request, parse_inbound)
        if isinstance(found, Response):
            return found
        try:
            await self._store(found, "callback")
        except Exception as exc:  # the database away, a lost race replayed too often: Kavenegar calls again
            log.log(logging.DEBUG if isinstance(exc, Unavailable) else logging.WARNING,  # the former said once
                    "sms: could not store a callback's messages yet (%s: %s)", type(exc).__name__, exc)
            return PlainTextResponse("try again", status_code=503)
        return PlainTextResponse("ok")

    async def _delivery_callback(self, request: Request) -> Response:
        reports = await self._callback(request, parse_delivery)
        if isinstance(reports, Response):
            return reports
        for report in reports:
            await self._report(report.messageid, report.status)
        return PlainTextResponse("ok")

    async def _callback(self, request: Request, parse: Callable[..., list[T]]) -> list[T] | Response:
        """What a callback carries, or the answer it gets instead (wrong secret, not ready, unreadable)."""
        body = await self._callback_body(request)
        if isinstance(body, Response):
            return body
        try:
            return parse(request.method, request.url.query, request.headers.get("content-type"), body)
        except CallbackError as exc:
            return await self._unreadable(request, body, exc)

    async def _callback_body(self, request: Request) -> bytes | Response:
        if not secret_matches(request.path_params.get("secret", ""), self.settings.callback_secret):
            log.warning("sms: a callback to a wrong secret path from %s; ignored", caller(request))
            return PlainTextResponse("not found", status_code=404)
        if self._inlet is None:
            return PlainTextResponse("not ready", status_code=503)
        try:
            return await body_within(request, MAX_CALLBACK_BYTES)
        except TooLarge:
            return PlainTextResponse("too large for a Kavenegar callback", status_code=413)

    async def _unreadable(self, request: Request, body: bytes, exc: CallbackError) -> Response:
        assert self._inlet is not None
        raw = f"{request.method} ?{request.url.query}\n{request.headers.get('content-type', '')}\n\n".encode() + body
        await self._inlet.quarantine(str(self.kind), raw, str(exc), f"callback {request.url.path.rsplit('/', 1)[-1]}")
        return PlainTextResponse(f"unreadable: {exc}", status_code=400)

    # -- delivery reports ---------------------------------------------------------------------

    async def check_statuses(self) -> int:
        """Ask Kavenegar about replies sent a while ago with no delivery report yet."""
        assert self._inlet is not None
        waiting = await self._inlet.awaiting_report(str(self.kind), older_than=self.settings.status_after)
        told = 0
        for start in range(0, len(waiting), _STATUS_BATCH):
            chunk = waiting[start:start + _STATUS_BATCH]
            for entry in await asyncio.to_thread(self.client.status, chunk):
                told += await self._report(str(entry.get("messageid", "")), int(entry.get("status", 0)))
        return told

    async def _report(self, message_id: str, status: int) -> bool:
        state = delivery_state(status)
        if state not in FINAL or not message_id:
            return False
        assert self._inlet is not None
        return await self._inlet.report(DeliveryReport(
            self.kind, message_id, delivered=state == "delivered",
            error=None if state == "delivered" else f"{state} (Kavenegar status {status})"))

    # -- outbound -------------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> Receipt:
        """Send the reply from the line, shortened to max_parts with the ticket reference; on a retry,
        first ask whether this reply's localid already went out (a timeout that hid a send)."""
        if self._halted_until > time.monotonic():
            raise Postponed(f"SMS sending is paused: {self._halt_reason}",
                            retry_after=self._halted_until - time.monotonic())
        localid = _localid(message.key)
        receptor = _national(message.to.value)
        try:
            earlier = (await asyncio.to_thread(self.client.by_localid, localid)) if message.attempt > 1 else None
            if earlier is None:
                text = shorten(message.text, max_parts=self.settings.max_parts, ref=message.ticket_ref,
                               elsewhere=message.full_answer_on, language=message.language)
                earlier = await asyncio.to_thread(self.client.send, receptor, text, self.settings.sender, localid)
        except AuthError as exc:
            await self._halt(str(exc))
            raise Postponed(f"SMS sending is paused: {exc}", retry_after=self.settings.suspend_for) from exc
        self._resumed()
        if not earlier.get("messageid"):
            raise PermanentError(f"Kavenegar accepted the message without a messageid: {earlier}")
        return Receipt(provider_id=str(earlier["messageid"]))

    def fits(self, text: str) -> bool:
        """Whether a reply goes out whole (else it is shortened, and its full text sent where it fits)."""
        return parts(text) <= self.settings.max_parts

    async def _halt(self, reason: str) -> None:
        """No credit or a refused IP: stop sending for a while; tell the agents and the log once."""
        first = self._halted_until == 0.0
        self._halted_until = time.monotonic() + self.settings.suspend_for
        self._halt_reason = reason
        if first:
            log.error("sms: sending paused: %s; replies wait in the outbox and go out once it is fixed", reason)
            assert self._inlet is not None
            await self._inlet.alert(str(self.kind), f"SMS sending is paused: {reason}. Replies wait and go out "
                                                    f"once it is fixed.")

    def _resumed(self) -> None:
        if self._halted_until:
            log.info("sms: sending works again")
            self._halted_until, self._halt_reason = 0.0, None


def _entry_sms(entry: dict[str, Any]) -> InboundSms:
    """A message of sms/receive or the paged inbox, as a callback would have brought it."""
    date = entry.get("date")
    received = dt.datetime.fromtimestamp(date, dt.UTC) if isinstance(date, int | float) and date > 0 else None
    return InboundSms(messageid=str(entry.get("messageid", "")), sender=str(entry.get("sender", "")),
                      receptor=str(entry.get("receptor", "")), text=str(entry.get("message") or ""),
                      received_at=received, extra={})


def _localid(key: str) -> str:
    """Kavenegar's localid is a number: the outbox's stable key is kartabl-<message id>."""
    digits = key.rpartition("-")[2]
    if not digits.isdigit():
        raise PermanentError(f"no localid in the message key {key!r}")
    return digits


def _national(e164: str) -> str:
    """+989121234567 -> 09121234567, the form Kavenegar's receptor takes."""
    return "0" + e164[3:] if e164.startswith("+98") else e164


def _language(text: str) -> str | None:
    return "fa" if any("\u0600" <= ch <= "\u06ff" for ch in text) else None
