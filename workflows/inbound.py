"""Step 3 of the cartable flow, as far as it goes today: every stored customer message reaches the desks.

Routing rules, assignment and SLA clocks (issue 6) will run here before the desks are told.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.channel import Desk
from gateway.jobs import Job
from gateway.tickets import TicketService
from gateway.worker import Handler


class ShowToDesks:
    """Handles `ticket.inbound` jobs: shows the ticket's card and the new message to every desk."""

    def __init__(self, tickets: TicketService, desks: Sequence[Desk]) -> None:
        self.tickets = tickets
        self.desks = list(desks)

    @property
    def handler(self) -> Handler:
        return Handler(run=self.run)

    async def run(self, job: Job) -> None:
        if not self.desks:
            return
        summary = await self.tickets.summary(job.payload["ticket_id"])
        message = await self.tickets.message(job.payload["message_id"])
        for desk in self.desks:
            await desk.show(summary, message)
