"""SMTP out (aiosmtplib): a pool of reused connections, and the one place SMTP failures get their meaning."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import aiosmtplib

from channels.email.settings import EmailSettings
from gateway.errors import AuthError, ChannelError, PermanentError, TransientError

#: A pooled connection idle this long is closed rather than reused (servers drop idle clients).
IDLE_MAX_S = 60.0


class PossiblySent(PermanentError):
    """The server got the whole message but never confirmed it: it may have gone out. Not resent blindly."""


class SmtpPool:
    """Up to `smtp_pool_size` SMTP sessions, each reused for one message after another."""

    def __init__(self, settings: EmailSettings, tls: ssl.SSLContext | None) -> None:
        self.settings = settings
        self.tls = tls
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self.opened = 0  # connections made so far, for health and tests

    async def send(self, sender: str, recipients: list[str], data: bytes) -> str:
        """Send one message; returns the server's answer. Raises TransientError, PermanentError or AuthError."""
        async with self._slots:
            client, reused = await self._take()
            try:
                try:
                    response = await _transaction(client, sender, recipients, data, reused=reused)
                except _Stale:
                    # The server had closed the idle connection before we wrote anything: start afresh.
                    client.close()
                    client, _ = await self._take(fresh=True)
                    response = await _transaction(client, sender, recipients, data, reused=False)
            except BaseException:
                client.close()  # after any failure the session's state is unknown: never reuse it
                raise
            self._idle.append((client, time.monotonic()))
            return response

    async def _take(self, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle and not fresh:
            client, since = self._idle.pop()
            if client.is_connected and time.monotonic() - since < IDLE_MAX_S:
                return client, True
            client.close()
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, timeout=s.timeout, tls_context=self.tls,
            use_tls=s.smtp_security == "ssl", start_tls=s.smtp_security == "starttls",
            username=(s.smtp_user or s.address) if s.smtp_password else None,
            password=s.smtp_password.reveal() if s.smtp_password else None,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise _failure(exc, "connect") from exc
        self.opened += 1
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await asyncio.wait_for(client.quit(), 5)
            client.close()


class _Stale(Exception):
    """A reused connection turned out closed before the first command: nothing was sent."""


async def _transaction(client: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes, *,
                       reused: bool) -> str:
    stage = "mail"
    try:
        await client.mail(sender)
        stage = "rcpt"
        for recipient in recipients:
            await client.rcpt(recipient)
        stage = "data"
        response = await client.data(data)
    except aiosmtplib.SMTPServerDisconnected as exc:
        if reused and stage == "mail":
            raise _Stale from exc
        raise _failure(exc, stage) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise _failure(exc, stage) from exc
    return f"{response.code} {response.message}"


def _failure(exc: BaseException, stage: str) -> ChannelError:
    """What an SMTP failure means for the outbox: retry, give up, or stop for bad credentials."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return AuthError(f"SMTP login refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        answer = f"SMTP {stage}: {exc.code} {exc.message}"
        if 400 <= exc.code < 500:
            return TransientError(answer)  # no delay named: the outbox's backoff (doubling) applies
        return PermanentError(answer)
    if stage == "data" and isinstance(exc, (TimeoutError, aiosmtplib.SMTPServerDisconnected, OSError)):
        return PossiblySent(
            f"SMTP server did not confirm the message after DATA ({type(exc).__name__}): it may have been "
            "delivered, so it is not sent again automatically; check with the customer and resend by hand")
    return TransientError(f"SMTP {stage}: {type(exc).__name__}: {exc}")
