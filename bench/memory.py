"""Memory of a real `kartabl run`: seed a SQLite file with many tickets, start the gateway on it, ask /healthz."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from bench.harness import migrate
from bench.raw_sqlite import stamp

_LISTENING = re.compile(r"HTTP listening on http://([\d.]+):(\d+)")
_START_TIMEOUT_S = 60


def seed(path: Path, tickets: int) -> None:
    """`tickets` customers, each with an address, a ticket, one message and its three events.

    The schema comes from the real migration (so `kartabl run` finds it at head); the rows go in with
    executemany in one transaction, without fsync: seeding is not what is measured.
    """
    asyncio.run(migrate(f"sqlite+aiosqlite:///{path}"))
    now = stamp(dt.datetime.now(dt.UTC))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        ids = range(1, tickets + 1)
        conn.executemany("INSERT INTO customers (id, name, tags, created_at) VALUES (?, ?, '[]', ?)",
                         ((i, f"Customer {i}", now) for i in ids))
        conn.executemany("INSERT INTO addresses (id, customer_id, kind, value, created_at) VALUES (?, ?, 'email', ?, ?)",
                         ((i, i, f"seed{i}@example.com", now) for i in ids))
        conn.executemany(
            "INSERT INTO tickets (id, customer_id, subject, status, priority, channel, reply_kind, reply_to, tags,"
            " created_at, updated_at, last_inbound_at) VALUES (?, ?, ?, 'open', 'normal', 'email', 'email', ?, '[]', ?, ?, ?)",
            ((i, i, f"Order {i} has not arrived", f"seed{i}@example.com", now, now, now) for i in ids))
        conn.executemany(
            "INSERT INTO messages (id, ticket_id, direction, channel, provider_id, thread_key, sender, subject, text,"
            " automatic, delivery_state, attempts, created_at, received_at, raw)"
            " VALUES (?, ?, 'in', 'email', ?, ?, ?, ?, ?, 0, 'received', 0, ?, ?, '{}')",
            ((i, i, f"<seed-{i}@mail>", f"<seed-{i}@mail>", f"email:seed{i}@example.com", f"Order {i}",
              f"Hello, my order {i} has not arrived yet.", now, now) for i in ids))
        conn.executemany(
            "INSERT INTO events (ticket_id, customer_id, actor, kind, data, created_at) VALUES (?, ?, 'system', ?, ?, ?)",
            ((i, i, kind, json.dumps({"seed": True}), now) for i in ids
             for kind in ("customer.created", "ticket.created")))
        conn.execute("COMMIT")
    finally:
        conn.close()


@dataclasses.dataclass
class Footprint:
    rss: int  # bytes, right after /healthz answered
    peak: int  # VmHWM: the most it held at any moment until then
    startup_s: float  # from spawn to /healthz answered
    health: dict


def measure(db_path: Path, workdir: Path) -> Footprint:
    """Run `python -m gateway run` on `db_path` in `workdir`, read its RSS after one /healthz, stop it."""
    # Only our settings: a stray KARTABL_* variable of the caller's shell must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARTABL_")}
    env.update(KARTABL_DATABASE__URL=f"sqlite+aiosqlite:///{db_path}", KARTABL_HTTP__PORT="0")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        host, port = _await_listening(proc, lines)
        health = _healthz(f"http://{host}:{port}/healthz")
        startup = time.monotonic() - began
        info = psutil.Process(proc.pid)
        return Footprint(info.memory_info().rss, _peak_rss(proc.pid), startup, health)
    except Exception as exc:
        raise RuntimeError(f"{exc}; gateway stderr:\n" + "".join(lines[-20:])) from None
    finally:
        _stop(proc)


def _await_listening(proc: subprocess.Popen, lines: list[str]) -> tuple[str, int]:
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def drain() -> None:
        # Keep reading to the end: a full stderr pipe would block the gateway.
        for line in proc.stderr:
            lines.append(line)
            match = _LISTENING.search(line)
            if match and not found:
                found.append((match.group(1), int(match.group(2))))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True, name="kartabl-stderr").start()
    if not ready.wait(_START_TIMEOUT_S) or not found:
        raise RuntimeError(f"`kartabl run` did not report its HTTP port within {_START_TIMEOUT_S}s"
                           f" (exit code {proc.poll()})")
    return found[0]


def _healthz(url: str) -> dict:
    # The gateway logs its port when the socket is bound, a moment before uvicorn listens on it.
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
