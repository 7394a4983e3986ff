"""The outbox and job queue: retries with backoff, dead letters, order per ticket, leases."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import sqlalchemy as sa

from gateway.errors import AuthError, PermanentError, Postponed, TransientError
from gateway.domain import JobState
from gateway.jobs import Job, backoff_delay
from gateway.messages import utcnow
from gateway.schema import events, jobs, messages
from gateway.worker import Handler
from tests.conftest import Gateway, eventually, inbound


def test_backoff_doubles_with_jitter_is_capped_and_honours_retry_after() -> None:
    assert backoff_delay(1, 2.0, 100, rand=lambda: 0.0) == 1.0
    assert backoff_delay(1, 2.0, 100, rand=lambda: 1.0) == 2.0
    assert backoff_delay(4, 2.0, 100, rand=lambda: 1.0) == 16.0
    assert backoff_delay(30, 2.0, 100, rand=lambda: 1.0) == 100.0
    assert backoff_delay(1, 2.0, 100, retry_after=37, rand=lambda: 1.0) == 37.0  # provider's floor
    assert backoff_delay(1, 2.0, 10, retry_after=600, rand=lambda: 1.0) == 600.0  # even above the cap


async def _open_ticket(gw: Gateway, sender: str = "email:sara@example.com") -> int:
    result = await gw.runtime.deliver(inbound(f"m-{sender}", sender=sender))
    return result.ticket_id


async def test_a_transient_failure_is_retried_after_the_providers_retry_after(gateway: Gateway) -> None:
    ticket = await _open_ticket(gateway)
    gateway.channel.fail_next_send(TransientError("HTTP 429 Too Many Requests", retry_after=0.6))
    queued = time.monotonic()
    message_id = await gateway.runtime.tickets.reply(ticket, "سلام، پیگیری می‌کنیم.")

    received = (await gateway.channel.next_received(1))[0]
    assert time.monotonic() - queued >= 0.6
    assert (received.text, received.ticket_ref, received.attempt) == ("سلام، پیگیری می‌کنیم.", "T-1001", 2)
    assert str(received.to) == "email:sara@example.com"
    row = await eventually(lambda: gateway.rows(
        sa.select(messages.c.delivery_state, messages.c.attempts, messages.c.provider_id, messages.c.delivery_error)
        .where(messages.c.id == message_id)), lambda rows: rows[0].delivery_state != "pending")
    assert tuple(row[0]) == ("sent", 2, "loop-out-1", None)


async def test_the_error_of_a_retrying_reply_is_visible_until_it_is_sent(gateway: Gateway) -> None:
    ticket = await _open_ticket(gateway)
    gateway.channel.fail_next_send(TransientError("connection reset", retry_after=30))
    message_id = await gateway.runtime.tickets.reply(ticket, "answer")
    view = await eventually(lambda: gateway.runtime.tickets.message(message_id), lambda v: v.delivery_error)
    assert (view.delivery_state, view.delivery_error) == ("pending", "transient: connection reset")
    # The reply shows its error a moment before the worker puts its job back to wait.
    job = (await eventually(lambda: gateway.rows(
        sa.select(jobs.c.state, jobs.c.due_at, jobs.c.last_error).where(jobs.c.kind == "outbox.send")),
        lambda rows: rows[0].state == "pending"))[0]
    assert job.last_error == "transient: connection reset"
    assert job.due_at - utcnow() > dt.timedelta(seconds=25)


async def test_a_permanent_failure_dead_letters_tells_the_agents_and_can_be_retried(gateway: Gateway) -> None:
    ticket = await _open_ticket(gateway)
    gateway.channel.fail_next_send(PermanentError("recipient address rejected"))
    message_id = await gateway.runtime.tickets.reply(ticket, "answer")
    view = await eventually(lambda: gateway.runtime.tickets.message(message_id),
                            lambda v: v.delivery_state == "failed")
    assert view.delivery_error == "permanent: recipient address rejected"
    failure = (await gateway.rows(sa.select(events.c.data).where(events.c.kind == "message.failed")))[0]
    assert failure.data == {"message_id": message_id, "error": "permanent: recipient address rejected"}
    dead = await gateway.runtime.queue.list(JobState.DEAD)  # beside it, the desk.notice job telling the agents
    assert [(j.kind, j.state, j.last_error) for j in dead] == [
        ("outbox.send", "dead", "permanent: recipient address rejected")]
    assert gateway.channel.received == []

    # An operator fixes the cause and retries: the dead job runs again and the reply goes out.
    assert await gateway.runtime.queue.revive([dead[0].id]) == 1
    await gateway.channel.next_received(1)


async def test_a_job_failing_every_time_is_dead_lettered_after_max_attempts(start_gateway) -> None:  # noqa: ANN001
    from gateway.settings import JobSettings

    gw = await start_gateway(jobs=JobSettings(poll_interval=0.05, backoff_base=0.01, max_attempts=3))
    ticket = await _open_ticket(gw)
    gw.channel.fail_next_send(*(TransientError(f"busy {n}") for n in range(5)))
    message_id = await gw.runtime.tickets.reply(ticket, "answer")
    await eventually(lambda: gw.runtime.tickets.message(message_id), lambda v: v.delivery_state == "failed")
    job = (await gw.runtime.queue.list(JobState.DEAD))[0]
    assert (job.state, job.attempts, job.last_error) == ("dead", 3, "transient: busy 2 (after 3 attempts)")


async def test_replies_of_one_ticket_leave_in_order_while_other_tickets_go_on(gateway: Gateway) -> None:
    slow, other = await _open_ticket(gateway, "email:a@example.com"), await _open_ticket(gateway, "email:b@example.com")
    gateway.channel.fail_next_send(TransientError("busy", retry_after=0.8))
    for n in range(1, 6):
        await gateway.runtime.tickets.reply(slow, f"reply {n}")
    # The first reply of `slow` fails once and waits 0.8 s; the four behind it must wait too.
    await eventually(lambda: gateway.rows(sa.select(jobs.c.last_error).where(jobs.c.last_error.is_not(None))))
    await gateway.runtime.tickets.reply(other, "to b")

    received = await gateway.channel.next_received(6)
    assert received[0].text == "to b"  # not held up behind the other ticket's retries
    assert [m.text for m in received if m.ticket_id == slow] == [f"reply {n}" for n in range(1, 6)]


async def test_refused_credentials_are_retried_no_sooner_than_a_minute(gateway: Gateway) -> None:
    ticket = await _open_ticket(gateway)
    gateway.channel.fail_next_send(AuthError("401 Unauthorized"))
    await gateway.runtime.tickets.reply(ticket, "answer")
    rows = await eventually(
        lambda: gateway.rows(sa.select(jobs.c.due_at, jobs.c.last_error).where(jobs.c.kind == "outbox.send")),
        lambda rows: rows and rows[0].last_error)
    assert rows[0].last_error == "credentials refused: 401 Unauthorized"
    assert rows[0].due_at - utcnow() > dt.timedelta(seconds=55)


async def test_a_job_whose_worker_died_is_taken_over_when_its_lease_expires(gateway: Gateway) -> None:
    ran: list[int] = []
    gateway.runtime.register("test.echo", Handler(run=lambda job: _record(ran, job)))
    past = utcnow() - dt.timedelta(seconds=1)

    def leased_to_a_dead_worker(conn: sa.Connection) -> int:
        job_id = gateway.runtime.queue.enqueue(conn, "test.echo", {"n": 1})
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
            state="running", lease_owner="ghost:1", lease_until=past, attempts=1))
        return job_id
    job_id = await gateway.runtime.db.run_write(leased_to_a_dead_worker)
    gateway.runtime.queue.wake()
    await eventually(lambda: gateway.count(jobs, jobs.c.id == job_id), lambda n: n == 0)
    assert ran == [job_id]


async def test_a_running_job_is_handed_back_at_shutdown(start_gateway) -> None:  # noqa: ANN001
    gw = await start_gateway()
    started = asyncio.Event()

    async def forever(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    gw.runtime.register("test.block", Handler(run=forever))
    job_id = await gw.runtime.db.run_write(lambda conn: gw.runtime.queue.enqueue(conn, "test.block", {}))
    gw.runtime.queue.wake()
    await asyncio.wait_for(started.wait(), 5)
    await gw.runtime.worker.stop(grace=0.1)

    row = (await gw.rows(sa.select(jobs.c.state, jobs.c.attempts, jobs.c.lease_owner).where(jobs.c.id == job_id)))[0]
    assert tuple(row) == ("pending", 0, None)


async def test_a_job_of_an_unknown_kind_is_dead_lettered_with_a_clear_error(gateway: Gateway) -> None:
    await gateway.runtime.db.run_write(lambda conn: gateway.runtime.queue.enqueue(conn, "no.such.kind", {}))
    gateway.runtime.queue.wake()
    dead = await eventually(gateway.runtime.queue.list, lambda jobs_: jobs_ and jobs_[0].state == "dead")
    assert dead[0].last_error == "permanent: no handler for job kind 'no.such.kind'"


async def _record(ran: list[int], job: Job) -> None:
    ran.append(job.id)


async def _value(items: list) -> list:
    return items


async def test_a_job_due_later_waits_for_its_time(gateway: Gateway) -> None:
    delay = 0.3
    ran: list[float] = []

    async def stamp(job: Job) -> None:
        ran.append(time.monotonic())

    gateway.runtime.register("test.timer", Handler(run=stamp))
    queued = time.monotonic()
    due = utcnow() + dt.timedelta(seconds=delay)
    await gateway.runtime.db.run_write(lambda conn: gateway.runtime.queue.enqueue(conn, "test.timer", {}, due_at=due))
    gateway.runtime.queue.wake()
    await eventually(lambda: _value(ran))
    assert ran[0] - queued >= delay


async def test_a_note_stays_on_the_ticket_and_never_reaches_the_customer(gateway: Gateway) -> None:
    ticket = await _open_ticket(gateway)
    note_id = await gateway.runtime.tickets.note(ticket, "customer called, VIP", agent_id=None)
    await gateway.runtime.tickets.reply(ticket, "answer")

    received = await gateway.channel.next_received(1)
    assert [m.text for m in received] == ["answer"]
    conversation = await gateway.runtime.tickets.conversation(ticket)
    assert [(m.direction, m.text) for m in conversation] == [
        ("in", "سلام، سفارشم نرسیده"), ("note", "customer called, VIP"), ("out", "answer")]
    note = await gateway.runtime.tickets.message(note_id)
    assert (note.delivery_state, note.delivery_error) == ("received", None)  # never queued, never sent


async def test_only_a_reply_by_a_person_is_the_first_response(gateway: Gateway) -> None:
    from gateway.schema import tickets

    ticket = await _open_ticket(gateway)
    await gateway.runtime.tickets.reply(ticket, "We received your message.", automatic=True)
    row = (await gateway.rows(sa.select(tickets.c.status, tickets.c.first_response_at)
                              .where(tickets.c.id == ticket)))[0]
    assert tuple(row) == ("new", None)

    await gateway.runtime.tickets.reply(ticket, "Here is the answer.")
    first = (await gateway.rows(sa.select(tickets.c.status, tickets.c.first_response_at)
                                .where(tickets.c.id == ticket)))[0]
    assert first.status == "open" and first.first_response_at is not None
    await gateway.runtime.tickets.reply(ticket, "And one more thing.")
    later = await gateway.scalar(sa.select(tickets.c.first_response_at).where(tickets.c.id == ticket))
    assert later == first.first_response_at  # the first response is not moved by later replies
    received = await gateway.channel.next_received(3)
    assert [m.automatic for m in received] == [True, False, False]


async def test_a_postponed_job_runs_again_later_without_spending_its_attempts(gateway: Gateway) -> None:
    runs: list[int] = []

    async def busy_twice(job: Job) -> None:
        runs.append(job.attempts)
        if len(runs) <= 2:
            raise Postponed("the group is at its limit", retry_after=0.05)

    gateway.runtime.register("test.busy", Handler(run=busy_twice))
    job_id = await gateway.runtime.db.run_write(
        lambda conn: gateway.runtime.queue.enqueue(conn, "test.busy", {}, max_attempts=1))
    gateway.runtime.queue.wake()
    await eventually(lambda: gateway.count(jobs, jobs.c.id == job_id), lambda n: n == 0)
    assert runs == [1, 1, 1]  # each run is still the first attempt; one attempt allowed, never dead-lettered
