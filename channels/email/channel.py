"""EmailChannel: the support mailbox read by IMAP push, answered through a pool of SMTP connections."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence

from channels.email.compose import build_email, message_id_for
from channels.email.imap import Fetched, Mailbox
from channels.email.parse import ParsedEmail, UnparseableEmail, parse_email
from channels.email.parsing import POOL_FROM, Parsers
from channels.email.settings import EmailSettings
from channels.email.smtp import SmtpPool
from gateway.domain import ChannelKind
from gateway.inlet import Inlet
from gateway.messages import DeliveryReport, InboundMessage, OutboundMessage, Receipt

log = logging.getLogger("kartabl.channels.email")

#: A big fetched batch is parsed in this many parts, each stored while the next is parsed.
_PARTS = 4


class EmailChannel:
    kind = ChannelKind.EMAIL

    #: One reader of the mailbox: with several gateways on one database, the one holding its lock reads it.
    exclusive = True

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self.tls = tls_context(settings)
        self.smtp = SmtpPool(settings, self.tls)
        self.mailbox: Mailbox | None = None
        self.parsers = Parsers(own_domain=settings.domain, max_message_bytes=settings.max_message_bytes,
                               workers=settings.parse_workers)
        self._inlet: Inlet | None = None

    @property
    def cursor_name(self) -> str:
        return f"email:{self.settings.address.lower()}:{self.settings.folder}"

    async def start(self, deliver: Inlet) -> None:
        self._inlet = deliver
        self.mailbox = Mailbox(
            self.settings, self.tls, self._handle,
            load_cursor=lambda: deliver.load_state(self.cursor_name),
            save_cursor=lambda value: deliver.save_state(self.cursor_name, value))
        self.parsers.start()
        await self.mailbox.run()

    def describe(self) -> dict[str, object]:
        """The mailbox connection for /healthz: idle or polling when well, reconnecting with the reason."""
        mailbox = self.mailbox
        if mailbox is None or mailbox.state in ("idle", "polling"):
            return {"mailbox": mailbox.state if mailbox else "starting"}
        return {"state": mailbox.state, "mailbox": mailbox.state, "last_error": mailbox.last_error}

    async def stop(self) -> None:
        if self.mailbox is not None:
            await self.mailbox.stop()
        await self.parsers.close()
        await self.smtp.close()

    async def send(self, message: OutboundMessage) -> Receipt:
        data = build_email(message, self.settings)
        await self.smtp.send(self.settings.address, [message.to.value], data)
        sent_id = message_id_for(message, self.settings.domain)
        return Receipt(provider_id=sent_id, thread_key=sent_id)

    async def _handle(self, fetched: Sequence[Fetched], folder: str) -> None:
        """Store a fetched batch; returns once every message in it is committed (or quarantined).

        A big batch is parsed a part at a time, each part stored while the next is parsed.
        """
        size = max(POOL_FROM, -(-len(fetched) // _PARTS))
        storing = []
        try:
            for start in range(0, len(fetched), size):
                part = fetched[start:start + size]
                parsed = await self.parsers.parse(part)
                storing.append(asyncio.create_task(self._store(part, parsed, folder)))
        finally:
            done = await asyncio.gather(*storing, return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _store(self, fetched: Sequence[Fetched], parsed: Sequence[ParsedEmail | UnparseableEmail],
                     folder: str) -> None:
        inlet = self._inlet
        readable: list[ParsedEmail] = []
        for item, result in zip(fetched, parsed, strict=True):
            if isinstance(result, UnparseableEmail):
                source = f"{self.settings.address} {folder} uid {item.uid}"
                await inlet.quarantine(str(self.kind), item.raw, str(result), source)
            else:
                readable.append(result)
        await asyncio.gather(*(inlet(p.message) for p in readable))
        for p in readable:
            for bounced in p.bounced:
                await inlet.report(DeliveryReport(self.kind, bounced, delivered=False, error=p.bounce_reason))


def tls_context(settings: EmailSettings) -> ssl.SSLContext:
    """Certificate-checking TLS, trusting the system's CAs and `ca_file` if set."""
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(cafile=settings.ca_file)
    return context


def read_quarantined(raw: bytes, settings: EmailSettings) -> InboundMessage:
    """A quarantined email read again, for `kartabl quarantine replay`; raises UnparseableEmail."""
    return parse_email(raw, own_domains=[settings.domain]).message
