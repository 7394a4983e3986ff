"""The runtime: /healthz and /metrics over HTTP, channel restarts, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from channels.loopback import LoopbackChannel
from gateway.compose import build_runtime
from gateway.domain import ChannelKind, DeliveryState
from gateway.messages import DeliveryReport, utcnow
from gateway.schema import jobs, messages
from gateway.settings import HttpSettings
from tests.conftest import Gateway, eventually, inbound, make_settings


async def _get(gw: Gateway, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.runtime.http_port}") as client:
        return await client.get(path)


async def test_healthz_reports_channels_queue_depth_and_the_oldest_waiting_job(start_gateway) -> None:  # noqa: ANN001
    gw = await start_gateway(http=HttpSettings(enabled=True, port=0))
    now = utcnow()
    # A job that has been due for 30 s but waits behind another process's job with the same key.

    def blocked_job(conn: sa.Connection) -> None:
        blocker = gw.runtime.queue.enqueue(conn, "test.slow", {}, key="send:1")
        conn.execute(sa.update(jobs).where(jobs.c.id == blocker).values(
            state="running", lease_owner="other-host:1", lease_until=now + dt.timedelta(hours=1)))
        gw.runtime.queue.enqueue(conn, "test.slow", {}, key="send:1", due_at=now - dt.timedelta(seconds=30))
    await gw.runtime.db.run_write(blocked_job)

    response = await _get(gw, "/healthz")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "ok" and body["database"] == {"ok": True}
    assert body["channels"]["loopback"]["state"] == "running"
    assert body["queue"]["depth"] == 2 and body["queue"]["due"] == 1
    assert 30 <= body["queue"]["oldest_due_age_seconds"] < 60


async def test_metrics_count_what_the_gateway_did_in_prometheus_text(start_gateway) -> None:  # noqa: ANN001
    gw = await start_gateway(http=HttpSettings(enabled=True, port=0))
    await gw.runtime.deliver(inbound("m-1"))
    await gw.runtime.deliver(inbound("m-1"))
    await gw.runtime.deliver(inbound("m-2"))

    response = await _get(gw, "/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'kartabl_ingest_messages_total{channel="loopback",outcome="new_ticket"} 1.0' in text
    assert 'kartabl_ingest_messages_total{channel="loopback",outcome="threaded"} 1.0' in text
    assert 'kartabl_ingest_messages_total{channel="loopback",outcome="duplicate"} 1.0' in text
    assert 'kartabl_channel_up{channel="loopback"} 1.0' in text
    assert 'kartabl_ingest_commit_seconds_count{channel="loopback"} 3.0' in text
    assert "kartabl_queue_depth " in text and "kartabl_jobs_dead 0.0" in text

    first = await gw.runtime.deliver(inbound("m-3", sender="email:reza@example.com"))
    await gw.runtime.tickets.reply(first.ticket_id, "پاسخ")
    await gw.channel.next_received(1)
    await eventually(lambda: asyncio.sleep(0, gw.channel.receipts), lambda r: len(r) == 1)
    await eventually(lambda: gw.count(messages, messages.c.delivery_state == DeliveryState.SENT), lambda n: n == 1)
    assert await gw.runtime.inlet.report(DeliveryReport(ChannelKind.LOOPBACK, gw.channel.receipts[0].provider_id, True))
    text = (await _get(gw, "/metrics")).text
    assert 'kartabl_outbox_send_seconds_count{channel="loopback"} 1.0' in text
    assert 'kartabl_outbox_sent_total{channel="loopback"} 1.0' in text
    assert 'kartabl_deliveries_total{channel="loopback",outcome="delivered"} 1.0' in text


class CrashingChannel(LoopbackChannel):
    """Crashes on its first start, then runs."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0

    async def start(self, deliver) -> None:  # noqa: ANN001
        self.starts += 1
        if self.starts == 1:
            raise ConnectionError("provider went away")
        await super().start(deliver)


async def test_a_crashed_channel_is_restarted_and_health_tells(db_url: str, tmp_path: Path) -> None:
    channel = CrashingChannel()
    runtime = build_runtime(make_settings(db_url, tmp_path), channels={ChannelKind.LOOPBACK: channel})
    await runtime.start()
    try:
        await eventually(lambda: _starts(channel), lambda n: n == 2, timeout=5)
        _, health = await runtime.health()
        assert health["channels"]["loopback"]["state"] == "running"
        assert health["channels"]["loopback"]["restarts"] == 1
        assert health["channels"]["loopback"]["last_error"] == "ConnectionError: provider went away"
        result = await asyncio.wait_for(channel.write(inbound("after-restart")), 5)
        assert result.new_ticket
    finally:
        await runtime.stop()


async def _starts(channel: CrashingChannel) -> int:
    return channel.starts


def test_kartabl_run_serves_http_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "KARTABL_HTTP__PORT": "0", "KARTABL_CONFIG": str(Path(__file__).parent.parent / "settings.toml")}
    with subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=tmp_path, env=env,
                          stderr=subprocess.PIPE, text=True) as proc:
        _serve_then_stop(proc, tmp_path)


def _serve_then_stop(proc: subprocess.Popen, tmp_path: Path) -> None:
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "HTTP listening on " in line:
                url = line.rsplit(" ", 1)[-1].strip()
                break
        else:
            pytest.fail("kartabl run exited early:\n" + "".join(lines))
        health = httpx.get(f"{url}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert (tmp_path / "kartabl.db").exists()  # the SQLite file in the working directory
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
        assert "kartabl stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
