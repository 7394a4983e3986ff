"""Outage bench: `kartabl run` with email, Telegram and SMS while its PostgreSQL is stopped for 30 s.

The same gateway, stand-ins, customers and agents as bench/crash.py (see its docstring), on a private
PostgreSQL server (tests/servers/postgres.py) that this script stops (`pg_ctl stop -m immediate`, every
session cut at once, as a crash or a failover does) and starts again on the same port and data. The
gateway process is never restarted: it must notice, say so, hold on and recover by itself.

The run: customers write on all three channels at random moments from before the outage until after
it; agents queue half their replies in the seconds before the stop (so sends are in flight when it
comes) and the rest after it; /healthz is read every half second throughout. Checks, each a FAILURE
when it does not hold:

1. Nothing lost, nothing twice: every customer message stored once on a ticket, every agent reply and
   acknowledgement delivered, no job dead, and no delivery repeated (one process, no kill: bench/crash.py's
   duplicate check allows none).
2. Clear health: /healthz answers 503 with `"status": "down"` and the database's error within
   DETECT_S of the stop, and keeps answering so until the start; once the server is back, "ok" again
   within RECOVER_S, with no operator action.
3. Clear logs: exactly one line saying the database is unreachable and one saying it is back (with the
   outage's length), a line per paused channel, no traceback, and few lines in all during the outage.
4. One life: the gateway neither exited nor needed a restart, and stopped cleanly on SIGTERM at the end.

Usage: python bench/outage.py [--seed N] [--outage SECONDS] [--per-channel N] [--replies N]
Exit status: 0 every check passed, 1 a check failed, 2 the bench could not run.
"""

from __future__ import annotations

import os
import sys

_BENCH = os.path.dirname(os.path.abspath(__file__))
if any(os.path.abspath(p or os.curdir) == _BENCH for p in sys.path):  # see bench/crash.py
    sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.crash import (Agents, Customers, GatewayProcess, Outcome, Plan, Providers, _check, _drain,
                         _healthy, log, migrate)
from gateway.db import Database
from tests.servers.postgres import PrivatePostgres, Unavailable

DETECT_S = 5.0  # from the stop to /healthz saying "down"
RECOVER_S = 15.0  # from the start to /healthz saying "ok"
OUTAGE_LOG_LINES = 25  # warnings and errors the gateway may log while the database is away
_LINE = re.compile(r"^\S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(\S+): (.*)$")


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since the stop (negative: before it)
    code: int | None  # None: no HTTP answer at all
    status: str
    channels: dict[str, str]


@dataclasses.dataclass
class Outage:
    """What the health endpoint and the log showed around the outage."""

    seconds: float
    samples: list[Sample] = dataclasses.field(default_factory=list)
    detected_after: float | None = None  # stop -> first "down"
    recovered_after: float | None = None  # start -> first "ok" after it
    unreachable_lines: list[str] = dataclasses.field(default_factory=list)
    back_lines: list[str] = dataclasses.field(default_factory=list)
    paused_lines: list[str] = dataclasses.field(default_factory=list)
    outage_lines: int = 0  # WARNING and above, from the stop to the start
    tracebacks: int = 0

    def summary(self) -> str:
        states = sorted({f"{k}: {v}" for s in self.samples if s.status == "down" for k, v in s.channels.items()})
        return "\n".join([
            f"  database stopped for {self.seconds:.0f} s: /healthz said \"down\" after "
            f"{_seconds(self.detected_after)}, \"ok\" {_seconds(self.recovered_after)} after the start",
            f"  channel states while down: {', '.join(states) or 'none seen'}",
            f"  log: {len(self.unreachable_lines)} 'unreachable' line(s), {len(self.back_lines)} 'back' line(s), "
            f"{len(self.paused_lines)} channel pause line(s), {self.outage_lines} warnings or errors during the "
            f"outage, {self.tracebacks} tracebacks",
            *(f"    {line}" for line in self.unreachable_lines + self.back_lines + self.paused_lines)])


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


async def run(plan: Plan, workdir: Path, outage_s: float = 30.0,
              say: Callable[[str], None] = log) -> tuple[Outcome, Outage]:
    """The whole bench on a private PostgreSQL server of its own; returns what it found."""
    server = await asyncio.to_thread(PrivatePostgres.create)
    try:
        return await _run(plan, workdir, server, outage_s, say)
    finally:
        await asyncio.to_thread(server.destroy)


async def _run(plan: Plan, workdir: Path, server: PrivatePostgres, outage_s: float,
               say: Callable[[str], None]) -> tuple[Outcome, Outage]:
    outcome, outage = Outcome(plan, "PostgreSQL (private, stopped and started)"), Outage(outage_s)
    began = time.monotonic()
    await migrate(server.url)
    async with contextlib.AsyncExitStack() as stack:
        providers = await Providers.start(workdir, stack)
        db = Database(server.url)
        stack.push_async_callback(db.dispose)
        gateway = GatewayProcess(providers.environment(server.url, workdir), workdir)
        stack.push_async_callback(gateway.kill_if_alive)
        customers, agents = Customers(plan, providers), Agents(db, workdir)
        life = await gateway.start()
        if not await _healthy(providers.http_port, gateway, 60, life):
            raise RuntimeError(f"the gateway did not become healthy:\n{gateway.tail(life)}")

        lead_in = 8.0
        customers.send_waiting()
        feeding = asyncio.create_task(customers.burst(lead_in + outage_s + 12, random.Random(plan.seed + 1)))
        stack.callback(feeding.cancel)
        before = asyncio.create_task(agents.work(plan.replies // 2, lead_in - 1, random.Random(plan.seed + 2)))
        stack.callback(before.cancel)
        stopped_at = time.monotonic() + lead_in
        watching = asyncio.create_task(_watch(providers.http_port, stopped_at, outage))
        stack.callback(watching.cancel)

        await asyncio.sleep(lead_in)
        await asyncio.wait_for(before, 30)  # the agents' first replies are queued (some still sending)
        stop_wall = time.time()
        await asyncio.to_thread(server.stop)
        say(f"database stopped; {len(agents.queued)} replies queued before")
        await asyncio.sleep(outage_s)
        start_wall = time.time()
        await asyncio.to_thread(server.start)
        say("database started again")
        await _until_ok(outage, RECOVER_S + 5)
        await agents.work(plan.replies - len(agents.queued), 6, random.Random(plan.seed + 3))
        await feeding
        drained_from = time.monotonic()
        drained = await _drain(db, customers, plan.drain_timeout)
        outcome.drain_seconds = time.monotonic() - drained_from
        watching.cancel()
        last = await gateway.stop()
        if not drained:
            outcome.failures.append(f"not everything was stored and sent {plan.drain_timeout:.0f} s after the outage:"
                                    f"\n{gateway.tail(last)}")
        outcome.seconds = time.monotonic() - began
        outcome.lives, outcome.orphans, outcome.deadlocks = gateway.lives, gateway.orphans, agents.deadlocks
        await _check(outcome, db, customers, agents, providers.deliveries())
        _read_log(outage, life.log, stop_wall, start_wall)
        _judge(outcome, outage, gateway)
    return outcome, outage


async def _watch(port: int, stopped_at: float, outage: Outage) -> None:
    """Read /healthz every half second, noting what it said, relative to the stop."""
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            at = time.monotonic() - stopped_at
            try:
                answer = await client.get(f"http://127.0.0.1:{port}/healthz")
                body = answer.json()
                sample = Sample(at, answer.status_code, body.get("status", "?"),
                                {k: v.get("state", "?") for k, v in body.get("channels", {}).items()})
            except (httpx.HTTPError, ValueError) as exc:
                sample = Sample(at, None, f"no answer ({type(exc).__name__})", {})
            outage.samples.append(sample)
            if sample.status == "down" and at >= 0 and outage.detected_after is None:
                outage.detected_after = at
            if sample.status == "ok" and at > outage.seconds and outage.recovered_after is None:
                outage.recovered_after = at - outage.seconds
            await asyncio.sleep(0.5)


async def _until_ok(outage: Outage, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while outage.recovered_after is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def _read_log(outage: Outage, path: Path | None, stop_wall: float, start_wall: float) -> None:
    text = path.read_text(errors="replace") if path and path.exists() else ""
    outage.tracebacks = text.count("Traceback (most recent call last)")
    for line in text.splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        level, logger, message = found.groups()
        if logger == "kartabl.db" and "unreachable" in message:
            outage.unreachable_lines.append(line)
        elif logger == "kartabl.db" and "reachable again" in message:
            outage.back_lines.append(line)
        elif logger == "kartabl.runtime" and " paused: " in message:
            outage.paused_lines.append(line)
        with contextlib.suppress(ValueError):
            stamp = dt.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            if level in ("WARNING", "ERROR", "CRITICAL") and stop_wall - 1 <= stamp <= start_wall + 1:
                outage.outage_lines += 1


def _judge(outcome: Outcome, outage: Outage, gateway: GatewayProcess) -> None:
    fail = outcome.failures.append
    if outcome.duplicates:
        fail(f"{len(outcome.duplicates)} replies delivered twice without any crash")
    if outage.detected_after is None or outage.detected_after > DETECT_S:
        fail(f"/healthz said \"down\" after {_seconds(outage.detected_after)} (limit {DETECT_S:.0f} s)")
    wrong = [s for s in outage.samples if DETECT_S <= s.at <= outage.seconds and s.status != "down"]
    if wrong:
        fail(f"/healthz during the outage said {wrong[0].status!r} ({wrong[0].code}) at {wrong[0].at:.1f} s")
    if outage.recovered_after is None or outage.recovered_after > RECOVER_S:
        fail(f"/healthz said \"ok\" {_seconds(outage.recovered_after)} after the start (limit {RECOVER_S:.0f} s)")
    if len(outage.unreachable_lines) != 1 or len(outage.back_lines) != 1:
        fail(f"{len(outage.unreachable_lines)} 'unreachable' and {len(outage.back_lines)} 'reachable again' log "
             "lines: one of each expected")
    if outage.tracebacks:
        fail(f"{outage.tracebacks} tracebacks in the gateway's log")
    if outage.outage_lines > OUTAGE_LOG_LINES:
        fail(f"{outage.outage_lines} warnings and errors logged during the outage (at most {OUTAGE_LOG_LINES})")
    if len(gateway.lives) != 1 or gateway.lives[0].how != "SIGTERM":
        fail(f"the gateway had {len(gateway.lives)} lives, the first ended by {gateway.lives[0].how}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/outage.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the database is stopped (default 30)")
    parser.add_argument("--per-channel", type=int, default=150, help="customer messages per channel (default 150)")
    parser.add_argument("--replies", type=int, default=40, help="agent replies (default 40)")
    parser.add_argument("--quick", action="store_true", help="a 10 s outage, 30 messages per channel, 10 replies")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the summary "
                        "goes to stderr), as bench/run_all.py reads them")
    args = parser.parse_args(argv)
    if args.quick:
        args.outage, args.per_channel, args.replies = 10.0, 30, 10
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    plan = Plan(seed, per_channel=args.per_channel, kills=0, replies=args.replies)
    out = sys.stderr if args.json else sys.stdout
    print(f"outage bench seed {seed} (again: --seed {seed})", flush=True, file=out)
    with tempfile.TemporaryDirectory(prefix="kartabl-outage-") as tmp:
        try:
            outcome, outage = asyncio.run(run(plan, Path(tmp), args.outage))
        except (Unavailable, OSError, RuntimeError) as exc:
            print(f"the bench could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    print(outcome.summary(), outage.summary(), sep="\n", flush=True, file=out)
    if args.json:
        print(json.dumps({"mode": "quick" if args.quick else "full", "figures": figures(outcome, outage)},
                         ensure_ascii=False, indent=2))
    return 1 if outcome.failures else 0


def figures(outcome: Outcome, outage: Outage) -> list[dict[str, Any]]:
    """The run as rows of bench/run_all.py's table."""
    sent, stored = sum(outcome.sent_in.values()), sum(outcome.stored_in.values())
    replies, delivered = sum(outcome.replies_in.values()), sum(outcome.replies_delivered.values())
    notes = [f"FAILURE: {f[:300]}" for f in outcome.failures]

    def row(label: str, value: float | None, unit: str, target: str, ok: bool) -> dict[str, Any]:
        return {"label": label, "value": value, "unit": unit, "target": target, "result": "PASS" if ok else "MISS",
                "notes": notes if not ok else []}
    return [
        row(f"Database down {outage.seconds:.0f} s: /healthz says down after", outage.detected_after, "s",
            f"<= {DETECT_S:.0f} s", outage.detected_after is not None and outage.detected_after <= DETECT_S),
        row("... and ok again after the start", outage.recovered_after, "s", f"<= {RECOVER_S:.0f} s",
            outage.recovered_after is not None and outage.recovered_after <= RECOVER_S),
        row("... customer messages stored once", stored, f"of {sent}", f"= {sent}", stored == sent),
        row("... agent replies delivered once", delivered, f"of {replies}", f"= {replies}",
            delivered == replies and not outcome.duplicates),
        row("... every outage check", len(outcome.failures), "failures", "= 0", not outcome.failures),
    ]


if __name__ == "__main__":
    sys.exit(main())
