"""The `kartabl` command: help everywhere, the demo, db and jobs commands; migrations match the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.db import Database
from gateway.migrate import current_revision, head_revision, upgrade
from gateway.schema import jobs, messages, metadata, quarantine

COMMANDS = [[], ["run"], ["demo"], ["db"], ["db", "upgrade"], ["db", "current"], ["jobs"], ["jobs", "list"],
            ["jobs", "retry"], ["quarantine"], ["quarantine", "list"], ["quarantine", "show"],
            ["quarantine", "replay"], ["settings"], ["agents"], ["agents", "add"], ["agents", "list"],
            ["departments"], ["departments", "add"], ["departments", "list"], ["rules"], ["rules", "check"],
            ["rules", "test"], ["rules", "replay"]]


def kartabl(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kartabl")
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    done = kartabl(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kartabl")


@pytest.mark.slow
def test_the_demo_runs_the_flow_end_to_end_with_no_settings(tmp_path: Path) -> None:
    done = kartabl("demo", cwd=tmp_path, env={"KARTABL_CONFIG": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "committed, then acknowledged to the provider: new ticket T-1001 (new customer)" in out
    assert "a duplicate: already stored, nothing new" in out
    assert "receives on loopback [T-1001]: «سلام سارا جان، سفارش شما فردا تحویل می‌شود.»" in out
    assert "that reply was sent on attempt 2 after the failure" in out
    assert "reopened T-1001" in out
    assert "earlier tickets: T-1001" in out  # her phone found her by the email she linked
    assert "IMAP IDLE pushed it; stored as T-1004" in out
    assert "Auto-Submitted: auto-replied" in out  # the acknowledgement
    assert "threaded onto T-1004 by In-Reply-To; the agents see «ممنون، رسید.»" in out
    assert ("stored as T-1005, marked automatic; its acknowledgement was not sent: "
            "the customer's message was itself automatic") in out
    assert "greets him: «سلام! به پشتیبانی خوش آمدید.»" in out  # Telegram /start
    assert "T-1006 gets its own topic; its card: «T-1006" in out
    assert "shown literally (no markup): «سلام، <b>سفارش ۷۸۹</b> کی می‌رسد؟ & کد تخفیف؟»" in out
    assert "receives it on Telegram: «سلام علی جان، سفارش ۷۸۹ فردا تحویل می‌شود. کد تخفیف: BAHAR»" in out
    assert "/close -> «T-1006 closed.»" in out
    # Whatever the hour (after hours a note comes first), Maryam gets the agent's answer by SMS.
    assert "receives the answer in one SMS of 2 parts" in out and "سلام مریم خانم" in out and "[T-1007]»" in out
    assert out.rstrip().endswith("Demo finished: every message stored once, threaded, answered and delivered.")
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


def test_db_upgrade_then_current_agree_and_jobs_can_be_listed_and_retried(tmp_path: Path) -> None:
    env = {"KARTABL_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", "KARTABL_CONFIG": ""}
    assert kartabl("db", "current", cwd=tmp_path, env=env).returncode == 3  # empty database: behind
    upgraded = kartabl("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0 and upgraded.stdout.endswith(f"is at revision {head_revision()}\n")
    current = kartabl("db", "current", cwd=tmp_path, env=env)
    assert current.returncode == 0 and f"revision {head_revision()}; code needs {head_revision()}" in current.stdout

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'k.db'}")
    with engine.begin() as conn:
        conn.execute(sa.insert(jobs).values(
            kind="outbox.send", key="send:1", payload={"message_id": 7}, state="dead", attempts=12, max_attempts=12,
            last_error="permanent: mailbox unavailable", due_at=sa.func.current_timestamp(),
            created_at=sa.func.current_timestamp(), updated_at=sa.func.current_timestamp()))
    engine.dispose()
    listing = kartabl("jobs", "list", "--state", "dead", cwd=tmp_path, env=env)
    assert listing.returncode == 0
    assert "dead     outbox.send      send:1" in listing.stdout
    assert "last error: permanent: mailbox unavailable" in listing.stdout
    retried = kartabl("jobs", "retry", "--all-dead", cwd=tmp_path, env=env)
    assert retried.stdout == "1 job(s) will run again\n"
    assert "pending  outbox.send" in kartabl("jobs", "list", cwd=tmp_path, env=env).stdout


def test_quarantine_lists_shows_and_replays_what_could_not_be_read(tmp_path: Path) -> None:
    env = {"KARTABL_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", "KARTABL_CONFIG": "",
           "KARTABL_ATTACHMENTS__DIR": str(tmp_path / "files")}
    assert kartabl("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    unreadable = b"Subject: no sender\r\nMessage-ID: <q1@example.ir>\r\n\r\nwho wrote this?\r\n"
    readable = b"From: Sara <sara@example.ir>\r\nSubject: hi\r\nMessage-ID: <q2@example.ir>\r\n\r\nhello\r\n"
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'k.db'}")
    with engine.begin() as conn:
        for n, raw in enumerate([unreadable, readable], 1):
            conn.execute(sa.insert(quarantine).values(
                channel="email", source=f"support@x INBOX uid {n}", reason="no sender", sha256=str(n) * 64,
                raw=raw, created_at=sa.func.current_timestamp()))
    listing = kartabl("quarantine", "list", cwd=tmp_path, env=env)
    assert listing.returncode == 0
    assert "email" in listing.stdout and "support@x INBOX uid 2: no sender" in listing.stdout
    shown = subprocess.run([sys.executable, "-m", "gateway", "quarantine", "show", "1"], cwd=tmp_path,
                           capture_output=True, timeout=60, env={**os.environ, **env})
    assert shown.stdout == unreadable  # byte for byte, to save as an .eml

    replayed = kartabl("quarantine", "replay", "--all", cwd=tmp_path, env=env)
    assert replayed.returncode == 1  # one is still unreadable
    assert replayed.stdout.splitlines()[1] == "2: stored on ticket T-1001"
    assert replayed.stdout.splitlines()[0].startswith("1: still unreadable")
    with engine.begin() as conn:
        assert conn.execute(sa.select(messages.c.text)).scalars().all() == ["hello"]
    engine.dispose()
    assert "uid 2" not in kartabl("quarantine", "list", cwd=tmp_path, env=env).stdout


def test_settings_command_shows_each_effective_value_and_its_variable(tmp_path: Path) -> None:
    done = kartabl("settings", cwd=tmp_path, env={"KARTABL_CONFIG": "", "KARTABL_HTTP__PORT": "9000"})
    assert done.returncode == 0
    assert "http.port = 9000    # KARTABL_HTTP__PORT" in done.stdout
    assert 'database.url = "sqlite+aiosqlite:///kartabl.db"    # KARTABL_DATABASE__URL' in done.stdout
    assert "http.enabled = true    # KARTABL_HTTP__ENABLED" in done.stdout
    assert "channels.loopback.enabled = (unset)    # KARTABL_CHANNELS__LOOPBACK__ENABLED" in done.stdout


async def test_the_migrations_build_exactly_the_schema_the_code_declares(db_url: str) -> None:
    db = Database(db_url)
    try:
        await upgrade(db)
        await upgrade(db)  # a second upgrade is a no-op
        assert await current_revision(db) == head_revision()
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        assert diff == []
    finally:
        await db.dispose()
