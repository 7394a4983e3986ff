"""SMS benchmark: Kavenegar's inbound callbacks against the real gateway, each answered 200 only once stored.

The gateway (SMS channel, HTTP server, job workers) runs in this process; the callbacks come from a
separate process, open loop: one request every 1/RATE s whatever the answers, as from Kavenegar's
servers, each a form POST with `from`, `to`, `message`, `messageid` (300 customers, new tickets and
follow-ups). Latency is from each request's scheduled start to its 200; a 200 is given only after the
message's ticket is committed, and the count of stored messages is checked at the end. Figures:

1. Callback request -> 200 with the ticket committed, p95, at 200 requests/s, SQLite.   [<= 50 ms]
2. The same on PostgreSQL.                                                               [<= 50 ms]

Usage: python bench/sms.py [--quick] [--skip-postgres] [--json] [--pg-url URL]
"""

from __future__ import annotations

import os
import sys

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from pathlib import Path  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from bench import postgres  # noqa: E402
from bench.harness import migrate  # noqa: E402
from bench.ingest import DEFAULT_PG_URL, Figure, log, publish  # noqa: E402
from channels.sms.channel import SmsChannel  # noqa: E402
from channels.sms.settings import SmsSettings  # noqa: E402
from gateway.compose import build_runtime  # noqa: E402
from gateway.domain import ChannelKind, Direction  # noqa: E402
from gateway.schema import messages  # noqa: E402
from gateway.settings import (  # noqa: E402
    AttachmentSettings, DatabaseSettings, HttpSettings, Secret, Settings, WorkflowSettings,
)

RATE = 200.0
SECRET = "bench-callback-secret-0001"
LINE = "10004346"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _gateway(url: str, workdir: Path, port: int):  # noqa: ANN202
    cfg = SmsSettings(enabled=True, api_key=Secret("bench-key-unused"), sender=LINE, api_host="127.0.0.1:9",
                      callback_secret=Secret(SECRET), reconcile_interval=86400, status_interval=86400)
    await migrate(url)
    runtime = build_runtime(Settings(workflows=WorkflowSettings(file=""), database=DatabaseSettings(url=url),
                                     http=HttpSettings(enabled=True, host="127.0.0.1", port=port),
                                     attachments=AttachmentSettings(dir=workdir / "files"), channels={"sms": cfg}),
                            channels={ChannelKind.SMS: _NoPolling(cfg)})
    await runtime.start()
    return runtime


class _NoPolling(SmsChannel):
    """The channel without its reconcile and status rounds: the bench has no Kavenegar API to ask."""

    async def start(self, deliver):  # noqa: ANN001, ANN201
        self._inlet = deliver
        self.state = "running"
        await self._stopping.wait()


async def _measure(url: str, workdir: Path, count: int) -> tuple[list[float], int, int, float]:
    port = _free_port()
    runtime = await _gateway(url, workdir, port)
    try:
        target = f"http://127.0.0.1:{port}/webhooks/kavenegar/{SECRET}/inbound"
        client = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--client", target, str(count), str(RATE),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await client.communicate()
        result = json.loads(out)
        finished = time.monotonic()
        while (await runtime.queue.stats()).due:  # the workflow's jobs run behind a burst: until they are done
            await asyncio.sleep(0.05)
        behind = time.monotonic() - finished
        async with runtime.db.read() as conn:
            stored = (await conn.execute(sa.select(sa.func.count()).select_from(messages).where(
                messages.c.direction == Direction.INBOUND))).scalar_one()
    finally:
        await runtime.stop()
    return result["latencies"], result["errors"], stored, behind


def _figure(label: str, found: tuple[list[float], int, int, float], count: int) -> Figure:
    latencies, errors, stored, behind = found
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000
    ok = bool(ordered) and pct(95) <= 50 and errors == 0 and stored == count
    return Figure(label, pct(95) if ordered else None, "ms", "<= 50 ms", ok,
                  [f"{count} callbacks at {RATE:.0f}/s; p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, "
                   f"max {ordered[-1] * 1000:.1f} ms; non-200 answers: {errors}; stored: {stored} of {count}; "
                   f"workflow jobs done {behind:.1f} s after the last callback"])


async def _client(target: str, count: int, rate: float) -> None:
    """The callbacks, open loop, in this (separate) process; prints latencies as JSON.

    Plain HTTP/1.1 on 64 kept-alive connections, each taking the next callback when it is due: an
    HTTP client library's pool, with thousands of requests waiting in it, costs more CPU than the
    gateway (httpx's did) and then measures itself. A callback that finds every connection busy
    waits, and that wait counts against the gateway, as Kavenegar's would."""
    url = urllib.parse.urlsplit(target)
    latencies: list[float] = []
    errors = 0
    due: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        due.put_nowait(n)
    began = time.monotonic() + 0.2

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            while not due.empty():
                n = due.get_nowait()
                start = began + n / rate
                await asyncio.sleep(max(0.0, start - time.monotonic()))
                body = urllib.parse.urlencode({
                    "from": f"0912{3000000 + n % 300:07d}", "to": LINE, "messageid": str(700_000_000 + n),
                    "message": f"سلام، پیامک شمارهٔ {n} دربارهٔ سفارشم", "date": str(int(time.time()))}).encode()
                writer.write(f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                             f"Content-Type: application/x-www-form-urlencoded\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                errors += status != 200
                latencies.append(time.monotonic() - start)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(64)))
    print(json.dumps({"latencies": latencies, "errors": errors}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL (the role may CREATE DATABASE)")
    parser.add_argument("--client", nargs=3, metavar=("URL", "COUNT", "RATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        asyncio.run(_client(args.client[0], int(args.client[1]), float(args.client[2])))
        return 0
    count = 600 if args.quick else 4000
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kartabl-bench-sms-") as tmp:
        figures = [_figure("1. Callback -> 200, ticket committed, p95 (SQLite)",
                           asyncio.run(_measure(f"sqlite+aiosqlite:///{Path(tmp) / 'kartabl.db'}", Path(tmp), count)),
                           count)]
        if not args.skip_postgres:
            try:
                postgres.check(args.pg_url)
                with postgres.fresh_database(args.pg_url) as url:
                    figures.append(_figure("2. Callback -> 200, ticket committed, p95 (PostgreSQL)",
                                           asyncio.run(_measure(url, Path(tmp), count)), count))
            except postgres.Unreachable as exc:
                log(f"bench: {exc}; PostgreSQL figure skipped")
                figures.append(Figure("2. Callback -> 200, ticket committed, p95 (PostgreSQL)", None, "ms",
                                      "<= 50 ms", None, [str(exc)]))
    return publish(figures, f"Kartabl SMS benchmark ({'quick' if args.quick else 'full'} run in "
                            f"{time.monotonic() - began:.0f}s)", quick=args.quick, as_json=args.json)


if __name__ == "__main__":
    if "--client" not in sys.argv:
        log("bench/sms.py: Kavenegar callbacks against the gateway")
    raise SystemExit(main())
