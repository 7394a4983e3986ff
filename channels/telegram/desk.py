"""The agents' desk in a Telegram group: each ticket in its topic with a card, and what agents do there."""

from __future__ import annotations

import collections
import datetime as dt
import html
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Sequence

import sqlalchemy as sa
import telegram

from channels.telegram.bot import BotApi, thread_missing
from channels.telegram.text import TEXT_LIMIT, escape, split_text
from channels.telegram.updates import AgentMessage, ButtonPress
from gateway.attachments import AttachmentStore, StoredAttachment
from gateway.db import Database
from gateway.domain import ChannelKind, Direction, JobState, Priority, TicketStatus, parse_ticket_ref, ticket_ref
from gateway.errors import AuthError, ChannelError, PermanentError, Postponed, TicketNotFound, TransientError
from gateway.jobs import Job
from gateway.messages import InboundAttachment, utcnow
from gateway.schema import agents, departments, desk_posts, desk_queue, desk_topics, jobs
from gateway.tickets import MessageView, Once, TicketService, TicketSummary
from gateway.worker import Handler

log = logging.getLogger("kartabl.channels.telegram.desk")

HELP = (
    "<b>Commands</b> (in a ticket's topic, or replying to one of its messages)\n"
    "/take: the ticket is yours\n/assign @agent: give it to a colleague\n"
    "/transfer &lt;department&gt;: refer it to a department\n/note &lt;text&gt;: an internal note, never sent\n"
    "/resolve (the customer is told and asked for a score), /wait (waiting for the customer), /close, /reopen\n"
    "/priority low|normal|high|urgent\n/history: the customer's earlier tickets\n"
    "/approve &lt;id&gt; [new text], /reject &lt;id&gt; [reason]: a held reply (leads)\n/away, /back: take no new tickets, or again\n"
    "Anything else you write in the topic goes to the customer, on the channel they used."
)
#: The job that posts, in order and as Telegram allows, what waits for a busy group (one per group).
DRAIN_JOB = "desk.drain"
#: A post that would wait longer than this share of the group's window (5 s of Telegram's minute)
#: for the group's budget waits in the group's queue instead, and the agents hear of it by digest.
BUSY_SHARE = 1 / 12
#: The drain starts this long after the first post waits, so the first digest names the whole burst
#: (the time a burst takes to come in and be stored), not its first ticket.
GATHER_S = 2.0
#: At most one digest per this share of the window (10 s of a minute): a steady stream of new tickets
#: is listed a few at a time, not one digest per ticket.
DIGEST_EVERY_SHARE = 1 / 6
#: How long the group's queue waits when Telegram refuses the token, before it tries again.
AUTH_WAIT_S = 60.0
#: New tickets a digest names with their channel, customer and subject; the rest by reference only.
DIGEST_DETAILED = 25
#: Characters of one digest: Telegram allows 4096 after the markup is taken out; the head needs room.
DIGEST_ROOM = 3600
#: Department chats are read again this often (seconds): `kartabl departments add` needs no restart.
CHATS_TTL_S = 30.0
_STATUSES = {"close": (TicketStatus.CLOSED, "closed"), "reopen": (TicketStatus.OPEN, "reopened"),
             "resolve": (TicketStatus.RESOLVED, "resolved"), "wait": (TicketStatus.WAITING, "waiting for the customer")}
_ESCALATED = {Priority.LOW: Priority.NORMAL, Priority.NORMAL: Priority.HIGH, Priority.HIGH: Priority.URGENT,
              Priority.URGENT: Priority.URGENT}


class TelegramDesk:
    """Shows tickets to the agents' groups and turns agents' messages there into ticket actions.

    In a forum supergroup each ticket has its own topic, opened with a card (customer, channel,
    earlier tickets, department, priority, assignee, SLA due) and buttons; every customer message is
    posted into it, and what an agent writes there goes to the customer. In a plain group the posts
    carry the ticket's reference, and agents answer by replying to any of them. A department with its
    own chat (`departments.chat_id`) gets its tickets there; the rest go to the agents' chat. Only
    registered agents (`agents.telegram_user_id`) can act; anyone else is refused politely.

    When a burst brings more than a group may be sent (about 20 messages a minute), the posts wait
    in the group's queue (`desk_queue`), which one job per group drains in order as Telegram allows;
    the new tickets waiting there are listed in a digest first, one message naming many: agents
    learn of the burst in seconds and can `/take` any ticket at once, which opens its topic out of turn.
    """

    def __init__(self, api: BotApi, chat_id: int, tickets: TicketService, db: Database,
                 files: AttachmentStore) -> None:
        self.api = api
        self.home = chat_id
        self.chats = frozenset({chat_id})
        self.tickets = tickets
        self.db = db
        self.files = files
        self._window = api.pacer.group_window
        self._department_chats: dict[str, int] = {}
        self._read_at = -math.inf
        self._forums: dict[int, bool] = {}
        #: Per chat, the tickets being posted at once (not queued), with how many of their posts are under way.
        self._under_way: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self._digested_in_flight: dict[int, set[int]] = collections.defaultdict(set)
        self._digested_at: dict[int, float] = {}
        #: Usernames the workflow file names as leads (read when asked: the file may be reloaded).
        self.lead_names: Callable[[], Collection[str]] = tuple

    @property
    def handlers(self) -> dict[str, Handler]:
        """The desk's own jobs, registered with the worker by the composition root."""
        return {DRAIN_JOB: Handler(run=self.drain)}

    async def refresh(self) -> None:
        """Read the department chats again when they are older than CHATS_TTL_S."""
        if time.monotonic() - self._read_at < CHATS_TTL_S:
            return
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(departments.c.name, departments.c.chat_id).where(
                departments.c.chat_id.is_not(None)))).all()
        self._department_chats = {name: int(chat) for name, chat in rows if _is_chat_id(chat)}
        self.chats = frozenset({self.home, *self._department_chats.values()})
        self._read_at = time.monotonic()

    async def chat_for(self, ticket: TicketSummary) -> int:
        """Where the ticket is shown: its department's own chat, else the agents' chat."""
        await self.refresh()
        return self._department_chats.get(ticket.department or "", self.home)

    # -- showing tickets --------------------------------------------------------------------------

    async def show(self, ticket: TicketSummary, message: MessageView) -> None:
        """Post one customer message under its ticket, now, or in the group's queue when the group is
        at Telegram's limit (or its queue is not empty: posts keep their order)."""
        chat = await self.chat_for(ticket)
        # The queue first: an await between the wait's check and counting this post would let a burst
        # of concurrent posts all pass the check before any of them counted.
        if await self._has_queue(chat) or self._expected_wait(chat) > self._window * BUSY_SHARE:
            await self._queue_post(chat, ticket.id, message.id)
            return
        # Counted at once, with no await since the check: the next show() counts it. Until its card is
        # out, a new ticket posted now may yet wait for the window in the pacer (its topic and card are
        # sends too): the digest names it then, as it names the queue's.
        under_way = self._under_way[chat]
        under_way[ticket.id] += 1
        try:
            await self._post_now(chat, ticket, message)
        finally:
            under_way[ticket.id] -= 1
            if under_way[ticket.id] <= 0:
                del under_way[ticket.id]
                self._digested_in_flight[chat].discard(ticket.id)

    async def _post_now(self, chat: int, ticket: TicketSummary, message: MessageView) -> None:
        """Post the message; a deleted topic is opened again."""
        try:
            await self._post_message(chat, ticket, message)
        except ChannelError as exc:
            if not thread_missing(exc):
                raise
            await self._forget_topic(ticket.id, chat)
            await self._post_message(chat, ticket, message)

    def _expected_wait(self, chat: int) -> float:
        """The pacer's wait, plus a turn for each post under way that may not have asked for one yet."""
        pacer = self.api.pacer
        posting = sum(self._under_way[chat].values())
        return pacer.expected_wait(chat, group=True) + posting * pacer.group_window / pacer.group_count

    async def _post_message(self, chat: int, ticket: TicketSummary, message: MessageView) -> None:
        thread = await self._place(chat, ticket)
        head = f"<b>{escape(ticket.ref)}</b> · {escape(message.sender or ticket.customer_name or '')}"
        text = message.text or ""
        if message.attachments:
            text += "\n" + "\n".join(f"📎 {name}" for name in message.attachments)
        await self._post(chat, ticket.id, thread, head, text)

    async def _place(self, chat: int, ticket: TicketSummary, *, first: bool = False) -> int | None:
        """The ticket's topic (opened, with its card, on its first message); None in a plain group.
        `first`: ahead of the posts waiting for the group's budget."""
        if not await self._is_forum(chat):
            if not await self._seen(ticket.id, chat):
                await self._card(chat, ticket, None, first)
            return None
        thread = await self._topic_of(ticket.id, chat)
        if thread is None:
            thread = await self.api.create_topic(chat, f"{ticket.ref} {ticket.subject or ''}".strip(), first=first)
            await self.db.run_write(lambda conn: conn.execute(sa.insert(desk_topics), {
                "ticket_id": ticket.id, "chat_id": chat, "thread_id": thread, "created_at": utcnow()}))
            await self._card(chat, ticket, thread, first)
        return thread

    async def _card(self, chat: int, ticket: TicketSummary, thread: int | None, first: bool) -> None:
        sent = await self.api.send_text(chat, card_html(ticket), group=True, thread_id=thread, html=True,
                                        reply_markup=_buttons(ticket.id), first=first)
        await self.db.run_write(lambda conn: _remember(conn, chat, ticket.id, sent.message_id))

    async def _post(self, chat: int, ticket_id: int, thread: int | None, head: str, text: str, *,
                    first: bool = False) -> None:
        """`head` (HTML) and then `text` (shown literally), split at Telegram's limit."""
        room = TEXT_LIMIT - len(head) - 2
        for part in split_text(text, room) or [""]:
            sent = await self.api.send_text(chat, f"{head}\n{escape(part)}".rstrip(), group=True,
                                            thread_id=thread, html=True, first=first)
            await self.db.run_write(lambda conn, sent=sent: _remember(conn, chat, ticket_id, sent.message_id))

    async def say(self, ticket_id: int, text_html: str) -> None:
        """A line from the gateway in the ticket's place (a delivery failure, a refusal)."""
        chat = await self.chat_for(await self.tickets.summary(ticket_id))
        thread = await self._topic_of(ticket_id, chat) if await self._is_forum(chat) else None
        sent = await self.api.send_text(chat, text_html, group=True, thread_id=thread, html=True)
        await self.db.run_write(lambda conn: _remember(conn, chat, ticket_id, sent.message_id))

    async def announce(self, text_html: str) -> None:
        """A line from the gateway about no one ticket (a channel that stopped sending), in the agents' chat."""
        await self.api.send_text(self.home, text_html, group=True, html=True, first=True)

    # -- the queue of a busy group, and its digests ----------------------------------------------

    async def _has_queue(self, chat: int) -> bool:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(desk_queue.c.id).where(desk_queue.c.chat_id == chat)
                                       .limit(1))).first() is not None

    async def _queue_post(self, chat: int, ticket_id: int, message_id: int) -> None:
        """The post waits in the group's queue, in the same transaction as a drain job due to run."""
        queue, key = self.tickets.queue, f"{DRAIN_JOB}:{chat}"
        gather = dt.timedelta(seconds=GATHER_S)

        def work(conn: sa.Connection) -> None:
            now = utcnow()
            conn.execute(sa.insert(desk_queue), {"chat_id": chat, "ticket_id": ticket_id, "message_id": message_id,
                                                 "queued_at": now})
            # A running drain may have found the queue empty already: only a pending one will see
            # this post for sure (jobs of one key run one after another).
            pending = conn.execute(sa.select(jobs.c.id).where(
                jobs.c.kind == DRAIN_JOB, jobs.c.key == key, jobs.c.state == JobState.PENDING).limit(1)).first()
            if pending is None:
                queue.enqueue(conn, DRAIN_JOB, {"chat_id": chat}, key=key, due_at=now + gather)
        await self.db.run_write(work)
        queue.wake()

    async def drain(self, job: Job) -> None:
        """Post what waits for the group, oldest first, as fast as Telegram allows; before each post,
        a digest of the new tickets waiting behind it when one is due."""
        chat = int(job.payload["chat_id"])
        while (head := await self._head(chat)) is not None:
            row_id, ticket_id, message_id = head
            await self._digest(chat)
            try:
                ticket, message = await self.tickets.summary(ticket_id), await self.tickets.message(message_id)
                await self._post_now(chat, ticket, message)
            except TransientError as exc:  # Telegram away or a 429: the queue waits, loses nothing
                raise Postponed(f"the agents' group: {exc}", retry_after=max(exc.retry_after or 0.0, 1.0)) from exc
            except AuthError as exc:  # the token was revoked: the queue waits for an operator
                raise Postponed(f"the agents' group: {exc}", retry_after=AUTH_WAIT_S) from exc
            except (PermanentError, TicketNotFound, LookupError) as exc:  # it will never post: the ticket has it
                log.warning("could not post a message of %s in the agents' group: %s", ticket_ref(ticket_id), exc)
            await self.db.run_write(lambda conn, row_id=row_id: conn.execute(
                sa.delete(desk_queue).where(desk_queue.c.id == row_id)))

    async def _head(self, chat: int) -> tuple[int, int, int] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(desk_queue.c.id, desk_queue.c.ticket_id, desk_queue.c.message_id)
                                      .where(desk_queue.c.chat_id == chat).order_by(desk_queue.c.id).limit(1))).first()
        return None if row is None else (row.id, row.ticket_id, row.message_id)

    async def _digest(self, chat: int) -> None:
        """List, in as few messages as fit, the new tickets whose cards are not out yet that no digest
        named: those in the group's queue, and those being posted at once but still waiting for the
        window in the pacer; at most one round per DIGEST_EVERY_SHARE of the window. The head of the
        queue too: its card goes next, but in a busy group next may be a window away."""
        if time.monotonic() - self._digested_at.get(chat, -math.inf) < self._window * DIGEST_EVERY_SHARE:
            return
        queued = await self._unlisted(chat)
        named = self._digested_in_flight[chat]
        in_flight = [t for t in list(self._under_way[chat]) if t not in named and t not in queued
                     and not await self._seen(t, chat)]
        waiting = in_flight + queued  # the ones being posted came first
        while waiting:
            # Only the first few are shown in full: the rest are references, with no need of their cards.
            detailed = [await self.tickets.summary(ticket_id) for ticket_id in waiting[:DIGEST_DETAILED]]
            text, shown = digest_html(detailed, waiting[DIGEST_DETAILED:])
            await self.api.send_text(chat, text, group=True, html=True, first=True)
            await self.db.run_write(lambda conn, shown=shown: conn.execute(
                sa.update(desk_queue).where(desk_queue.c.chat_id == chat, desk_queue.c.ticket_id.in_(shown))
                .values(listed_at=utcnow())))
            named.update(t for t in shown if t in self._under_way[chat])
            self._digested_at[chat] = time.monotonic()
            waiting = waiting[len(shown):]

    async def _unlisted(self, chat: int) -> list[int]:
        """New tickets in the queue (none of theirs posted in the chat), not named by a digest yet."""
        seen = sa.select(desk_posts.c.ticket_id).where(desk_posts.c.chat_id == chat,
                                                       desk_posts.c.ticket_id == desk_queue.c.ticket_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(
                sa.select(desk_queue.c.ticket_id).where(
                    desk_queue.c.chat_id == chat, desk_queue.c.listed_at.is_(None), ~seen.exists())
                .group_by(desk_queue.c.ticket_id).order_by(sa.func.min(desk_queue.c.id)).limit(300))).scalars()
            return list(rows)

    # -- agents' actions ------------------------------------------------------------------------

    async def handle(self, update: AgentMessage | ButtonPress, update_id: int) -> None:
        agent = await self._agent(update.user_id)
        if isinstance(update, ButtonPress):
            await self._button(update, agent, update_id)
            return
        if update.command == "help":
            await self._answer(update, HELP)
            return
        if update.command in ("away", "back") and agent is not None:
            await self.db.run_write(lambda conn: conn.execute(sa.update(agents).where(agents.c.id == agent[0]).values(
                away=update.command == "away")))
            await self._answer(update, f"{escape(agent[1])}: {'away, no new tickets' if update.command == 'away' else 'back, taking tickets'}.")
            return
        ticket_id = await self._ticket_of(update)
        if agent is None:
            if update.command or ticket_id is not None:
                await self._answer(update, "Sorry, only registered agents can act on tickets here; "
                                           "ask an admin to add you (kartabl agents add).")
            return
        if ticket_id is None:
            if update.command:
                await self._answer(update, "Which ticket? Use the command in its topic, reply to one of its "
                                           "messages, or name it: /take T-1042.")
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
        if command in ("take", "assign", "transfer") and done:
            await self._open_now(ticket_id)

    async def _open_now(self, ticket_id: int) -> None:
        """A ticket taken from a digest, or referred to a department with its own chat, gets its place
        there now, out of turn: its card, and the conversation so far."""
        ticket = await self.tickets.summary(ticket_id)
        chat = await self.chat_for(ticket)
        if await self._seen(ticket_id, chat):
            return
        thread = await self._place(chat, ticket, first=True)
        so_far = [m for m in await self.tickets.conversation(ticket_id) if m.direction != Direction.NOTE]
        if so_far:
            await self._post(chat, ticket_id, thread, f"<b>{escape(ticket.ref)}</b> · the conversation so far",
                             conversation_text(so_far), first=True)
            # What waited in the group's queue for this ticket is shown now.
            await self.db.run_write(lambda conn: conn.execute(sa.delete(desk_queue).where(
                desk_queue.c.chat_id == chat, desk_queue.c.ticket_id == ticket_id,
                desk_queue.c.message_id <= so_far[-1].id)))

    async def _command(self, command: str, args: str, ticket_id: int, agent_id: int, actor: str,
                       once: Once | None) -> str | None:
        ref = ticket_ref(ticket_id)
        args = _without_ref(args, ref)
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
        if command in _STATUSES:
            status, done = _STATUSES[command]
            changed = await self.tickets.set_status(ticket_id, status, actor=actor)
            return f"{ref} {done}." if changed else f"{ref} already was."
        if command in ("approve", "reject"):
            return await self._review(command, args, agent_id)
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

    async def _review(self, command: str, args: str, agent_id: int) -> str:
        """A lead approves (optionally with new text) or rejects a held reply, named by its number."""
        number, _, rest = args.strip().partition(" ")
        if not number.isdigit():
            return f"Usage: /{command} &lt;reply number&gt; [{'new text' if command == 'approve' else 'reason'}]"
        async with self.db.read() as conn:
            lead = (await conn.execute(sa.select(agents.c.is_lead, agents.c.username).where(
                agents.c.id == agent_id))).one()
        if not (lead.is_lead or (lead.username or "").lower() in {n.lower() for n in self.lead_names()}):
            return "Only a lead can approve or reject a held reply."
        try:
            if command == "approve":
                ticket_id = await self.tickets.approve(int(number), lead_id=agent_id, text=rest.strip() or None)
                return f"Reply {number} of {ticket_ref(ticket_id)} approved; it goes out now."
            ticket_id = await self.tickets.reject(int(number), lead_id=agent_id, reason=rest.strip())
            return f"Reply {number} of {ticket_ref(ticket_id)} rejected; it will not be sent."
        except TicketNotFound:
            return f"No reply {number} is waiting for review."

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
        """An answer to an agent, ahead of the posts waiting for the group's budget: they wait for it."""
        await self.api.send_text(update.chat_id, text_html, group=True, thread_id=update.thread_id, html=True,
                                 reply_to=update.message_id, first=True)

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

    async def _topic_of(self, ticket_id: int, chat: int) -> int | None:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(desk_topics.c.thread_id).where(
                desk_topics.c.ticket_id == ticket_id, desk_topics.c.chat_id == chat))).scalar()

    async def _forget_topic(self, ticket_id: int, chat: int) -> None:
        log.info("the topic of %s was deleted; opening a new one", ticket_ref(ticket_id))
        await self.db.run_write(lambda conn: conn.execute(sa.delete(desk_topics).where(
            desk_topics.c.ticket_id == ticket_id, desk_topics.c.chat_id == chat)))

    async def _seen(self, ticket_id: int, chat: int) -> bool:
        """Whether the bot has posted anything of the ticket in `chat` (its card, at least)."""
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(desk_posts.c.message_id).where(
                desk_posts.c.ticket_id == ticket_id, desk_posts.c.chat_id == chat).limit(1))).first() is not None

    async def _is_forum(self, chat: int) -> bool:
        if chat not in self._forums:
            self._forums[chat] = await self.api.is_forum(chat)
        return self._forums[chat]


def _remember(conn: sa.Connection, chat: int, ticket_id: int, message_id: int) -> None:
    conn.execute(sa.insert(desk_posts), {"chat_id": chat, "message_id": message_id, "ticket_id": ticket_id,
                                         "created_at": utcnow()})


def _is_chat_id(value: str | None) -> bool:
    return bool(value) and value.lstrip("-").isdigit()


def _without_ref(args: str, ref: str) -> str:
    """A command's arguments without the ticket reference that named the ticket (/transfer T-1042 sales)."""
    return re.sub(rf"^\s*{re.escape(ref)}\b\s*", "", args, flags=re.IGNORECASE)


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


def digest_html(detailed: Sequence[TicketSummary], others: Sequence[int] = (),
                room: int = DIGEST_ROOM) -> tuple[str, list[int]]:
    """One message naming waiting tickets, and which of them it names: `detailed` each on a line of
    their own (reference, channel, customer, subject), then `others` by reference, runs of consecutive
    ones as ranges, so one message names a whole burst."""
    lines: list[str] = []
    shown: list[int] = []
    used = 0
    for ticket in detailed:
        who = ticket.customer_name or ticket.reply_to.partition(":")[2]
        line = (f"<b>{escape(ticket.ref)}</b> · {escape(ticket.channel)} · {escape(_short(who, 40))} · "
                f"{escape(_short(ticket.subject or '(no subject)', 60))}")
        if shown and used + len(line) > room:
            break
        lines.append(line)
        shown.append(ticket.id)
        used += len(line) + 1
    rest: list[int] = []
    for ticket_id in [t.id for t in detailed[len(shown):]] + list(others):
        if used + len(_ranges([*rest, ticket_id])) + 20 > room:
            break
        rest.append(ticket_id)
    if rest:
        lines.append(f"and {len(rest)} more: {_ranges(rest)}")
        shown += rest
    count = f"{len(shown)} new ticket{'s' if len(shown) != 1 else ''}"
    head = (f"🔔 <b>{count}</b> while this group is at Telegram's limit; each gets its own topic as the "
            f"limit allows. <code>/take T-…</code> here takes one now.")
    return head + "\n" + "\n".join(lines), shown


def named_refs(text: str) -> set[str]:
    """Every ticket reference a text names, ranges as `digest_html` writes them (T-1041–T-1090) expanded."""
    found = {f"T-{n}" for n in re.findall(r"T-(\d+)", text)}
    for start, end in re.findall(r"T-(\d+)–T-(\d+)", text):
        found.update(f"T-{n}" for n in range(int(start), int(end) + 1))
    return found


def _ranges(ticket_ids: Sequence[int]) -> str:
    """T-1041–T-1090, T-1092: references, runs of consecutive ones as ranges."""
    runs: list[list[int]] = []
    for ticket_id in sorted(ticket_ids):
        if runs and ticket_id == runs[-1][-1] + 1:
            runs[-1].append(ticket_id)
        else:
            runs.append([ticket_id])
    return ", ".join(ticket_ref(r[0]) if len(r) == 1 else f"{ticket_ref(r[0])}–{ticket_ref(r[-1])}" for r in runs)


def conversation_text(so_far: Sequence[MessageView], room: int = TEXT_LIMIT * 2) -> str:
    """The latest messages of a ticket, oldest first, as plain text within `room` characters."""
    lines: list[str] = []
    used = 0
    for message in reversed(so_far):
        who = "→" if message.direction == Direction.OUTBOUND else "←"
        line = f"{who} {message.created_at:%Y-%m-%d %H:%M} {message.sender or ''}: {message.text}".rstrip()
        if lines and used + len(line) > room:
            lines.append("…")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(reversed(lines))


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
