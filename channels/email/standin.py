"""Local stand-ins for a mail provider, for `kartabl demo`: a small IMAP server with IDLE, and an SMTP peer.

The IMAP side speaks the part of IMAP4rev1 the email channel uses (LOGIN, SELECT, UID SEARCH, UID FETCH
with BODY.PEEK, UID STORE, UID MOVE, EXPUNGE, IDLE), in memory, for one mailbox. The tests use a real
Dovecot instead; this exists so the demo runs on a machine with nothing installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP as SmtpServer, Envelope, Session

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|\(([^)]*)\)|(\S+)')


@dataclasses.dataclass
class _Stored:
    uid: int
    raw: bytes
    flags: set[str]
    date: dt.datetime


class StandInImap:
    """One user's INBOX, served over plain IMAP on loopback."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.uidvalidity = int(dt.datetime.now(dt.UTC).timestamp())
        self.messages: list[_Stored] = []
        self.moved: dict[str, list[_Stored]] = {}
        self._next_uid = 1
        self._idlers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> int:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._idlers):
                writer.close()
            await self._server.wait_closed()

    def deliver(self, raw: bytes) -> int:
        """A message arrives in the mailbox; clients in IDLE hear of it at once."""
        stored = _Stored(self._next_uid, raw, set(), dt.datetime.now(dt.UTC))
        self._next_uid += 1
        self.messages.append(stored)
        for writer in list(self._idlers):
            writer.write(f"* {len(self.messages)} EXISTS\r\n".encode())
        return stored.uid

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE MOVE UIDPLUS] Kartabl demo mail stand-in ready\r\n")
        authed = False
        known = 0  # messages this client has been told of
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                command, _, args = rest.partition(" ")
                command = command.upper()
                if command == "UID":
                    command, _, args = args.partition(" ")
                    command = "UID " + command.upper()
                if command in ("CAPABILITY", "NOOP", "CHECK", "LOGOUT"):
                    if command == "CAPABILITY":
                        writer.write(b"* CAPABILITY IMAP4rev1 IDLE MOVE UIDPLUS\r\n")
                    if command == "LOGOUT":
                        writer.write(b"* BYE\r\n")
                    writer.write(f"{tag} OK {command} completed\r\n".encode())
                    if command == "LOGOUT":
                        break
                elif command == "LOGIN":
                    authed = _tokens(args)[:2] == [self.user, self.password]
                    writer.write(f"{tag} {'OK' if authed else 'NO [AUTHENTICATIONFAILED]'} LOGIN\r\n".encode())
                elif not authed:
                    writer.write(f"{tag} BAD log in first\r\n".encode())
                elif command in ("SELECT", "EXAMINE"):
                    known = len(self.messages)
                    writer.write(f"* {len(self.messages)} EXISTS\r\n* OK [UIDVALIDITY {self.uidvalidity}] ok\r\n"
                                 f"* OK [UIDNEXT {self._next_uid}] ok\r\n{tag} OK [READ-WRITE] SELECT\r\n".encode())
                elif command == "IDLE":
                    writer.write(self._news(known))
                    await self._idle(tag, reader, writer)
                    known = len(self.messages)
                elif command in _HANDLERS:
                    writer.write(_HANDLERS[command](self, args))
                    writer.write(self._news(known))  # as real servers do: new mail reported at the end
                    known = len(self.messages)
                    writer.write(f"{tag} OK {command} completed\r\n".encode())
                else:
                    writer.write(f"{tag} BAD {command} is not supported by the stand-in\r\n".encode())
                await writer.drain()
        except ConnectionError:
            pass  # the client went away; its session simply ends
        finally:
            self._idlers.discard(writer)
            writer.close()

    async def _idle(self, tag: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._idlers.add(writer)
        writer.write(b"+ idling\r\n")
        await writer.drain()
        try:
            await reader.readline()  # DONE
        finally:
            self._idlers.discard(writer)
        writer.write(f"{tag} OK IDLE terminated\r\n".encode())

    def _news(self, known: int) -> bytes:
        return f"* {len(self.messages)} EXISTS\r\n".encode() if len(self.messages) > known else b""

    def _select(self, uid_set: str) -> list[_Stored]:
        wanted = _parse_set(uid_set, self._next_uid - 1)
        return [m for m in self.messages if wanted(m.uid)]

    def _search(self, args: str) -> bytes:
        found = list(self.messages)
        tokens = args.upper().split()
        if "UNSEEN" in tokens:
            found = [m for m in found if "\\Seen" not in m.flags]
        if "UID" in tokens:
            wanted = _parse_set(tokens[tokens.index("UID") + 1], self._next_uid - 1)
            found = [m for m in found if wanted(m.uid)]
        return f"* SEARCH {' '.join(str(m.uid) for m in found)}\r\n".encode()

    def _fetch(self, args: str) -> bytes:
        uid_set, _, items = args.partition(" ")
        out = b""
        for m in self._select(uid_set):
            seq = self.messages.index(m) + 1
            parts = [f"UID {m.uid}"]
            if "RFC822.SIZE" in items:
                parts.append(f"RFC822.SIZE {len(m.raw)}")
            if "INTERNALDATE" in items:
                parts.append(f'INTERNALDATE "{m.date:%d-%b-%Y %H:%M:%S +0000}"')
            body = b""
            if "BODY.PEEK[HEADER]" in items:
                header = m.raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                parts.append(f"BODY[HEADER] {{{len(header)}}}")
                body = header
            elif "BODY.PEEK[]" in items:
                parts.append(f"BODY[] {{{len(m.raw)}}}")
                body = m.raw
            out += f"* {seq} FETCH ({' '.join(parts)}".encode() + (b"\r\n" + body if body else b"") + b")\r\n"
        return out

    def _store(self, args: str) -> bytes:
        uid_set, _, change = args.partition(" ")
        flags = set(re.findall(r"\\\w+", change))
        for m in self._select(uid_set):
            m.flags |= flags
        return b""

    def _move(self, args: str) -> bytes:
        uid_set, _, folder = args.partition(" ")
        for m in self._select(uid_set):
            self.messages.remove(m)
            self.moved.setdefault(folder.strip('"'), []).append(m)
        return b""

    def _expunge(self, args: str) -> bytes:
        self.messages = [m for m in self.messages if "\\Deleted" not in m.flags]
        return b""


_HANDLERS: dict[str, Callable[[StandInImap, str], bytes]] = {
    "UID SEARCH": StandInImap._search, "SEARCH": StandInImap._search, "UID FETCH": StandInImap._fetch,
    "UID STORE": StandInImap._store, "UID MOVE": StandInImap._move, "EXPUNGE": StandInImap._expunge,
}


def _tokens(args: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _TOKEN.finditer(args)]


def _parse_set(text: str, highest: int) -> Callable[[int], bool]:
    ranges = []
    for piece in text.split(","):
        low, _, high = piece.partition(":")
        low_n = highest if low == "*" else int(low)
        high_n = low_n if not high else highest if high == "*" else int(high)
        ranges.append((min(low_n, high_n), max(low_n, high_n)))
    return lambda uid: any(a <= uid <= b for a, b in ranges)


class StandInSmtp:
    """The customers' mail servers: an SMTP peer (aiosmtpd) that hands each message to `on_message`."""

    def __init__(self, on_message: Callable[[EmailMessage], None]) -> None:
        self.on_message = on_message
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SmtpServer(self, hostname="standin.local"), host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:  # noqa: N802
        data = envelope.original_content or envelope.content
        self.on_message(email.message_from_bytes(data, policy=email.policy.default))
        return "250 OK: queued"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
