"""`kartabl run` killed with SIGKILL while it reads Telegram updates: every customer message stored once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from channels.telegram.standin import StandInTelegram, User
from tests.conftest import stored_inbound

TOKEN = "424242:crash-token"
ROUNDS = 4
PER_ROUND = 60


async def _gateway(server: StandInTelegram, db_url: str, tmp_path: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "KARTABL_CONFIG": "", "KARTABL_DATABASE__URL": db_url, "KARTABL_HTTP__ENABLED": "false",
           "KARTABL_ATTACHMENTS__DIR": str(tmp_path / "files"), "KARTABL_CHANNELS__TELEGRAM__TOKEN": TOKEN,
           "KARTABL_CHANNELS__TELEGRAM__BASE_URL": server.base_url,
           "KARTABL_CHANNELS__TELEGRAM__BASE_FILE_URL": server.base_file_url,
           "KARTABL_CHANNELS__TELEGRAM__POLL_TIMEOUT": "1", "KARTABL_CHANNELS__TELEGRAM__ACKNOWLEDGE": "false"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


@pytest.mark.slow
async def test_a_gateway_killed_between_getupdates_and_commit_loses_no_message_and_stores_none_twice(
        db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("KARTABL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\ntelegram crash test, KARTABL_CRASH_SEED={seed}")
    server = StandInTelegram(TOKEN)
    await server.start()
    expected: set[str] = set()
    kills_mid_batch = 0
    try:
        for round_ in range(ROUNDS):
            for n in range(PER_ROUND):  # the updates wait on Telegram's side, as after an outage
                user = User(10_000 + rng.randrange(40), f"مشتری {n}")
                expected.add(f"{user.id}:{server.customer_text(user, f'پیام {round_}-{n}')}")
            child = await _gateway(server, db_url, tmp_path)
            # Kill it once it has stored part of what it fetched, at a random point of the batch.
            target = len(await stored_inbound(db_url)) + rng.randint(1, PER_ROUND - 1)
            while len(await stored_inbound(db_url)) < target:
                assert child.returncode is None, (await child.stderr.read()).decode()[-2000:]
                await asyncio.sleep(0.005)
            child.send_signal(signal.SIGKILL)
            await child.wait()
            kills_mid_batch += len(server.pending_updates) > 0
        last = await _gateway(server, db_url, tmp_path)  # a final run drains what is left
        try:
            for _ in range(2000):
                if set(await stored_inbound(db_url)) >= expected:
                    break
                await asyncio.sleep(0.01)
        finally:
            last.send_signal(signal.SIGTERM)
            await last.wait()
    finally:
        await server.stop()

    stored = await stored_inbound(db_url)
    assert kills_mid_batch > 0, "no kill found updates still unconfirmed: nothing was tested"
    assert sorted(stored) == sorted(expected)  # every one, and none twice
