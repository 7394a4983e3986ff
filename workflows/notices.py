"""Telling the agents what went wrong with a ticket (a reply that could not be delivered), where they work."""

from __future__ import annotations

import html
from collections.abc import Sequence

from gateway.channel import Desk
from gateway.jobs import Job
from gateway.outbox import NOTICE_JOB
from gateway.worker import Handler

__all__ = ["NOTICE_JOB", "DeskNotices"]


class DeskNotices:
    """Handles `desk.notice` jobs: each desk that can speak in a ticket's place says the line there."""

    def __init__(self, desks: Sequence[Desk]) -> None:
        self.desks = [d for d in desks if hasattr(d, "say")]

    @property
    def handler(self) -> Handler:
        return Handler(run=self.run)

    async def run(self, job: Job) -> None:
        text = f"⚠️ {html.escape(job.payload['text'], quote=False)}"
        for desk in self.desks:
            await desk.say(job.payload["ticket_id"], text)
