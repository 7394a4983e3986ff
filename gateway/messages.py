"""The normalized messages a channel hands to the core and receives from it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from gateway.addresses import Address
from gateway.domain import ChannelKind, ticket_ref


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class InboundAttachment:
    """A file a customer sent. `data` is None when the adapter could not or would not fetch it."""

    filename: str
    content_type: str
    data: bytes | None
    size: int | None = None  # the provider's announced size, when `data` is None

    def __repr__(self) -> str:
        size = len(self.data) if self.data is not None else self.size
        return f"InboundAttachment({self.filename!r}, {self.content_type!r}, {size} bytes)"


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMessage:
    """One customer message, as every channel adapter reports it.

    `provider_id` is the provider's own id for this message (Message-ID, update id, SMS messageid);
    the core drops any message whose (channel, provider_id) it has already stored.
    `thread_key` is this message's id for later replies to point at (defaults to `provider_id`);
    `in_reply_to` lists the thread keys this message answers, strongest first;
    `ticket_ref` is a ticket reference the customer quoted (e.g. from a subject line).
    `also_known_as` links more addresses of the sender that the provider vouches for (the phone of a
    contact a Telegram user shared as their own): any of them may find the customer.
    `claimed` are addresses the message claims for its sender with no proof (a mobile number in an
    email's signature): linked to the sender's customer when nobody has them, and never deciding
    whose message it is (anyone can type someone else's number).
    `automatic` marks auto-replies, bounces and list mail: stored, never answered automatically.
    `raw` keeps what the adapter did not model, for support and replay.
    """

    channel: ChannelKind
    provider_id: str
    sender: Address
    text: str
    received_at: dt.datetime = dataclasses.field(default_factory=utcnow)
    sender_name: str | None = None
    subject: str | None = None
    thread_key: str | None = None
    in_reply_to: tuple[str, ...] = ()
    ticket_ref: str | None = None
    attachments: tuple[InboundAttachment, ...] = ()
    also_known_as: tuple[Address, ...] = ()
    claimed: tuple[Address, ...] = ()
    automatic: bool = False
    language: str | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.provider_id:
            raise ValueError("InboundMessage needs the provider's message id")
        if self.received_at.tzinfo is None:
            raise ValueError("InboundMessage.received_at must be timezone-aware")


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingest did with one message; returned only after its transaction committed."""

    message_id: int
    ticket_id: int
    customer_id: int
    duplicate: bool = False
    new_ticket: bool = False
    new_customer: bool = False
    reopened: bool = False

    @property
    def ticket_ref(self) -> str:
        return ticket_ref(self.ticket_id)


@dataclasses.dataclass(frozen=True, slots=True)
class OutboundAttachment:
    filename: str
    content_type: str
    path: str  # the stored file; adapters read it when they send


@dataclasses.dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for a customer, built by the outbox from its stored row.

    `key` is unique and stable across retries: adapters that can ask their provider whether a send
    already happened (Kavenegar's localid) use it; `attempt` counts from 1.
    `thread_keys` are the conversation's earlier keys, newest last (email References).
    `full_answer_on` names the customer's other channel where the full text of a reply too long for
    this one went (an SMS shortened to its parts says so).
    """

    key: str
    channel: ChannelKind
    to: Address
    text: str
    ticket_id: int
    ticket_ref: str
    attempt: int = 1
    subject: str | None = None
    in_reply_to: str | None = None
    thread_keys: tuple[str, ...] = ()
    attachments: tuple[OutboundAttachment, ...] = ()
    automatic: bool = False
    language: str | None = None
    full_answer_on: str | None = None
    buttons: tuple[tuple[str, str], ...] = ()  # (label, data) quick answers, where the channel has buttons


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """The provider accepted a message. `thread_key` is what a reply to it will point at."""

    provider_id: str
    thread_key: str | None = None
    accepted_at: dt.datetime = dataclasses.field(default_factory=utcnow)


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The provider's later word on a message we sent: delivered, or failed (a bounce, an SMS report).

    `provider_id` is what the provider's Receipt named the message (an email's Message-ID, an SMS
    messageid); a report of a message we never sent is ignored.
    """

    channel: ChannelKind
    provider_id: str
    delivered: bool
    error: str | None = None
    at: dt.datetime = dataclasses.field(default_factory=utcnow)
