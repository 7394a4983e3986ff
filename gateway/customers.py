"""Customer records an admin corrects: two records of one person merged (and the merge undone), and an
address split off to a customer of its own; and a customer's record as an admin reads it.

Each change is a blocking work for `Database.run_write`: one transaction, the customer rows locked
first (`FOR UPDATE` in id order on PostgreSQL, the order ingest locks them in; SQLite's write lock
serializes everything), so a merge never interleaves with a message being filed for either customer.

A merge moves the absorbed customer's addresses, tickets and events to the survivor and keeps the
absorbed row, empty, with `merged_into` pointing at the survivor. Its `customer.merged` event lists
exactly the ids that moved, so undoing it moves back those of them still on the survivor, and no more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa

from gateway.addresses import Address
from gateway.domain import ticket_ref
from gateway.errors import KartablError
from gateway.events import event_row
from gateway.schema import addresses, customers, events, tickets

MERGED = "customer.merged"
UNMERGED = "customer.unmerged"
SPLIT = "customer.split"


class CustomerNotFound(KartablError, LookupError):
    """No customer (or merge, or address of that customer) has the given id."""


class CustomerConflict(KartablError):
    """The change does not fit the record as it is now (already merged, already undone, the last address)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Merge:
    """What one merge moved from `absorbed` to `survivor`, as its event records it."""

    event_id: int
    survivor: int
    absorbed: int
    addresses: tuple[int, ...]
    tickets: tuple[int, ...]
    events: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """An address moved off `source` to the new customer `customer`, with the tickets it opened."""

    event_id: int
    source: int
    customer: int
    address: str
    tickets: tuple[int, ...]
    events: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AddressRow:
    id: int
    kind: str
    value: str
    created_at: dt.datetime

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclasses.dataclass(frozen=True, slots=True)
class TicketLine:
    id: int
    ref: str
    subject: str | None
    status: str
    channel: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A customer as an admin reads it: every address and ticket, and where merges left it."""

    id: int
    name: str | None
    language: str | None
    tags: tuple[str, ...]
    created_at: dt.datetime
    merged_into: int | None  # the customer this one was merged into (it then has no addresses or tickets)
    merge_event: int | None  # the event of that merge, to undo it by
    merged_from: tuple[int, ...]  # customers merged into this one (and not unmerged since)
    addresses: tuple[AddressRow, ...]
    tickets: tuple[TicketLine, ...]


def _lock(conn: sa.Connection, *ids: int) -> dict[int, int | None]:
    """The customers' `merged_into` by id, their rows locked in id order (no lock order, no deadlock)."""
    query = (sa.select(customers.c.id, customers.c.merged_into).where(customers.c.id.in_(sorted(set(ids))))
             .order_by(customers.c.id).with_for_update())
    found = dict(conn.execute(query).all())
    for customer_id in ids:
        if customer_id not in found:
            raise CustomerNotFound(f"no customer {customer_id}")
    return found


def _move(conn: sa.Connection, table: sa.Table, where: sa.ColumnElement[bool], to: int) -> tuple[int, ...]:
    """Give the matching rows to customer `to`; their ids, ascending."""
    moved = conn.execute(sa.update(table).where(where).values(customer_id=to).returning(table.c.id)).scalars()
    return tuple(sorted(moved))


def _record(conn: sa.Connection, row: dict[str, Any]) -> int:
    return conn.execute(sa.insert(events).returning(events.c.id), row).scalar_one()


def merge(conn: sa.Connection, survivor: int, absorbed: int, *, actor: str, now: dt.datetime) -> Merge:
    """Move every address, ticket and event of `absorbed` to `survivor`, and point `absorbed` at it.

    The survivor keeps its own name, language and tags. Refused (CustomerConflict) when either was
    itself merged into another: merge into that one, or undo that merge first.
    """
    if survivor == absorbed:
        raise ValueError("a customer cannot be merged into itself")
    merged_into = _lock(conn, survivor, absorbed)
    for customer_id in (survivor, absorbed):
        if merged_into[customer_id] is not None:
            raise CustomerConflict(f"customer {customer_id} was merged into customer {merged_into[customer_id]}")
    spelled = [f"{k}:{v}" for k, v in conn.execute(
        sa.select(addresses.c.kind, addresses.c.value).where(addresses.c.customer_id == absorbed)
        .order_by(addresses.c.id))]
    moved_addresses = _move(conn, addresses, addresses.c.customer_id == absorbed, survivor)
    moved_tickets = _move(conn, tickets, tickets.c.customer_id == absorbed, survivor)
    moved_events = _move(conn, events, events.c.customer_id == absorbed, survivor)
    conn.execute(sa.update(customers).where(customers.c.id == absorbed).values(merged_into=survivor))
    # `old` holds the absorbed customer: the latest merge of a customer is found by it.
    event_id = _record(conn, event_row(
        now, MERGED, customer_id=survivor, actor=actor, field="customer", old=absorbed, new=survivor,
        data={"from": absorbed, "into": survivor, "addresses": list(moved_addresses), "address_values": spelled,
              "tickets": list(moved_tickets), "events": list(moved_events)}))
    return Merge(event_id, survivor, absorbed, moved_addresses, moved_tickets, moved_events)


def undo_merge(conn: sa.Connection, merge_event: int, *, actor: str, now: dt.datetime) -> Merge:
    """Move back what merge `merge_event` moved and still is on the survivor, and clear `merged_into`.

    What reached the survivor since (new addresses, new tickets) stays with it; events written on a
    ticket that goes back go back with it. Refused when the merge was undone already, when a later
    merge of the same customer supersedes it, or when the survivor was merged into another since
    (undo that one first). Returns what moved back, under the `customer.unmerged` event's id.
    """
    found = conn.execute(sa.select(events.c.data).where(events.c.id == merge_event, events.c.kind == MERGED)).first()
    if found is None:
        raise CustomerNotFound(f"no merge {merge_event}")
    survivor, absorbed = found.data["into"], found.data["from"]
    merged_into = _lock(conn, survivor, absorbed)
    latest = conn.execute(sa.select(sa.func.max(events.c.id)).where(
        events.c.kind == MERGED, events.c.old == str(absorbed))).scalar()
    if latest != merge_event:
        raise CustomerConflict(f"merge {merge_event} was followed by merge {latest} of customer {absorbed}")
    if merged_into[absorbed] != survivor:
        raise CustomerConflict(f"merge {merge_event} was undone already")
    if merged_into[survivor] is not None:
        raise CustomerConflict(f"customer {survivor} was merged into customer {merged_into[survivor]} since: "
                               "undo that merge first")
    mine = addresses.c.customer_id == survivor
    back_addresses = _move(conn, addresses, sa.and_(mine, addresses.c.id.in_(found.data["addresses"])), absorbed)
    back_tickets = _move(conn, tickets, sa.and_(tickets.c.customer_id == survivor,
                                                tickets.c.id.in_(found.data["tickets"])), absorbed)
    back_events = _move(conn, events, sa.and_(events.c.customer_id == survivor, sa.or_(
        events.c.id.in_(found.data["events"]),
        sa.and_(events.c.ticket_id.in_(back_tickets), events.c.id > merge_event))), absorbed)
    conn.execute(sa.update(customers).where(customers.c.id == absorbed).values(merged_into=None))
    event_id = _record(conn, event_row(
        now, UNMERGED, customer_id=survivor, actor=actor, field="customer", old=survivor, new=absorbed,
        data={"merge_event": merge_event, "from": survivor, "into": absorbed, "addresses": list(back_addresses),
              "tickets": list(back_tickets), "events": list(back_events)}))
    return Merge(event_id, survivor, absorbed, back_addresses, back_tickets, back_events)


def split(conn: sa.Connection, customer_id: int, address: Address, *, actor: str, now: dt.datetime,
          name: str | None = None) -> Split:
    """Give `address` to a new customer (named `name`), with the tickets whose replies go to it.

    A ticket answers the address that opened it, so those conversations are the other person's; the
    events on them follow. Everything else stays. Refused when the address is the customer's last
    (nothing would be left) or the customer was merged into another. Merging the new customer back
    undoes a split.
    """
    merged_into = _lock(conn, customer_id)[customer_id]
    if merged_into is not None:
        raise CustomerConflict(f"customer {customer_id} was merged into customer {merged_into}")
    row = conn.execute(sa.select(addresses.c.id).where(
        addresses.c.customer_id == customer_id, addresses.c.kind == address.kind,
        addresses.c.value == address.value)).first()
    if row is None:
        raise CustomerNotFound(f"customer {customer_id} has no address {address}")
    if conn.execute(sa.select(sa.func.count()).where(addresses.c.customer_id == customer_id)).scalar_one() == 1:
        raise CustomerConflict(f"{address} is the only address of customer {customer_id}: nothing would be left")
    language = conn.execute(sa.select(customers.c.language).where(customers.c.id == customer_id)).scalar()
    new_id = conn.execute(sa.insert(customers).returning(customers.c.id), {
        "name": name, "language": language, "tags": [], "created_at": now}).scalar_one()
    _move(conn, addresses, addresses.c.id == row.id, new_id)
    moved_tickets = _move(conn, tickets, sa.and_(
        tickets.c.customer_id == customer_id, tickets.c.reply_kind == address.kind,
        tickets.c.reply_to == address.value), new_id)
    moved_events = _move(conn, events, sa.and_(events.c.customer_id == customer_id,
                                               events.c.ticket_id.in_(moved_tickets)), new_id)
    _record(conn, event_row(now, "customer.created", customer_id=new_id, actor=actor,
                            data={"address": str(address), "split_from": customer_id}))
    event_id = _record(conn, event_row(
        now, SPLIT, customer_id=customer_id, actor=actor, field="address", old=address, new=None,
        data={"into": new_id, "address": row.id, "address_value": str(address), "tickets": list(moved_tickets),
              "events": list(moved_events)}))
    return Split(event_id, customer_id, new_id, str(address), moved_tickets, moved_events)


def customer_record(conn: sa.Connection, customer_id: int) -> CustomerRecord:
    """The customer's record on one snapshot; CustomerNotFound if there is none."""
    c = customers
    row = conn.execute(sa.select(c.c.id, c.c.name, c.c.language, c.c.tags, c.c.created_at, c.c.merged_into)
                       .where(c.c.id == customer_id)).first()
    if row is None:
        raise CustomerNotFound(f"no customer {customer_id}")
    merge_event = None
    if row.merged_into is not None:
        merge_event = conn.execute(sa.select(sa.func.max(events.c.id)).where(
            events.c.kind == MERGED, events.c.old == str(customer_id))).scalar()
    merged_from = conn.execute(sa.select(c.c.id).where(c.c.merged_into == customer_id).order_by(c.c.id)).scalars()
    known = conn.execute(sa.select(addresses.c.id, addresses.c.kind, addresses.c.value, addresses.c.created_at)
                         .where(addresses.c.customer_id == customer_id).order_by(addresses.c.id)).all()
    t = tickets
    opened = conn.execute(sa.select(t.c.id, t.c.subject, t.c.status, t.c.channel, t.c.created_at)
                          .where(t.c.customer_id == customer_id).order_by(t.c.id)).all()
    return CustomerRecord(
        id=row.id, name=row.name, language=row.language, tags=tuple(row.tags or ()), created_at=row.created_at,
        merged_into=row.merged_into, merge_event=merge_event, merged_from=tuple(merged_from),
        addresses=tuple(AddressRow(*a) for a in known),
        tickets=tuple(TicketLine(i, ticket_ref(i), s, st, ch, at) for i, s, st, ch, at in opened))
