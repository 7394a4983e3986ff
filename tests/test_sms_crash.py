"""`kartabl run` polling Kavenegar, killed with SIGKILL between `sms/receive` (which marks messages read as
it answers) and the commit: the reconcile with the paged inbox stores what the kill lost, each message once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from channels.sms.standin import StandInKavenegar
from tests.conftest import stored_inbound

API_KEY = "CRASH-7731-KEY"
ROUNDS = 5
PER_ROUND = 150


async def _gateway(server: StandInKavenegar, db_url: str, tmp_path: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "KARTABL_CONFIG": "", "KARTABL_DATABASE__URL": db_url, "KARTABL_HTTP__ENABLED": "false",
           "KARTABL_ATTACHMENTS__DIR": str(tmp_path / "files"), "REQUESTS_CA_BUNDLE": server.ca_path,
           "KARTABL_CHANNELS__SMS__API_KEY": API_KEY, "KARTABL_CHANNELS__SMS__SENDER": server.line,
           "KARTABL_CHANNELS__SMS__API_HOST": server.host, "KARTABL_CHANNELS__SMS__RECEIVE": "poll",
           "KARTABL_CHANNELS__SMS__POLL_INTERVAL": "1"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", cwd=tmp_path, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


@pytest.mark.slow
async def test_a_gateway_killed_between_receive_and_commit_loses_no_sms_and_stores_none_twice(
        db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("KARTABL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\nsms crash test, KARTABL_CRASH_SEED={seed}")
    server = StandInKavenegar(API_KEY)
    await server.start()
    expected: set[str] = set()
    kills_in_window = 0
    try:
        for round_ in range(ROUNDS):
            for n in range(PER_ROUND):  # texts waiting, unread, on Kavenegar's side
                sender = f"0912{rng.randrange(10**7):07d}"
                expected.add(str(server.customer_sms(sender, f"پیامک {round_}-{n}")))
            child = await _gateway(server, db_url, tmp_path)
            # Kill it as soon as Kavenegar has handed out messages that are not stored yet.
            while True:
                assert child.returncode is None, (await child.stderr.read()).decode()[-2000:]
                read = {str(m.messageid) for m in server.inbox if m.read}
                if read - set(await stored_inbound(db_url)) or read >= expected:
                    break
                await asyncio.sleep(0.002)
            child.send_signal(signal.SIGKILL)
            await child.wait()
            kills_in_window += bool({str(m.messageid) for m in server.inbox if m.read} - set(await stored_inbound(db_url)))
        last = await _gateway(server, db_url, tmp_path)  # its reconcile finds what the kills lost
        try:
            for _ in range(3000):
                if set(await stored_inbound(db_url)) >= expected:
                    break
                await asyncio.sleep(0.01)
        finally:
            last.send_signal(signal.SIGTERM)
            await last.wait()
    finally:
        await server.stop()

    stored = await stored_inbound(db_url)
    assert kills_in_window > 0, "no kill came between receive and commit: nothing was tested"
    assert all(m.read for m in server.inbox)
    assert sorted(stored) == sorted(expected)  # every one, and none twice
