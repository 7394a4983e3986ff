"""Telling the agents what went wrong (a reply not delivered, a channel that stopped sending), where they work."""

from __future__ import annotations

import html
from collections.abc import Sequence

from gateway.channel import Desk
from gateway.jobs import Job
from gateway.outbox import NOTICE_JOB
from gateway.worker import Handler

__all__ = ["NOTICE_JOB", "DeskNotices"]


class DeskNotices:
    """Handles `desk.notice` jobs: each desk that can speak in a ticket's place says the line there; a
    notice about no ticket (a whole channel's trouble) goes to each desk that can announce."""

    def __init__(self, desks: Sequence[Desk]) -> None:
        self.desks = list(desks)

    @property
    def handler(self) -> Handler:
        return Handler(run=self.run)

    async def run(self, job: Job) -> None:
        text = f"⚠️ {html.escape(job.payload['text'], quote=False)}"
        ticket_id = job.payload.get("ticket_id")
        for desk in self.desks:
            if ticket_id is None and hasattr(desk, "announce"):
                await desk.announce(text)
            elif ticket_id is not None and hasattr(desk, "say"):
                await desk.say(ticket_id, text)
