"""IMAP in (aioimaplib): one folder read by IDLE push or polling, acknowledged only after the commit.

The cursor is (UIDVALIDITY, last UID handled), kept through the inlet. A message is fetched with
BODY.PEEK[] (so reading does not mark it), handed to the core, and only once the core committed it
is it flagged \\Seen or moved. A crash anywhere in between means it is fetched again, and the core
drops it as a duplicate of its Message-ID; a new UIDVALIDITY does the same for the whole folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aioimaplib
from aioimaplib import aioimaplib as _imap

from channels.email.settings import EmailSettings
from gateway.errors import AuthError

log = logging.getLogger("kartabl.channels.email")

#: Longest wait between reconnect attempts.
RECONNECT_CAP_S = 60.0
_FETCH_LINE = re.compile(rb"^\d+ FETCH \((?P<attrs>.*?)(?:BODY\[(?P<section>[A-Z]*)\] \{(?P<size>\d+)\})?$")
_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_UID_LIST = re.compile(rb"[\d ]*")
_PUSHED = re.compile(rb"^\d+ (EXISTS|RECENT)$")


class _Protocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, noting every EXISTS the server sends.

    Outside IDLE, aioimaplib drops an untagged EXISTS that comes with another command's answer (a
    message arrived during our FETCH or SEARCH); the server then counts it as reported and will not
    push it at the next IDLE. `new_mail` keeps that news so the mailbox looks again before idling.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.new_mail = False

    def _untagged_response(self, line: bytes) -> object:
        if _PUSHED.match(line[2:] if line.startswith(b"* ") else line):
            self.new_mail = True
        return super()._untagged_response(line)


    def _handle_responses(self, data: bytes, line_handler: Callable[[bytes, Any], Any],
                          current_cmd: Any = None) -> None:
        """aioimaplib's reading of received data, the same steps as a loop over positions.

        The library's version calls itself once per line and copies the rest of the data at each
        (`partition`), and again after each literal: time quadratic in what one read brings (up to
        256 KiB, a few hundred lines when fetching a batch), and a recursion as deep as it has lines.
        """
        pos, end = 0, len(data)
        while True:
            if pos >= end:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise _imap.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                wanted = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                current_cmd.append_literal_data(data[pos:pos + wanted])
                pos += wanted
                if current_cmd.wait_literal_data():
                    raise _imap.IncompleteRead(current_cmd)
            stop = data.find(b"\r\n", pos)
            if stop < 0:
                raise _imap.IncompleteRead(current_cmd, data[pos:])
            line, pos = data[pos:stop], stop + 2
            cmd = line_handler(line, current_cmd)
            literal = _imap.literal_data_re.match(line)
            if literal:
                if cmd is None:
                    cmd = _imap.Command("NIL", "unused")
                cmd.begin_literal_data(int(literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    async def fetch(self, message_set: str, message_parts: str, by_uid: bool = False,
                    timeout: float | None = None) -> aioimaplib.Response:
        return await self.execute(_FetchCommand(
            self.new_tag(), message_set, message_parts, prefix="UID" if by_uid else "", loop=self.loop,
            timeout=timeout))


class _FetchCommand(aioimaplib.FetchCommand):
    """aioimaplib's FETCH, asking "is this answer complete?" in constant time.

    The library's own test joins and rescans every line received so far for each new line: time
    quadratic in the batch, a quarter of this process's work when draining a mailbox. Here the
    parentheses still open in the current message's answer are counted as lines arrive; as in the
    library, literal data (a message's bytes, which arrive as a bytearray) is not counted.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._open = 0
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if isinstance(line, bytes):
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._open = 0
            self._open += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._open != 0


class _Client(aioimaplib.IMAP4):
    protocol: _Protocol

    def create_client(self, host: str, port: int, loop: asyncio.AbstractEventLoop | None,
                      conn_lost_cb: Callable[[Exception | None], None] | None = None,
                      ssl_context: ssl.SSLContext | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        self.protocol = _Protocol(loop, conn_lost_cb)
        self._client_task = loop.create_task(
            loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context))


class ImapError(Exception):
    """The server refused a command or the connection broke: reconnect and carry on."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes
    size: int
    internal_date: dt.datetime | None
    headers_only: bool  # the message was over max_message_bytes: only its header was fetched


#: What the channel does with a batch: store every message, and return once all are committed.
Handle = Callable[[Sequence[Fetched], str], Awaitable[None]]


@dataclasses.dataclass
class Cursor:
    uidvalidity: int
    last_uid: int


class Mailbox:
    """Reads one IMAP folder into the gateway until stopped; reconnects with backoff and jitter."""

    def __init__(self, settings: EmailSettings, tls: ssl.SSLContext | None, handle: Handle,
                 load_cursor: Callable[[], Awaitable[dict | None]],
                 save_cursor: Callable[[dict], Awaitable[None]]) -> None:
        self.settings = settings
        self.tls = tls
        self.handle = handle
        self.load_cursor = load_cursor
        self.save_cursor = save_cursor
        self.state = "starting"
        self.last_error: str | None = None
        self.pushes = 0
        self._stopping = asyncio.Event()
        self._client: _Client | None = None
        self._lost = asyncio.Event()

    async def run(self) -> None:
        """Read mail until `stop()`. A refused login raises AuthError (the runtime restarts us slowly)."""
        self._stopping.clear()
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self._session()
                delay = 1.0
            except AuthError:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, ImapError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.state = "reconnecting"
                log.warning("email: IMAP %s:%s failed (%s); reconnecting in %.0fs", self.settings.imap_host,
                            self.settings.imap_port, self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1.0))
                delay = min(RECONNECT_CAP_S, delay * 2)
            finally:
                await self._disconnect()
        self.state = "stopped"

    async def stop(self) -> None:
        self._stopping.set()

    # -- one connection ---------------------------------------------------------------------------

    async def _session(self) -> None:
        client = await self._connect()
        uidvalidity = await self._select(client)
        cursor = await self._cursor(uidvalidity)
        idle = self.settings.idle and client.has_capability("IDLE")
        self.state = "idle" if idle else "polling"
        loop = asyncio.get_running_loop()
        reconcile_at = 0.0  # a full check of unread mail first: it catches what a dropped connection missed
        while not self._stopping.is_set():
            client.protocol.new_mail = False  # what arrives from here on is found by the next look
            # Dovecot's view of the folder moves on only at a sync (NOOP, IDLE, SELECT): without one,
            # UID SEARCH would not see mail delivered since the last.
            await self._noop(client)
            if loop.time() >= reconcile_at:
                await self._reconcile(client, cursor)
                reconcile_at = loop.time() + self.settings.reconcile_interval
            else:
                await self._drain(client, cursor)
            if client.protocol.new_mail:
                continue  # mail arrived while we were busy: look again before idling
            wait = min(self.settings.idle_renew if idle else self.settings.poll_interval,
                       max(0.0, reconcile_at - loop.time()))
            if idle:
                await self._idle(client, wait)
            else:
                await self._sleep(wait)
            if self._lost.is_set():
                raise ImapError("the server closed the connection")

    async def _connect(self) -> _Client:
        s = self.settings
        self._lost.clear()
        client = _Client(host=s.imap_host, port=s.imap_port, timeout=s.timeout,
                                  conn_lost_cb=lambda exc: self._lost.set(),
                                  ssl_context=self.tls if s.imap_security == "ssl" else None)
        self._client = client
        await client.wait_hello_from_server()
        response = await client.login(s.imap_user or s.address, s.imap_password.reveal())
        if response.result != "OK":
            raise AuthError(f"IMAP login refused for {s.imap_user or s.address}: {_text(response)}")
        return client

    async def _select(self, client: _Client) -> int:
        response = await client.select(_quote(self.settings.folder))
        if response.result != "OK":
            raise ImapError(f"cannot open folder {self.settings.folder!r}: {_text(response)}")
        for line in response.lines:
            if isinstance(line, bytes) and (match := _UIDVALIDITY.search(line)):
                return int(match.group(1))
        raise ImapError(f"the server named no UIDVALIDITY for {self.settings.folder!r}")

    async def _noop(self, client: _Client) -> None:
        response = await client.noop()
        if response.result != "OK":
            raise ImapError(f"NOOP refused: {_text(response)}")

    async def _cursor(self, uidvalidity: int) -> Cursor:
        stored = await self.load_cursor()
        if stored and stored.get("uidvalidity") == uidvalidity:
            return Cursor(uidvalidity, int(stored.get("last_uid", 0)))
        if stored:
            log.warning("email: %s has a new UIDVALIDITY (%s, was %s): reading its unread mail again; "
                        "messages already stored are recognised by Message-ID",
                        self.settings.folder, uidvalidity, stored.get("uidvalidity"))
        return Cursor(uidvalidity, 0)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if client.has_pending_idle():
                client.idle_done()
            await asyncio.wait_for(client.logout(), 2)
        with contextlib.suppress(Exception):
            if client.protocol.transport is not None:
                client.protocol.transport.close()

    # -- reading ----------------------------------------------------------------------------------

    async def _reconcile(self, client: _Client, cursor: Cursor) -> None:
        """Everything not yet handled: new UIDs past the cursor, and any unhandled mail before it."""
        pending = "ALL" if self.settings.move_to else "UNSEEN"
        uids = set(await self._search(client, pending))
        uids |= {u for u in await self._search(client, f"UID {cursor.last_uid + 1}:*") if u > cursor.last_uid}
        await self._process(client, sorted(uids), cursor)

    async def _drain(self, client: _Client, cursor: Cursor) -> None:
        uids = [u for u in await self._search(client, f"UID {cursor.last_uid + 1}:*") if u > cursor.last_uid]
        await self._process(client, uids, cursor)

    async def _search(self, client: _Client, criteria: str) -> list[int]:
        response = await client.uid_search(criteria, charset=None)
        if response.result != "OK":
            raise ImapError(f"UID SEARCH {criteria} refused: {_text(response)}")
        uids: list[int] = []
        for line in response.lines[:-1]:  # aioimaplib strips "* SEARCH"; the last line is the tagged status
            if isinstance(line, bytes) and _UID_LIST.fullmatch(line):  # not a stray "5 EXISTS"
                uids += [int(u) for u in line.split()]
        return uids

    async def _process(self, client: _Client, uids: list[int], cursor: Cursor) -> None:
        """Fetch, store, acknowledge and move the cursor, batch by batch, in UID order.

        While one batch is parsed and committed, the next is fetched: the connection and the
        database work at once. A batch is acknowledged, and the cursor moved past it, only after
        its commit, and always before the next batch's.
        """
        storing: tuple[asyncio.Task[None], list[int], list[Fetched]] | None = None
        try:
            for chunk in _batches(uids, self.settings.fetch_batch):
                fetched = await self._fetch(client, chunk)
                if storing is not None:
                    await self._finish(client, cursor, *storing)
                storing = (asyncio.create_task(self.handle(fetched, self.settings.folder)), chunk, fetched)
            if storing is not None:
                await self._finish(client, cursor, *storing)
                storing = None
        finally:
            if storing is not None:  # the connection failed meanwhile: the batch's commit still counts
                await asyncio.gather(storing[0], return_exceptions=True)

    async def _finish(self, client: _Client, cursor: Cursor, stored: asyncio.Task[None], chunk: list[int],
                      fetched: list[Fetched]) -> None:
        await stored
        await self._acknowledge(client, [f.uid for f in fetched])
        cursor.last_uid = max(cursor.last_uid, *chunk)
        await self.save_cursor({"uidvalidity": cursor.uidvalidity, "last_uid": cursor.last_uid})

    async def _fetch(self, client: _Client, uids: list[int]) -> list[Fetched]:
        sizes = await self._sizes(client, uids)
        limit = self.settings.max_message_bytes
        small = [u for u in uids if sizes.get(u, 0) <= limit]
        large = [u for u in uids if sizes.get(u, 0) > limit]
        found: dict[int, Fetched] = {}
        if small:
            for item in await self._fetch_parts(client, small, "BODY.PEEK[]", sizes):
                found[item.uid] = item
        if large:
            for item in await self._fetch_parts(client, large, "BODY.PEEK[HEADER]", sizes):
                found[item.uid] = dataclasses.replace(item, headers_only=True)
        return [found[u] for u in uids if u in found]  # a UID expunged meanwhile is simply gone

    async def _sizes(self, client: _Client, uids: list[int]) -> dict[int, int]:
        response = await client.uid("fetch", _uid_set(uids), "(UID RFC822.SIZE)")
        if response.result != "OK":
            raise ImapError(f"UID FETCH sizes refused: {_text(response)}")
        sizes = {}
        for line in response.lines:
            if isinstance(line, bytes) and (uid := _UID.search(line)) and (size := _SIZE.search(line)):
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def _fetch_parts(self, client: _Client, uids: list[int], part: str,
                           sizes: dict[int, int]) -> list[Fetched]:
        response = await client.uid("fetch", _uid_set(uids), f"(UID INTERNALDATE {part})")
        if response.result != "OK":
            raise ImapError(f"UID FETCH refused: {_text(response)}")
        return parse_fetch(response.lines, sizes)

    async def _acknowledge(self, client: _Client, uids: list[int]) -> None:
        """Tell the server these are handled: flag \\Seen, or move them to the processed folder."""
        if not uids:
            return
        target = self.settings.move_to
        if not target:
            response = await client.uid("store", _uid_set(uids), "+FLAGS.SILENT (\\Seen)")
        elif client.has_capability("MOVE"):
            response = await client.uid("move", _uid_set(uids), _quote(target))
        else:
            response = await client.uid("copy", _uid_set(uids), _quote(target))
            if response.result == "OK":
                response = await client.uid("store", _uid_set(uids), "+FLAGS.SILENT (\\Deleted)")
            if response.result == "OK":
                response = await client.expunge()
        if response.result != "OK":
            raise ImapError(f"could not mark handled messages: {_text(response)}")

    # -- waiting ----------------------------------------------------------------------------------

    async def _idle(self, client: _Client, wait: float) -> None:
        """IDLE until the server pushes new mail, `wait` runs out, the connection drops or we stop."""
        queue = client.protocol.idle_queue
        while not queue.empty():  # pushes and renewal marks left from the previous IDLE are stale now
            queue.get_nowait()
        idle = await asyncio.wait_for(client.idle_start(timeout=wait), self.settings.timeout)
        try:
            while True:
                push = asyncio.ensure_future(client.wait_server_push(timeout=wait + self.settings.timeout))
                watchers = [asyncio.ensure_future(e.wait()) for e in (self._stopping, self._lost)]
                done, _ = await asyncio.wait([push, idle, *watchers], return_when=asyncio.FIRST_COMPLETED)
                for task in (push, *watchers):
                    task.cancel()
                if push in done and not push.cancelled() and push.exception() is None:
                    lines = push.result()
                    if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        return  # time to renew the IDLE (and maybe reconcile)
                    if any(isinstance(ln, bytes) and _PUSHED.match(ln) for ln in lines):
                        self.pushes += 1
                        return
                    continue  # EXPUNGE, FETCH flag changes: nothing to read
                if push in done and not push.cancelled() and isinstance(push.exception(), TimeoutError):
                    raise ImapError("IDLE got no answer from the server in time")
                return
        finally:
            await self._end_idle(client, idle)

    async def _end_idle(self, client: _Client, idle: asyncio.Future) -> None:
        if self._lost.is_set():
            idle.cancel()
            return
        if client.has_pending_idle():
            client.idle_done()
        try:
            await asyncio.wait_for(idle, self.settings.timeout)
        except TimeoutError:
            raise ImapError("the server did not end IDLE in time") from None

    async def _sleep(self, wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)


def parse_fetch(lines: Sequence[bytes | bytearray], sizes: dict[int, int] | None = None) -> list[Fetched]:
    """The messages in an aioimaplib FETCH response: attribute lines each followed by their literal."""
    found: list[Fetched] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not isinstance(line, bytes) or not (match := _FETCH_LINE.match(line)) or match.group("size") is None:
            continue
        raw = bytes(lines[index]) if index < len(lines) else b""
        index += 1
        trailer = lines[index] if index < len(lines) and isinstance(lines[index], bytes) else b""
        attrs = match.group("attrs") + b" " + trailer
        uid = _UID.search(attrs)
        if uid is None:
            continue
        number = int(uid.group(1))
        found.append(Fetched(uid=number, raw=raw, size=(sizes or {}).get(number, len(raw)),
                             internal_date=_internal_date(_DATE.search(attrs)), headers_only=False))
    return found


def _internal_date(match: re.Match[bytes] | None) -> dt.datetime | None:
    if match is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(match.group(1).decode("ascii").replace("-", " ", 2))
    except (TypeError, ValueError):
        return None


def _batches(uids: list[int], size: int) -> Iterator[list[int]]:
    """`uids` in batches of `size`, the first a quarter of that: the first commit comes sooner."""
    first = max(1, size // 4)
    yield from ([uids[:first]] if uids else [])
    for start in range(first, len(uids), size):
        yield uids[start:start + size]


def _uid_set(uids: Sequence[int]) -> str:
    """A compact UID set: 1:5,8,10:12."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = prev = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        ranges.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(ranges)


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(response: aioimaplib.Response) -> str:
    return " ".join(ln.decode("utf-8", "replace") if isinstance(ln, bytes | bytearray) else str(ln)
                    for ln in response.lines)[:300]
