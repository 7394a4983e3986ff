"""The domain's vocabulary: channel, address, status, priority and delivery kinds, and ticket references."""

from __future__ import annotations

import re
from enum import StrEnum


class ChannelKind(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    TELEGRAM = "telegram"
    LOOPBACK = "loopback"


class AddressKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    TELEGRAM = "telegram"


class TicketStatus(StrEnum):
    NEW = "new"
    OPEN = "open"
    WAITING = "waiting"  # waiting for the customer
    RESOLVED = "resolved"
    CLOSED = "closed"


#: Statuses a customer's next message on the same channel threads onto.
LIVE_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.WAITING, TicketStatus.RESOLVED)


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Direction(StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"
    NOTE = "note"  # internal, never sent


class DeliveryState(StrEnum):
    RECEIVED = "received"  # inbound, stored
    PENDING = "pending"  # outbound, queued or retrying
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider reported delivery
    FAILED = "failed"  # given up; agents were told
    HELD = "held"  # an agent's reply waiting for a lead's approval (review)
    REJECTED = "rejected"  # a held reply a lead turned down: never sent


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DEAD = "dead"


_REF_OFFSET = 1000
_REF_PATTERN = re.compile(r"\bT-(\d{4,})\b", re.IGNORECASE)


def ticket_ref(ticket_id: int) -> str:
    """The human reference agents and customers quote: ticket 42 is `T-1042`."""
    return f"T-{ticket_id + _REF_OFFSET}"


def parse_ticket_ref(text: str) -> int | None:
    """The ticket id of the first `T-1042`-style reference in `text`, if any."""
    match = _REF_PATTERN.search(text)
    if not match:
        return None
    ticket_id = int(match.group(1)) - _REF_OFFSET
    return ticket_id if ticket_id > 0 else None
