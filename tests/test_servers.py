"""The test servers themselves, each checked with real clients: Dovecot with imaplib and aioimaplib, the
SMTP sink with aiosmtplib and smtplib."""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.policy
import imaplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aioimaplib
import aiosmtplib
import pytest

import tests.servers.dovecot as dovecot_module
from tests.servers.dovecot import Dovecot, DovecotError
from tests.servers.fixtures import DovecotFactory
from tests.servers.smtp_sink import SmtpSink

REPO = Path(__file__).resolve().parent.parent


def raw_message(subject: str, body: str = "سلام، سفارشم نرسیده") -> bytes:
    message = email.message.EmailMessage()
    message["From"] = "sara@example.com"
    message["To"] = "support@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)  # CRLF, as IMAP carries it


# --- Dovecot --------------------------------------------------------------------------------------------


class ImapClient:
    """An aioimaplib client logged in to `server`, with a future that resolves when its connection drops."""

    def __init__(self, server: Dovecot, *, tls: bool = False) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        context = server.client_ssl_context() if tls else None
        self.imap = aioimaplib.IMAP4(server.host, server.port, timeout=5, ssl_context=context,
                                     conn_lost_cb=self._lost)
        self.server = server

    def _lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def login(self) -> aioimaplib.Response:
        await self.imap.wait_hello_from_server()
        return await self.imap.login(self.server.user, self.server.password)


@contextlib.asynccontextmanager
async def imap_client(server: Dovecot, *, tls: bool = False) -> AsyncIterator[ImapClient]:
    client = ImapClient(server, tls=tls)
    response = await client.login()
    assert response.result == "OK", response
    try:
        yield client
    finally:
        if not client.lost.done():
            await client.imap.logout()
            # aioimaplib's logout() leaves the transport open until the server hangs up; close it here so
            # it is not left to the garbage collector after this test's loop is gone.
            client.imap.protocol.transport.close()
        await asyncio.wait_for(client.lost, 5)


def test_dovecot_accepts_imaplib_with_its_password_only(dovecot: Dovecot) -> None:
    with dovecot.session() as imap:
        assert imap.select("INBOX") == ("OK", [b"0"])
    wrong = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        wrong.login(dovecot.user, "not-" + dovecot.password)
    wrong.logout()


async def test_dovecot_accepts_aioimaplib(dovecot: Dovecot) -> None:
    async with imap_client(dovecot) as client:
        assert client.imap.has_capability("IDLE")
        assert (await client.imap.select("INBOX")).result == "OK"


async def test_aioimaplib_response_shapes_the_imap_loop_relies_on(dovecot: Dovecot) -> None:
    """Pins what aioimaplib 2.0.3 hands back from Dovecot 2.3, line by line."""
    raw = raw_message("shapes")
    uid = dovecot.append(raw)
    async with imap_client(dovecot) as client:
        select = await client.imap.select("INBOX")
        assert select.result == "OK"
        assert b"1 EXISTS" in select.lines
        assert any(re.fullmatch(rb"OK \[UIDVALIDITY \d+\] UIDs valid", line) for line in select.lines)
        assert any(re.fullmatch(rb"OK \[UIDNEXT 2\] Predicted next UID", line) for line in select.lines)
        assert select.lines[-1].startswith(b"[READ-WRITE] Select completed")

        fetch = await client.imap.uid("fetch", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        assert fetch.result == "OK"
        head, body, close, done = fetch.lines
        assert re.fullmatch(rb'1 FETCH \(UID %d FLAGS \(\\Recent\) INTERNALDATE "[^"]+" RFC822\.SIZE %d '
                            rb"BODY\[\] \{%d\}" % (uid, len(raw), len(raw)), head), head
        assert isinstance(body, bytearray) and body == raw  # the literal, as a bytearray
        assert close == b")"
        assert done.startswith(b"Fetch completed")

        search = await client.imap.uid_search("ALL")
        assert search.lines[0] == b"%d" % uid and search.lines[-1].startswith(b"Search completed")
        # "*" is the highest UID in use, so a range above it still matches the last message (RFC 3501).
        assert (await client.imap.uid_search(f"UID {uid + 10}:*")).lines[0] == b"%d" % uid


async def test_a_selected_client_sees_new_mail_only_after_a_sync(dovecot: Dovecot) -> None:
    """Dovecot answers UID SEARCH from the session's view; NOOP (or IDLE, or a new SELECT) updates it."""
    dovecot.append(raw_message("first"))
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        dovecot.deliver(raw_message("second"))
        dovecot.append(raw_message("third"))
        assert (await client.imap.uid_search("ALL")).lines[0] == b"1"
        noop = await client.imap.noop()
        assert noop.lines[:2] == [b"3 EXISTS", b"3 RECENT"]
        assert (await client.imap.uid_search("ALL")).lines[0] == b"1 2 3"
        assert (await client.imap.uid_search("UID 1:* SEEN")).lines[0] == b""  # no match: an empty line


async def idle_until_pushed(client: ImapClient, put_mail: Callable[[], object]) -> tuple[list[bytes], float]:
    """Start IDLE, put mail in with `put_mail`, and return the first push and how long it took."""
    idle = await client.imap.idle_start(timeout=10)
    started = time.monotonic()
    put_mail()
    push = await client.imap.wait_server_push(timeout=5)
    latency = time.monotonic() - started
    client.imap.idle_done()
    assert (await asyncio.wait_for(idle, 5)).result == "OK"
    return push, latency


async def test_delivered_mail_is_pushed_to_a_client_in_idle(dovecot: Dovecot) -> None:
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        push, latency = await idle_until_pushed(client, lambda: dovecot.deliver(raw_message("delivered")))
    assert b"1 EXISTS" in push
    assert latency < 3, latency  # Dovecot notices at once (inotify) and tells IDLE clients ~0.5 s later
    assert dovecot.fetch_all() == [raw_message("delivered")]


async def test_appended_mail_is_pushed_to_a_client_in_idle(dovecot: Dovecot) -> None:
    dovecot.append(raw_message("before"))
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        push, latency = await idle_until_pushed(client, lambda: dovecot.append(raw_message("appended")))
    assert b"2 EXISTS" in push
    assert latency < 3, latency


def test_append_returns_the_new_uid_and_flags_read_back(dovecot: Dovecot) -> None:
    assert dovecot.append(raw_message("one")) == 1
    assert dovecot.append(raw_message("two")) == 2
    with dovecot.session() as imap:
        imap.select("INBOX")
        assert imap.uid("STORE", "2", "+FLAGS", r"(\Seen \Flagged)")[0] == "OK"
    assert dovecot.messages() == {1: set(), 2: {"\\Seen", "\\Flagged"}}


def test_folders_hold_their_own_mail(dovecot: Dovecot) -> None:
    with pytest.raises(DovecotError, match="create_folder"):
        dovecot.deliver(raw_message("lost"), "Archive")
    dovecot.create_folder("Archive")
    dovecot.create_folder("Archive")  # already there: fine
    dovecot.deliver(raw_message("archived"), "Archive")
    # A delivered message gets its UID when Dovecot next scans the folder, which APPEND does not do.
    assert dovecot.append(raw_message("appended"), "Archive") == 1
    assert dovecot.messages("Archive") == {1: set(), 2: set()}
    assert dovecot.messages() == {}
    assert dovecot.fetch_all("Archive") == [raw_message("appended"), raw_message("archived")]


def test_reset_uidvalidity_keeps_the_messages_under_new_uids(dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.append(raw_message(f"kept {n}"))
    with dovecot.session() as imap:
        imap.select("INBOX")
        imap.uid("STORE", "2", "+FLAGS", r"(\Seen)")
    before, bodies = dovecot.uidvalidity(), dovecot.fetch_all()
    port = dovecot.port

    dovecot.reset_uidvalidity()
    assert dovecot.uidvalidity() != before
    assert dovecot.port == port and dovecot.running
    assert dovecot.fetch_all() == bodies
    assert dovecot.messages() == {1: set(), 2: {"\\Seen"}, 3: set()}

    second = dovecot.uidvalidity()
    dovecot.reset_uidvalidity(first_uid=100)
    assert dovecot.uidvalidity() not in (before, second)
    assert dovecot.messages() == {100: set(), 101: {"\\Seen"}, 102: set()}
    assert dovecot.fetch_all() == bodies
    assert dovecot.append(raw_message("after")) == 103


async def test_a_client_selected_during_reset_uidvalidity_is_disconnected(dovecot: Dovecot) -> None:
    dovecot.append(raw_message("old"))
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        dovecot.reset_uidvalidity()
        await asyncio.wait_for(client.lost, 5)


async def test_drop_connections_disconnects_a_client_in_idle_with_a_bye(dovecot: Dovecot) -> None:
    dovecot.drop_connections()  # nobody connected yet: not an error
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        idle = await client.imap.idle_start(timeout=10)
        dovecot.drop_connections()
        assert await client.imap.wait_server_push(timeout=5) == [b"BYE Server shutting down."]
        await asyncio.wait_for(client.lost, 5)
        # aioimaplib leaves a command pending on a lost connection; only conn_lost_cb tells.
        assert not idle.done()
        idle.cancel()
    with dovecot.session() as imap:  # the server itself is still up
        assert imap.select("INBOX")[0] == "OK"


async def test_kill_drops_connections_and_a_restart_keeps_port_and_mail(dovecot: Dovecot) -> None:
    dovecot.append(raw_message("survivor"))
    port = dovecot.port
    async with imap_client(dovecot) as client:
        await client.imap.select("INBOX")
        dovecot.kill()
        assert not dovecot.running
        await asyncio.wait_for(client.lost, 5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot.host, port), timeout=5).close()
    dovecot.start()
    assert dovecot.port == port
    assert dovecot.fetch_all() == [raw_message("survivor")]


async def test_tls_instance_accepts_a_tls_client_and_refuses_a_plain_one(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(tls=True)
    with server.session() as imap:  # imaplib.IMAP4_SSL with client_ssl_context()
        assert imap.select("INBOX")[0] == "OK"
    async with imap_client(server, tls=True) as client:
        assert (await client.imap.select("INBOX")).result == "OK"
    with socket.create_connection((server.host, server.port), timeout=5) as plain:
        plain.sendall(b"a1 CAPABILITY\r\n")
        assert plain.recv(100) == b""  # no greeting, no answer: Dovecot closes a non-TLS connection
    with (socket.create_connection((server.host, server.port), timeout=5) as raw,
          pytest.raises(ssl.SSLCertVerificationError)):  # the certificate is not one the system trusts
        ssl.create_default_context().wrap_socket(raw, server_hostname=server.host)


async def test_idle_notify_false_does_not_advertise_idle(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(idle_notify=False)
    greeting = imaplib.IMAP4(server.host, server.port, timeout=5)
    assert "IDLE" not in greeting.capabilities and "UIDPLUS" in greeting.capabilities
    greeting.login(server.user, server.password)
    assert b"IDLE" not in greeting.capability()[1][0].split()
    greeting.logout()
    async with imap_client(server) as client:
        assert not client.imap.has_capability("IDLE")
        assert client.imap.has_capability("MOVE")
    server.deliver(raw_message("polled"))
    assert server.messages() == {1: set()}


def test_a_failed_start_shows_dovecots_own_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dovecot_module, "render_config", lambda server, port: "protocols = carrier-pigeon\n")
    server = Dovecot(tmp_path)
    with pytest.raises(DovecotError, match="carrier-pigeon"):
        server.start()
    assert not server.running
    server.close()


def test_a_port_taken_before_dovecot_binds_it_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = dovecot_module._free_port
        monkeypatch.setattr(dovecot_module, "_free_port", lambda host: next(ports, None) or real_free_port(host))
        server = Dovecot(tmp_path)
        try:
            server.start()
            assert server.port not in (0, taken)
            assert "Address already in use" in server.log_tail()
        finally:
            server.close()


def test_without_dovecot_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dovecot_module, "DOVECOT", tmp_path / "no-dovecot")
    with pytest.raises(DovecotError, match=re.escape(dovecot_module.NOT_INSTALLED)):
        Dovecot(tmp_path)


# --- SMTP sink ------------------------------------------------------------------------------------------


def outbound(subject: str, to: str = "sara@example.com") -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = "support@example.com"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("پاسخ پشتیبانی")
    return message


async def test_sink_records_what_aiosmtplib_sends(smtp_sink: SmtpSink) -> None:
    await aiosmtplib.send(outbound("first"), hostname=smtp_sink.host, port=smtp_sink.port, timeout=5)
    [got] = await smtp_sink.wait_for(1)
    assert got.mail_from == "support@example.com"
    assert got.rcpt_tos == ("sara@example.com",)
    assert got.message["Subject"] == "first"
    assert got.message.get_content().strip() == "پاسخ پشتیبانی"
    assert got.data.startswith(b"From: support@example.com\r\n")
    assert got.session_id == 1 and smtp_sink.connections == 1


async def test_sink_records_what_smtplib_sends(smtp_sink: SmtpSink) -> None:
    def send() -> None:
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
            client.send_message(outbound("blocking"), to_addrs=["a@example.com", "b@example.com"])

    await asyncio.to_thread(send)  # the sink lives in this loop: a blocking client must run beside it
    [got] = await smtp_sink.wait_for(1)
    assert got.rcpt_tos == ("a@example.com", "b@example.com")
    assert got.message["Subject"] == "blocking"


async def test_wait_for_says_what_did_arrive(smtp_sink: SmtpSink) -> None:
    await aiosmtplib.send(outbound("only one"), hostname=smtp_sink.host, port=smtp_sink.port, timeout=5)
    with pytest.raises(TimeoutError, match=r"1 of 2 messages after 0.05s: \['only one'\]"):
        await smtp_sink.wait_for(2, timeout=0.05)


async def test_fail_next_answers_with_the_code_at_that_stage(smtp_sink: SmtpSink) -> None:
    where = {"hostname": smtp_sink.host, "port": smtp_sink.port, "timeout": 5}
    smtp_sink.fail_next("mail", 451, "4.3.0 try again later")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as sender:
        await aiosmtplib.send(outbound("m"), **where)
    assert (sender.value.code, sender.value.message) == (451, "4.3.0 try again later")

    smtp_sink.fail_next("rcpt", 550, "5.1.1 no such user")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as recipients:
        await aiosmtplib.send(outbound("r"), **where)
    assert [r.code for r in recipients.value.recipients] == [550]

    smtp_sink.fail_next("data", 451, "4.7.1 greylisted", times=2)
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPDataError) as data:
            await aiosmtplib.send(outbound("d"), **where)
        assert data.value.code == 451
    assert smtp_sink.received == []

    await aiosmtplib.send(outbound("fine"), **where)  # the faults are used up
    assert [r.message["Subject"] for r in await smtp_sink.wait_for(1)] == ["fine"]


async def test_fail_next_reaches_smtplib_too(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next("rcpt", 550, "5.1.1 no such user")

    def send() -> None:
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
            client.send_message(outbound("refused"))

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send)
    assert refused.value.recipients == {"sara@example.com": (550, b"5.1.1 no such user")}


async def test_hang_after_data_makes_aiosmtplib_time_out_with_the_message_received(smtp_sink: SmtpSink) -> None:
    smtp_sink.hang_after_data()
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(outbound("in doubt"), hostname=smtp_sink.host, port=smtp_sink.port, timeout=0.3)
    [got] = await smtp_sink.wait_for(1)
    assert got.message["Subject"] == "in doubt"


async def test_drop_next_closes_the_connection_at_each_stage(smtp_sink: SmtpSink) -> None:
    where = {"hostname": smtp_sink.host, "port": smtp_sink.port, "timeout": 5}
    smtp_sink.drop_next("connect")
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.send(outbound("c"), **where)
    smtp_sink.drop_next("mail")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(outbound("m"), **where)
    assert smtp_sink.received == []
    smtp_sink.drop_next("data")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(outbound("d"), **where)
    assert [r.message["Subject"] for r in smtp_sink.received] == ["d"]  # got, never acknowledged
    assert smtp_sink.connections == 3


async def test_auth_accepts_plain_and_login_with_the_credentials_only() -> None:
    sink = SmtpSink(auth=("kartabl", "s3cret"))
    await sink.start()
    try:
        for mechanism in ("auth_plain", "auth_login"):
            async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=5) as client:
                await getattr(client, mechanism)("kartabl", "s3cret")
                await client.send_message(outbound(mechanism))
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await aiosmtplib.send(outbound("x"), hostname=sink.host, port=sink.port, timeout=5,
                                  username="kartabl", password="guess")
        assert refused.value.code == 535
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as anonymous:
            await aiosmtplib.send(outbound("x"), hostname=sink.host, port=sink.port, timeout=5)
        assert anonymous.value.code == 530
        assert [r.message["Subject"] for r in sink.received] == ["auth_plain", "auth_login"]
    finally:
        await sink.stop()


async def test_connections_are_counted_so_reuse_shows(smtp_sink: SmtpSink) -> None:
    async with aiosmtplib.SMTP(hostname=smtp_sink.host, port=smtp_sink.port, timeout=5) as client:
        await client.send_message(outbound("one"))
        await client.send_message(outbound("two"))
    assert smtp_sink.connections == 1
    await aiosmtplib.send(outbound("three"), hostname=smtp_sink.host, port=smtp_sink.port, timeout=5)
    assert smtp_sink.connections == 2
    assert [r.session_id for r in await smtp_sink.wait_for(3)] == [1, 1, 2]


async def test_stop_abandons_a_hung_reply() -> None:
    sink = SmtpSink()
    await sink.start()
    sink.hang_after_data()
    sending = asyncio.create_task(
        aiosmtplib.send(outbound("hung"), hostname=sink.host, port=sink.port, timeout=5))
    await sink.wait_for(1)
    await asyncio.wait_for(sink.stop(), 5)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await sending


async def test_standalone_sink_prints_its_port_and_the_count() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.servers.smtp_sink", "--port", "0", cwd=REPO,
        stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        host, port = re.fullmatch(r"listening on (127\.0\.0\.1):(\d+)\n", line).groups()
        async with aiosmtplib.SMTP(hostname=host, port=int(port), timeout=5) as client:
            for n in range(3):
                await client.send_message(outbound(f"bench {n}"))
        process.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(process.stdout.read(), 10)).decode() == "received 3\n"
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
