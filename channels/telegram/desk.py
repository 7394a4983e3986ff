"""The agents' desk in a Telegram group: each ticket in its topic with a card, and what agents do there."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re

import sqlalchemy as sa
import telegram

from channels.telegram.bot import BotApi, thread_missing
from channels.telegram.text import TEXT_LIMIT, escape, split_text
from channels.telegram.updates import AgentMessage, ButtonPress
from gateway.attachments import AttachmentStore, StoredAttachment
from gateway.db import Database
from gateway.domain import ChannelKind, Priority, TicketStatus, parse_ticket_ref, ticket_ref
from gateway.errors import ChannelError, Postponed, TicketNotFound
from gateway.messages import InboundAttachment, utcnow
from gateway.schema import agents, departments, desk_posts, desk_topics
from gateway.tickets import MessageView, Once, TicketService, TicketSummary

log = logging.getLogger("kartabl.channels.telegram.desk")

HELP = (
    "<b>Commands</b> (in a ticket's topic, or replying to one of its messages)\n"
    "/take: the ticket is yours\n/assign @agent: give it to a colleague\n"
    "/transfer &lt;department&gt;: refer it to a department\n/note &lt;text&gt;: an internal note, never sent\n"
    "/close, /reopen\n/priority low|normal|high|urgent\n/history: the customer's earlier tickets\n"
    "Anything else you write in the topic goes to the customer, on the channel they used."
)
#: A post that would wait longer than this for the group's budget goes back to the job queue meanwhile.
BUSY_GROUP_S = 5.0
_ESCALATED = {Priority.LOW: Priority.NORMAL, Priority.NORMAL: Priority.HIGH, Priority.HIGH: Priority.URGENT,
              Priority.URGENT: Priority.URGENT}


class TelegramDesk:
    """Shows tickets to the agents' group and turns agents' messages there into ticket actions.

    In a forum supergroup each ticket has its own topic, opened with a card (customer, channel,
    earlier tickets, department, priority, assignee, SLA due) and buttons; every customer message is
    posted into it, and what an agent writes there goes to the customer. In a plain group the posts
    carry the ticket's reference, and agents answer by replying to any of them. Only registered
    agents (`agents.telegram_user_id`) can act; anyone else is refused politely, nothing changes.
    """

    def __init__(self, api: BotApi, chat_id: int, tickets: TicketService, db: Database,
                 files: AttachmentStore) -> None:
        self.api = api
        self.chat_id = chat_id
        self.chats = frozenset({chat_id})
        self.tickets = tickets
        self.db = db
        self.files = files
        self._forum: bool | None = None

    # -- showing tickets --------------------------------------------------------------------------

    async def show(self, ticket: TicketSummary, message: MessageView) -> None:
        """Post one customer message under its ticket; a deleted topic is opened again.

        When the group is at Telegram's limit the job is handed back to the queue (Postponed, for
        the expected wait, not counted as a failed attempt) rather than holding a worker while it
        waits: the post is not lost, and the workers stay free for replies.
        """
        wait = self.api.pacer.expected_wait(self.chat_id, group=True)
        if wait > BUSY_GROUP_S:
            raise Postponed(f"the agents' group is at Telegram's limit; posting in {wait:.0f}s",
                            retry_after=wait - BUSY_GROUP_S / 2)
        try:
            await self._post_message(ticket, message)
        except ChannelError as exc:
            if not thread_missing(exc):
                raise
            await self._forget_topic(ticket.id)
            await self._post_message(ticket, message)

    async def _post_message(self, ticket: TicketSummary, message: MessageView) -> None:
        thread = await self._place(ticket)
        head = f"<b>{escape(ticket.ref)}</b> · {escape(message.sender or ticket.customer_name or '')}"
        text = message.text or ""
        if message.attachments:
            text += "\n" + "\n".join(f"📎 {name}" for name in message.attachments)
        await self._post(ticket.id, thread, head, text)

    async def _place(self, ticket: TicketSummary) -> int | None:
        """The ticket's topic (opened, with its card, on its first message); None in a plain group."""
        if not await self._is_forum():
            if not await self._posted_before(ticket.id):
                await self._card(ticket, None)
            return None
        thread = await self._topic_of(ticket.id)
        if thread is None:
            thread = await self.api.create_topic(self.chat_id, f"{ticket.ref} {ticket.subject or ''}".strip())
            await self.db.run_write(lambda conn: conn.execute(sa.insert(desk_topics), {
                "ticket_id": ticket.id, "chat_id": self.chat_id, "thread_id": thread, "created_at": utcnow()}))
            await self._card(ticket, thread)
        return thread

    async def _card(self, ticket: TicketSummary, thread: int | None) -> None:
        sent = await self.api.send_text(self.chat_id, card_html(ticket), group=True, thread_id=thread, html=True,
                                        reply_markup=_buttons(ticket.id))
        await self._remember(ticket.id, sent.message_id)

    async def _post(self, ticket_id: int, thread: int | None, head: str, text: str) -> None:
        """`head` (HTML) and then `text` (shown literally), split at Telegram's limit."""
        room = TEXT_LIMIT - len(head) - 2
        for part in split_text(text, room) or [""]:
            sent = await self.api.send_text(self.chat_id, f"{head}\n{escape(part)}".rstrip(), group=True,
                                            thread_id=thread, html=True)
            await self._remember(ticket_id, sent.message_id)

    async def say(self, ticket_id: int, text_html: str) -> None:
        """A line from the gateway in the ticket's place (a delivery failure, a refusal)."""
        thread = await self._topic_of(ticket_id) if await self._is_forum() else None
        sent = await self.api.send_text(self.chat_id, text_html, group=True, thread_id=thread, html=True)
        await self._remember(ticket_id, sent.message_id)

    # -- agents' actions ------------------------------------------------------------------------

    async def handle(self, update: AgentMessage | ButtonPress, update_id: int) -> None:
        agent = await self._agent(update.user_id)
        if isinstance(update, ButtonPress):
            await self._button(update, agent, update_id)
            return
        if update.command == "help":
            await self._answer(update, HELP)
            return
        ticket_id = await self._ticket_of(update)
        if agent is None:
            if update.command or ticket_id is not None:
                await self._answer(update, "Sorry, only registered agents can act on tickets here; "
                                           "ask an admin to add you (kartabl agents add).")
            return
        if ticket_id is None:
            if update.command:
                await self._answer(update, "Which ticket? Use the command in its topic, or reply to one of its "
                                           "messages.")
            return
        await self._act(update, agent, ticket_id, update_id)

    async def _act(self, update: AgentMessage, agent: tuple[int, str], ticket_id: int, update_id: int) -> None:
        agent_id, name = agent
        actor = f"agent:{agent_id}"
        once = (str(ChannelKind.TELEGRAM), f"update:{update_id}")
        command, args = update.command, update.args
        try:
            if command is None:
                files = await self._store_files(update)
                if update.text or files:
                    await self.tickets.reply(ticket_id, update.text or "", agent_id=agent_id, files=files, once=once)
                return
            done = await self._command(command, args, ticket_id, agent_id, actor, once)
        except TicketNotFound:
            done = "That ticket no longer exists."
        if done:
            await self._answer(update, done)

    async def _command(self, command: str, args: str, ticket_id: int, agent_id: int, actor: str,
                       once: Once | None) -> str | None:
        ref = ticket_ref(ticket_id)
        if command == "take":
            await self.tickets.assign(ticket_id, agent_id, actor=actor)
            await self.tickets.set_status(ticket_id, TicketStatus.OPEN, actor=actor)
            return f"{ref} is yours now."
        if command == "assign":
            other = await self._agent_named(args.strip().lstrip("@"))
            if other is None:
                return f"No registered agent called {escape(args.strip()) or '(nobody)'}."
            await self.tickets.assign(ticket_id, other[0], actor=actor)
            return f"{ref} assigned to {escape(other[1])}."
        if command == "transfer":
            department = await self._department_named(args.strip())
            if department is None:
                return f"No department called {escape(args.strip()) or '(none given)'}."
            await self.tickets.transfer(ticket_id, department, actor=actor)
            return f"{ref} referred to {escape(args.strip())}; its history goes with it."
        if command == "note":
            if not args.strip():
                return "Usage: /note &lt;text&gt;"
            await self.tickets.note(ticket_id, args.strip(), agent_id=agent_id, once=once)
            return "Noted (internal, not sent to the customer)."
        if command in ("close", "reopen"):
            status = TicketStatus.CLOSED if command == "close" else TicketStatus.OPEN
            changed = await self.tickets.set_status(ticket_id, status, actor=actor)
            return f"{ref} {'closed' if command == 'close' else 'reopened'}." if changed else f"{ref} already was."
        if command == "priority":
            try:
                priority = Priority(args.strip().lower())
            except ValueError:
                return "Usage: /priority low|normal|high|urgent"
            await self.tickets.set_priority(ticket_id, priority, actor=actor)
            return f"{ref} priority: {priority}."
        if command == "history":
            return history_html(await self.tickets.summary(ticket_id))
        return f"Unknown command /{escape(command)}; /help lists them."

    async def _button(self, press: ButtonPress, agent: tuple[int, str] | None, update_id: int) -> None:
        if agent is None:
            await self.api.answer_button(press.callback_id, "Only registered agents can do this.")
            return
        action, _, ticket = press.data.partition(":")
        if not ticket.isdigit() or action not in ("take", "close", "escalate", "transfer"):
            await self.api.answer_button(press.callback_id, "Unknown button.")
            return
        ticket_id, actor = int(ticket), f"agent:{agent[0]}"
        if action == "transfer":
            await self.api.answer_button(press.callback_id, "Reply /transfer <department> in the topic.")
            return
        answer = (await self._escalate(ticket_id, actor) if action == "escalate"
                  else await self._command(action, "", ticket_id, agent[0], actor, None))
        await self.api.answer_button(press.callback_id, _plain(answer or "")[:200])
        await self.say(ticket_id, f"{escape(agent[1])}: {answer}")

    async def _escalate(self, ticket_id: int, actor: str) -> str:
        summary = await self.tickets.summary(ticket_id)
        higher = _ESCALATED[Priority(summary.priority)]
        await self.tickets.set_priority(ticket_id, higher, actor=actor)
        return f"{summary.ref} priority: {higher}."

    async def _answer(self, update: AgentMessage, text_html: str) -> None:
        await self.api.send_text(update.chat_id, text_html, group=True, thread_id=update.thread_id, html=True,
                                 reply_to=update.message_id)

    async def _store_files(self, update: AgentMessage) -> list[StoredAttachment]:
        """The files an agent sent with a reply, kept like a customer's (size and count limits)."""
        found = [InboundAttachment(ref.filename, ref.content_type, await self.api.download(ref), ref.size)
                 for ref in update.files]
        return [f for f in await self.files.keep(found) if not f.omitted]

    # -- lookups --------------------------------------------------------------------------------

    async def _ticket_of(self, update: AgentMessage) -> int | None:
        """The ticket an agent's message is about: its topic, the bot post it replies to, or a T-ref."""
        async with self.db.read() as conn:
            if update.thread_id is not None:
                found = (await conn.execute(sa.select(desk_topics.c.ticket_id).where(
                    desk_topics.c.chat_id == update.chat_id, desk_topics.c.thread_id == update.thread_id))).scalar()
                if found is not None:
                    return found
            if update.reply_to_message_id is not None:
                found = (await conn.execute(sa.select(desk_posts.c.ticket_id).where(
                    desk_posts.c.chat_id == update.chat_id,
                    desk_posts.c.message_id == update.reply_to_message_id))).scalar()
                if found is not None:
                    return found
        return parse_ticket_ref(update.args) if update.command else None

    async def _agent(self, telegram_user_id: int) -> tuple[int, str] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(agents.c.id, agents.c.name).where(
                agents.c.telegram_user_id == telegram_user_id, agents.c.active.is_(True)))).first()
        return (row.id, row.name) if row else None

    async def _agent_named(self, username: str) -> tuple[int, str] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(agents.c.id, agents.c.name).where(
                sa.func.lower(agents.c.username) == username.lower(), agents.c.active.is_(True)))).first()
        return (row.id, row.name) if row else None

    async def _department_named(self, name: str) -> int | None:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(departments.c.id).where(
                sa.func.lower(departments.c.name) == name.lower()))).scalar()

    async def _topic_of(self, ticket_id: int) -> int | None:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(desk_topics.c.thread_id).where(
                desk_topics.c.ticket_id == ticket_id, desk_topics.c.chat_id == self.chat_id))).scalar()

    async def _forget_topic(self, ticket_id: int) -> None:
        log.info("the topic of %s was deleted; opening a new one", ticket_ref(ticket_id))
        await self.db.run_write(lambda conn: conn.execute(sa.delete(desk_topics).where(
            desk_topics.c.ticket_id == ticket_id, desk_topics.c.chat_id == self.chat_id)))

    async def _posted_before(self, ticket_id: int) -> bool:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(desk_posts.c.message_id).where(
                desk_posts.c.ticket_id == ticket_id, desk_posts.c.chat_id == self.chat_id).limit(1))).first() is not None

    async def _remember(self, ticket_id: int, message_id: int) -> None:
        await self.db.run_write(lambda conn: conn.execute(sa.insert(desk_posts), {
            "chat_id": self.chat_id, "message_id": message_id, "ticket_id": ticket_id, "created_at": utcnow()}))

    async def _is_forum(self) -> bool:
        if self._forum is None:
            self._forum = await self.api.is_forum(self.chat_id)
        return self._forum


def card_html(ticket: TicketSummary) -> str:
    """The ticket's card: who, where from, their earlier requests, and where the ticket stands."""
    lines = [f"<b>{escape(ticket.ref)}</b> · {escape(ticket.subject or '(no subject)')}",
             f"👤 {escape(ticket.customer_name or '—')} · {escape(', '.join(ticket.customer_addresses))}",
             f"Channel: {escape(ticket.channel)} · Priority: {escape(ticket.priority)} · Status: {escape(ticket.status)}",
             f"Department: {escape(ticket.department or '—')} · Assignee: {escape(ticket.assignee or '—')}"]
    if ticket.first_response_due or ticket.resolution_due:
        lines.append(f"SLA: first response by {_when(ticket.first_response_due)}, "
                     f"resolution by {_when(ticket.resolution_due)}")
    if ticket.earlier:
        shown = ", ".join(f"{e.ref} ({escape(e.status)}, {escape(e.channel)})" for e in ticket.earlier)
        more = f" and {ticket.earlier_count - len(ticket.earlier)} more" if ticket.earlier_count > len(ticket.earlier) else ""
        lines.append(f"Earlier: {shown}{more}")
    return "\n".join(lines)


def history_html(ticket: TicketSummary) -> str:
    if not ticket.earlier:
        return f"{escape(ticket.ref)}: the customer's first request."
    rows = [f"{e.ref} · {escape(e.subject or '(no subject)')} · {escape(e.status)} · {escape(e.channel)} · "
            f"{e.created_at:%Y-%m-%d}" for e in ticket.earlier]
    return f"<b>Earlier requests ({ticket.earlier_count})</b>\n" + "\n".join(rows)


def _buttons(ticket_id: int) -> telegram.InlineKeyboardMarkup:
    return telegram.InlineKeyboardMarkup([[
        telegram.InlineKeyboardButton("Take", callback_data=f"take:{ticket_id}"),
        telegram.InlineKeyboardButton("Close", callback_data=f"close:{ticket_id}"),
        telegram.InlineKeyboardButton("Escalate", callback_data=f"escalate:{ticket_id}"),
        telegram.InlineKeyboardButton("Transfer", callback_data=f"transfer:{ticket_id}"),
    ]])


def _when(at: dt.datetime | None) -> str:
    return "—" if at is None else f"{at:%Y-%m-%d %H:%M} UTC"


def _plain(html_text: str) -> str:
    """What a button's answer shows: a popup takes no markup."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))
