"""Crash safety: a gateway killed with SIGKILL mid-batch loses no confirmed message and half-writes none."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.attachments import AttachmentStore
from gateway.db import Database
from gateway.domain import Direction
from gateway.ingest import INBOUND_JOB
from gateway.schema import addresses, attachments, customers, events, jobs, messages, tickets
from tests.procs.ingest_forever import POOL, TELEGRAM_BASE, attachments_for, customer_of

CHILD = Path(__file__).parent / "procs" / "ingest_forever.py"
ROUNDS = 8
LINE_TIMEOUT_S = 30  # a child that prints nothing for this long is stuck


@dataclasses.dataclass
class Ledger:
    """What the children confirmed, as the parent (a provider) saw it."""

    confirmed: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # pid -> (message, ticket)
    offered: set[str] = dataclasses.field(default_factory=set)
    stored_new: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def record(self, pid: str, message_id: int, ticket_id: int, outcome: str) -> None:
        ids = (message_id, ticket_id)
        # A re-offer of a stored message must name the message stored first, never a second copy.
        assert self.confirmed.setdefault(pid, ids) == ids, f"{pid} confirmed as {ids}, earlier as {self.confirmed[pid]}"
        if outcome == "new":
            self.stored_new[pid] += 1
            assert self.stored_new[pid] == 1, f"{pid} was stored as new twice"

    def unconfirmed(self) -> list[str]:
        return sorted(self.offered - self.confirmed.keys())


@dataclasses.dataclass
class Round:
    number: int
    kill_after: int  # confirmations
    kill_delay: float  # seconds after them
    confirmed: int = 0
    offered: int = 0
    in_flight: int = 0  # offered, never confirmed, when the child died
    committed_unconfirmed: int = 0  # of those, committed: the kill came between commit and reply


@pytest.mark.slow
async def test_a_process_killed_mid_batch_loses_no_committed_message_and_half_writes_none(
        db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("KARTABL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\ncrash test on {db_url.split(':')[0]}, KARTABL_CRASH_SEED={seed}")  # shown on failure too
    files = tmp_path / "files"
    ledger, rounds = Ledger(), []
    for number in range(ROUNDS):
        rnd = Round(number, rng.randint(20, 300), rng.uniform(0, 0.03))
        in_flight = await _run_until_killed(db_url, files, tmp_path, rnd, rng.randrange(1 << 30), ledger)
        rnd.in_flight, rnd.committed_unconfirmed = len(in_flight), len(await _stored(db_url, in_flight))
        rounds.append(rnd)

    checked = await _check_database(db_url, files, ledger)

    assert sum(r.in_flight for r in rounds) > 0, "no kill found a message in flight: nothing was tested"
    for r in rounds:
        print(f"  round {r.number}: SIGKILL {r.kill_delay * 1000:.0f} ms after confirmation {r.kill_after}: "
              f"{r.confirmed} confirmed, "
              f"{r.offered} offered; {r.in_flight} unconfirmed in flight, {r.committed_unconfirmed} of them "
              "committed before the kill")
    print("  checked: " + ", ".join(f"{n} {what}" for what, n in checked.items()))


async def _run_until_killed(db_url: str, files: Path, tmp_path: Path, rnd: Round, seed: int,
                            ledger: Ledger) -> list[str]:
    """One child life: start it, read its confirmations, SIGKILL it after `rnd.kill_after` of them.

    Returns the provider ids it was given and never confirmed: in flight when it died.
    """
    earlier = tmp_path / f"earlier-{rnd.number}.json"
    earlier.write_text(json.dumps({"confirmed": sorted(ledger.confirmed), "unconfirmed": ledger.unconfirmed()}))
    stderr_path = tmp_path / f"child-{rnd.number}.err"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), db_url, str(files), str(rnd.number), str(seed), str(earlier),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    offered_now: set[str] = set()
    kill = None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT_S)
            if not line:
                break  # the child ended; only SIGKILL may end it (checked below)
            _read(line, rnd, ledger, offered_now)
            if rnd.confirmed >= rnd.kill_after and kill is None:
                # Killing at once would always hit the same moment of a batch's life (right after
                # its replies); a random delay up to a few batches long lands anywhere in one.
                kill = asyncio.get_running_loop().call_later(rnd.kill_delay, _kill, proc)
        # Lines the child wrote before it died are confirmations too: the loop reads them all.
        returncode = await proc.wait()
    finally:
        if kill is not None:
            kill.cancel()
        _kill(proc)
        await proc.wait()
    assert returncode == -signal.SIGKILL, (
        f"round {rnd.number}: the child exited with {returncode} before it was killed:\n"
        + stderr_path.read_text(errors="replace")[-4000:])
    return sorted(offered_now - ledger.confirmed.keys())


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it died of itself meanwhile
            proc.send_signal(signal.SIGKILL)


def _read(line: bytes, rnd: Round, ledger: Ledger, offered_now: set[str]) -> None:
    if not line.endswith(b"\n"):
        return  # cut short by the kill: never a confirmation
    word, *fields = line.decode().split()
    if word == "offered":
        rnd.offered += 1
        offered_now.add(fields[0])
        ledger.offered.add(fields[0])
    elif word == "committed":
        pid, message_id, ticket_id, outcome = fields
        ledger.record(pid, int(message_id), int(ticket_id), outcome)
        rnd.confirmed += 1


async def _stored(db_url: str, pids: list[str]) -> set[str]:
    db = Database(db_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(sa.select(messages.c.provider_id).where(messages.c.provider_id.in_(pids)))
            return {pid for (pid,) in rows}
    finally:
        await db.dispose()


async def _check_database(db_url: str, files: Path, ledger: Ledger) -> dict[str, int]:
    db = Database(db_url)
    try:
        async with db.read() as conn:
            tables = {name: (await conn.execute(query)).all() for name, query in {
                "messages": sa.select(messages.c.id, messages.c.provider_id, messages.c.ticket_id,
                                      tickets.c.customer_id, tickets.c.channel)
                .join(tickets, tickets.c.id == messages.c.ticket_id, isouter=True)
                .where(messages.c.direction == Direction.INBOUND),
                "tickets": sa.select(tickets.c.id, tickets.c.customer_id, tickets.c.channel),
                "customers": sa.select(customers.c.id),
                "addresses": sa.select(addresses.c.customer_id, addresses.c.kind, addresses.c.value),
                "events": sa.select(events.c.kind, events.c.ticket_id, events.c.customer_id, events.c.data),
                "jobs": sa.select(jobs.c.kind, jobs.c.state, jobs.c.payload),
                "attachments": sa.select(attachments.c.message_id, attachments.c.filename,
                                         attachments.c.size, attachments.c.sha256).order_by(attachments.c.id),
            }.items()}
    finally:
        await db.dispose()
    stored = _check_messages(tables["messages"], ledger)
    _check_events_and_jobs(tables, stored)
    on_disk = _check_attachments(tables["attachments"], stored, files)
    _check_customers(tables, stored)
    return {"messages": len(stored), "confirmed provider ids": len(ledger.confirmed),
            "tickets": len(tables["tickets"]), "customers": len(tables["customers"]),
            "attachment files": on_disk}


def _check_messages(rows: list, ledger: Ledger) -> dict[int, sa.Row]:
    """Every confirmed message stored once, as confirmed; every stored one on an existing ticket."""
    by_pid = collections.defaultdict(list)
    for row in rows:
        by_pid[row.provider_id].append(row)
    twice = {pid: [r.id for r in found] for pid, found in by_pid.items() if len(found) > 1}
    assert not twice, f"provider ids stored more than once: {twice}"
    lost = sorted(pid for pid in ledger.confirmed if pid not in by_pid)
    assert not lost, f"{len(lost)} confirmed messages are not stored: {lost[:10]}"
    wrong = {pid: (ids, (by_pid[pid][0].id, by_pid[pid][0].ticket_id))
             for pid, ids in ledger.confirmed.items() if ids != (by_pid[pid][0].id, by_pid[pid][0].ticket_id)}
    assert not wrong, f"stored under other ids than confirmed (confirmed, stored): {wrong}"
    unknown = sorted(set(by_pid) - ledger.offered)
    assert not unknown, f"stored messages nobody offered: {unknown[:10]}"
    orphans = [r.id for r in rows if r.customer_id is None]
    assert not orphans, f"messages whose ticket does not exist: {orphans[:10]}"
    return {row.id: row for row in rows}


def _check_events_and_jobs(tables: dict[str, list], stored: dict[int, sa.Row]) -> None:
    """Each message committed with exactly one workflow job; each new customer and ticket with its event."""
    workflow = collections.Counter()
    for kind, state, payload in tables["jobs"]:
        assert kind == INBOUND_JOB and state == "pending", f"unexpected job {kind} {state} {payload}"
        workflow[payload["message_id"]] += 1
        assert stored[payload["message_id"]].ticket_id == payload["ticket_id"], f"job {payload}"
    not_once = {mid: workflow[mid] for mid in stored if workflow[mid] != 1}
    assert not not_once, f"messages without exactly one {INBOUND_JOB} job (id: count): {not_once}"

    for kind, count in (("ticket.created", len(tables["tickets"])), ("customer.created", len(tables["customers"]))):
        subjects = collections.Counter(
            ticket_id if kind.startswith("ticket") else customer_id
            for k, ticket_id, customer_id, _ in tables["events"] if k == kind)
        assert len(subjects) == count and set(subjects.values()) == {1}, f"{kind} events: {subjects}"


def _check_attachments(rows: list, stored: dict[int, sa.Row], files: Path) -> int:
    """Each message has the attachment rows of what was sent, and each row's file is on disk, intact."""
    store = AttachmentStore(files, max_bytes=1, max_count=1)  # only for its paths
    by_message = collections.defaultdict(list)
    for row in rows:
        by_message[row.message_id].append((row.filename, row.size, row.sha256))
    assert set(by_message) <= set(stored), f"attachment rows of no stored message: {set(by_message) - set(stored)}"
    digests = set()
    for mid, row in stored.items():
        sent = [(f.filename, len(f.data), hashlib.sha256(f.data).hexdigest()) for f in attachments_for(row.provider_id)]
        assert by_message.get(mid, []) == sent, f"attachments of {row.provider_id}"
        digests.update(sha for _, _, sha in sent)
    for digest in digests:
        path = store.path_for(digest)
        assert path.is_file(), f"attachment file missing: {path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"attachment file corrupt: {path}"
    return len(digests)


def _check_customers(tables: dict[str, list], stored: dict[int, sa.Row]) -> None:
    """One customer per person, each with an address; one ticket per customer and channel, none empty."""
    customer_ids = {cid for (cid,) in tables["customers"]}
    owner = {(kind, value): cid for cid, kind, value in tables["addresses"]}
    assert customer_ids == set(owner.values()), f"customers without an address: {customer_ids - set(owner.values())}"
    for row in stored.values():
        who = customer_of(row.provider_id)
        person = {owner.get(("email", f"c{who}@example.com")), owner.get(("telegram", str(TELEGRAM_BASE + who)))}
        assert person - {None} == {row.customer_id}, f"customer {who} (of {row.provider_id}) split over {person}"
    assert len(customer_ids) <= POOL

    with_message = {row.ticket_id for row in stored.values()}
    empty = [tid for tid, _, _ in tables["tickets"] if tid not in with_message]
    assert not empty, f"tickets without a message: {empty}"
    per_channel = collections.Counter((cid, channel) for _, cid, channel in tables["tickets"])
    doubled = {k: n for k, n in per_channel.items() if n > 1}
    assert not doubled, f"customers with two tickets on one channel: {doubled}"
