"""The database tables, as SQLAlchemy Core metadata shared by the code and the migrations."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

#: 64-bit ids on PostgreSQL; plain INTEGER on SQLite, where only that spelling is the rowid.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """Timestamps that go in and come out as timezone-aware UTC on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware times")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def _fk(name: str, target: str, nullable: bool = False, **kw) -> sa.Column:
    return sa.Column(name, ID, sa.ForeignKey(target), nullable=nullable, **kw)


def _created() -> sa.Column:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


customers = sa.Table(
    "customers", metadata,
    _id(),
    sa.Column("name", sa.String(200)),
    sa.Column("language", sa.String(16)),
    sa.Column("tags", sa.JSON, nullable=False, server_default="[]"),
    _created(),
    # A customer merged into another keeps its row (empty of addresses and tickets) so the merge can be undone.
    sa.Column("merged_into", ID, sa.ForeignKey("customers.id", name="fk_customers_merged_into"), index=True),
)

addresses = sa.Table(
    "addresses", metadata,
    _id(),
    _fk("customer_id", "customers.id", index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("value", sa.String(320), nullable=False),
    _created(),
    sa.UniqueConstraint("kind", "value"),
)

departments = sa.Table(
    "departments", metadata,
    _id(),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("title", sa.String(200)),
    sa.Column("strategy", sa.String(32), nullable=False, server_default="manual"),
    sa.Column("chat_id", sa.String(64)),
    sa.Column("review", sa.Boolean, nullable=False, server_default=sa.false()),  # replies need a lead
    _created(),
)

agents = sa.Table(
    "agents", metadata,
    _id(),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("telegram_user_id", sa.BigInteger, unique=True),
    sa.Column("username", sa.String(64), unique=True),
    sa.Column("email", sa.String(320)),
    sa.Column("is_lead", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("away", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    _created(),
)

agent_departments = sa.Table(
    "agent_departments", metadata,
    sa.Column("agent_id", ID, sa.ForeignKey("agents.id"), primary_key=True),
    sa.Column("department_id", ID, sa.ForeignKey("departments.id"), primary_key=True),
)

tickets = sa.Table(
    "tickets", metadata,
    _id(),
    _fk("customer_id", "customers.id"),
    sa.Column("subject", sa.String(500)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    _fk("department_id", "departments.id", nullable=True),
    _fk("assignee_id", "agents.id", nullable=True),
    # Where replies go: the channel and address the customer used to open the ticket.
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("reply_kind", sa.String(16), nullable=False),
    sa.Column("reply_to", sa.String(320), nullable=False),
    sa.Column("language", sa.String(16)),
    sa.Column("tags", sa.JSON, nullable=False, server_default="[]"),
    _created(),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("last_inbound_at", UTCDateTime()),
    sa.Column("first_response_at", UTCDateTime()),
    sa.Column("first_response_due", UTCDateTime()),
    sa.Column("resolution_due", UTCDateTime()),
    sa.Column("resolved_at", UTCDateTime()),
    sa.Column("closed_at", UTCDateTime()),
    # The workflow's state: replies held for a lead, the SLA breach, the survey and its answer.
    sa.Column("review", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sla_breached_at", UTCDateTime()),
    sa.Column("survey_sent_at", UTCDateTime()),
    sa.Column("csat_score", sa.SmallInteger),
    sa.Column("csat_at", UTCDateTime()),
    sa.Index(None, "customer_id", "channel", "status"),
    # Not on updated_at: every inbound message touches it, and an indexed column would stop
    # PostgreSQL from updating the row in place (HOT).
    sa.Index(None, "status"),
    sa.Index(None, "assignee_id", "status"),
    sa.Index(None, "created_at"),  # the reports: a period's new tickets, and its resolved ones
    sa.Index(None, "resolved_at"),
)

messages = sa.Table(
    "messages", metadata,
    _id(),
    _fk("ticket_id", "tickets.id"),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("provider_id", sa.String(500)),
    sa.Column("thread_key", sa.String(500)),
    sa.Column("in_reply_to", sa.String(500)),
    sa.Column("sender", sa.String(340)),  # "kind:value" of the customer address it came from
    _fk("agent_id", "agents.id", nullable=True),
    sa.Column("subject", sa.String(500)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("automatic", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("delivery_state", sa.String(16), nullable=False),
    sa.Column("delivery_error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _created(),
    sa.Column("received_at", UTCDateTime()),
    sa.Column("sent_at", UTCDateTime()),
    sa.Column("delivered_at", UTCDateTime()),
    sa.Column("raw", sa.JSON(none_as_null=True)),
    sa.UniqueConstraint("channel", "direction", "provider_id"),
    sa.Index(None, "channel", "thread_key"),
    sa.Index(None, "ticket_id", "id"),
    # The reports count a period's messages per channel, direction and delivery state from this index alone.
    sa.Index(None, "created_at", "channel", "direction", "delivery_state"),
)

attachments = sa.Table(
    "attachments", metadata,
    _id(),
    _fk("message_id", "messages.id", index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),  # NULL when the file was left out
    sa.Column("omitted", sa.String(200)),  # why it was left out, if it was
    _created(),
)

events = sa.Table(
    "events", metadata,
    _id(),
    _fk("ticket_id", "tickets.id", nullable=True),
    _fk("customer_id", "customers.id", nullable=True),
    sa.Column("actor", sa.String(100), nullable=False),  # system, customer:12, agent:3, rule:vip
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("field", sa.String(64)),
    sa.Column("old", sa.String(500)),
    sa.Column("new", sa.String(500)),
    sa.Column("data", sa.JSON(none_as_null=True)),
    _created(),
    sa.Index(None, "ticket_id", "id"),
    sa.Index(None, "kind", "created_at"),  # the reports: a period's reopenings, referrals, breaches
    sa.Index(None, "customer_id"),  # a merge moves a customer's events
)

jobs = sa.Table(
    "jobs", metadata,
    _id(),
    sa.Column("kind", sa.String(64), nullable=False),
    # Jobs sharing a key run one at a time, in id order (the replies of one ticket).
    sa.Column("key", sa.String(200)),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("due_at", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_until", UTCDateTime()),
    _created(),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index(None, "state", "due_at"),
    sa.Index(None, "key", "id"),
)

channel_state = sa.Table(
    "channel_state", metadata,
    sa.Column("name", sa.String(200), primary_key=True),  # e.g. "email:support@x:INBOX"
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

quarantine = sa.Table(
    "quarantine", metadata,
    _id(),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("source", sa.String(500)),  # where it came from, e.g. "support@x INBOX uid 42 (uidvalidity 7)"
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    _created(),
    sa.Column("replayed_at", UTCDateTime()),
    _fk("message_id", "messages.id", nullable=True),  # the message its replay became
    sa.UniqueConstraint("channel", "sha256"),
)

#: A provider update an agent's action came from (a Telegram update), recorded in the action's own
#: transaction: the same update read again after a crash is not acted on twice.
handled_updates = sa.Table(
    "handled_updates", metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    _created(),
)

#: Where a ticket is shown to the agents: its topic in a forum group (thread_id), or none (plain group).
desk_topics = sa.Table(
    "desk_topics", metadata,
    _fk("ticket_id", "tickets.id"),
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    sa.Column("thread_id", sa.BigInteger, nullable=False),
    _created(),
    sa.PrimaryKeyConstraint("ticket_id", "chat_id"),
)

#: Every message the bot posted in a desk chat, by ticket: an agent's reply to any of them answers that ticket.
desk_posts = sa.Table(
    "desk_posts", metadata,
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.BigInteger, nullable=False),
    _fk("ticket_id", "tickets.id", index=True),
    _created(),
    sa.PrimaryKeyConstraint("chat_id", "message_id"),
)

#: Posts waiting for a busy agents' group (about 20 messages a minute), in order: one job per group
#: drains them as Telegram allows, listing the new tickets among them in a digest first, so a burst
#: reaches the agents in seconds, not after an hour of topics.
desk_queue = sa.Table(
    "desk_queue", metadata,
    _id(),
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    _fk("ticket_id", "tickets.id"),
    _fk("message_id", "messages.id"),
    sa.Column("queued_at", UTCDateTime(), nullable=False),
    sa.Column("listed_at", UTCDateTime()),  # when a digest named its ticket
    sa.Index("ix_desk_queue_chat_id_id", "chat_id", "id"),
)
