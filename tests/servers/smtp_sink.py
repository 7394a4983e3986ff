"""An SMTP peer for tests (aiosmtpd in the test's own event loop) that records what it receives and misbehaves on cue.

Standalone, for benchmarks: `python -m tests.servers.smtp_sink --port 0` prints `listening on HOST:PORT`,
accepts every message without parsing it, and on SIGTERM or SIGINT prints `received N` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import email
import email.message
import email.policy
import secrets
import signal
import warnings
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOSTNAME = "kartabl-sink"  # given, so aiosmtpd does not look up the machine's FQDN on every connection

Stage = Literal["connect", "mail", "rcpt", "data"]


@dataclasses.dataclass(frozen=True)
class Received:
    """One message as the sink got it; `session_id` numbers the connection it came over (1, 2, ...)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: email.message.EmailMessage
    session_id: int


@dataclasses.dataclass(frozen=True)
class _Fault:
    action: Literal["fail", "hang", "drop"]
    reply: str = ""


class SmtpSink:
    """An SMTP server on `host`, port 0, inside the running event loop; messages land in `received`.

    With `auth=(login, password)` every mail transaction needs AUTH PLAIN or LOGIN with exactly those
    credentials (offered without TLS: the sink is on loopback). Faults queued with fail_next(),
    hang_after_data() and drop_next() apply to the next transactions, in the order queued per stage.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.auth = auth
        self.received: list[Received] = []
        self.connections = 0
        self._faults: dict[Stage, collections.deque[_Fault]] = collections.defaultdict(collections.deque)
        self._server: asyncio.Server | None = None
        self._open: set[_SinkSMTP] = set()
        self._arrived = asyncio.Event()

    def __repr__(self) -> str:
        return f"<SmtpSink {self.host}:{self.port} received={len(self.received)} connections={self.connections}>"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_connection, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection (a hung reply is abandoned)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = [conn.handler_task for conn in self._open if conn.handler_task is not None]
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` messages arrived; returns all received so far."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            subjects = [r.message["Subject"] for r in self.received]
            raise TimeoutError(f"{len(subjects)} of {count} messages after {timeout}s: {subjects}") from None
        return list(self.received)

    def fail_next(self, stage: Literal["mail", "rcpt", "data"], code: int, text: str, times: int = 1) -> None:
        """Answer the next `times` MAIL, RCPT or end-of-DATA with `code text` (e.g. 451 or 550)."""
        self._queue(stage, _Fault("fail", f"{code} {text}"), times)

    def hang_after_data(self, times: int = 1) -> None:
        """Take the next message's body and never answer it; the message is recorded as received."""
        self._queue("data", _Fault("hang"), times)

    def drop_next(self, stage: Literal["connect", "mail", "data"], times: int = 1) -> None:
        """Close the connection without a reply: on connect (before the greeting), at MAIL FROM, or after
        the message's body, in which case the message is recorded as received, as a server that crashed
        after queueing it would have it."""
        self._queue(stage, _Fault("drop"), times)

    # --- aiosmtpd hooks (the handler is the sink itself) ---------------------------------------------

    async def handle_MAIL(self, server: _SinkSMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if fault := self._take("mail"):
            return await self._misbehave(server, fault)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: _SinkSMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if fault := self._take("rcpt"):
            return await self._misbehave(server, fault)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        fault = self._take("data")
        if fault is not None and fault.action == "fail":
            return fault.reply
        data = bytes(envelope.original_content or b"")
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.received.append(Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), data, message,
                                      server.connection_id))
        self._arrived.set()
        if fault is not None:
            return await self._misbehave(server, fault)
        return f"250 OK queued as {secrets.token_hex(6)}"

    # --- internals ----------------------------------------------------------------------------------

    def _new_connection(self) -> _SinkSMTP:
        options: dict[str, Any] = {"hostname": HOSTNAME, "enable_SMTPUTF8": True,
                                   "loop": asyncio.get_running_loop()}
        if self.auth is not None:
            options.update(auth_required=True, auth_require_tls=False, authenticator=self._authenticate)
        with warnings.catch_warnings():
            # Plain AUTH is what this loopback sink is for; aiosmtpd warns about it on every connection.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            return _SinkSMTP(self, **options)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self.auth is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = self.auth
        ok = auth_data.login == login.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)

    def _queue(self, stage: Stage, fault: _Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        self._faults[stage].extend([fault] * times)

    def _take(self, stage: Stage) -> _Fault | None:
        queue = self._faults[stage]
        return queue.popleft() if queue else None

    async def _misbehave(self, server: _SinkSMTP, fault: _Fault) -> str:
        if fault.action == "fail":
            return fault.reply
        if fault.action == "drop" and server.transport is not None:
            server.transport.close()
        # Never answer: the wait ends when the connection does (aiosmtpd cancels its handler then).
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, numbered per connection and known to the sink so stop() can close it."""

    def __init__(self, sink: SmtpSink, **options: Any) -> None:
        super().__init__(sink, **options)
        self.sink = sink
        self.connection_id = 0

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sink.connections += 1
        self.connection_id = self.sink.connections
        self.sink._open.add(self)
        super().connection_made(transport)
        if (fault := self.sink._take("connect")) and fault.action == "drop":
            transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._open.discard(self)
        super().connection_lost(error)


class _Counter:
    """The standalone sink's handler: accepts everything, parses nothing."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 OK"


async def _serve(host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    counter = _Counter()
    server = await loop.create_server(lambda: SMTP(counter, hostname=HOSTNAME, loop=loop), host, port)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await stopped.wait()
    server.close()
    return counter.count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    args = parser.parse_args(argv)
    count = asyncio.run(_serve(args.host, args.port))
    print(f"received {count}", flush=True)


if __name__ == "__main__":
    main()
