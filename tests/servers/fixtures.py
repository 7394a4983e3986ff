"""Fixtures that start the test servers: `dovecot`, `dovecot_factory` and `smtp_sink`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.servers.dovecot import DOVECOT, NOT_INSTALLED, Dovecot
from tests.servers.smtp_sink import SmtpSink

DovecotFactory = Callable[..., Dovecot]


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[DovecotFactory]:
    """Start private Dovecots for this test (`factory(tls=True)`, `factory(idle_notify=False)`); all
    are stopped, and their processes killed, after the test. Fails, never skips, without Dovecot."""
    if not DOVECOT.exists():
        pytest.fail(NOT_INSTALLED, pytrace=False)
    with contextlib.ExitStack() as cleanup:  # closes every instance even if closing one fails
        count = 0

        def start(*, tls: bool = False, idle_notify: bool = True) -> Dovecot:
            nonlocal count
            server = Dovecot(tmp_path / f"dovecot-{count}", tls=tls, idle_notify=idle_notify)
            count += 1
            cleanup.callback(server.close)
            server.start()
            return server

        yield start


@pytest.fixture
def dovecot(dovecot_factory: DovecotFactory) -> Dovecot:
    """A started Dovecot without TLS, advertising IDLE."""
    return dovecot_factory()


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """A started SMTP sink without AUTH, in the test's event loop; stopped after the test."""
    sink = SmtpSink()
    await sink.start()
    yield sink
    await sink.stop()
