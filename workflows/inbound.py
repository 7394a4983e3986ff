"""Step 3 of the cartable flow, as far as it goes today: acknowledge a new ticket, then show the desks.

Routing rules, assignment and SLA clocks (issue 6) will run here before the desks are told.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gateway.channel import Desk
from gateway.jobs import Job
from gateway.tickets import TicketService
from gateway.worker import Handler
from workflows.templates import acknowledgement


class InboundWorkflow:
    """Handles `ticket.inbound` jobs: acknowledges a new ticket where its channel asks for it, then
    shows the ticket's card and the new message to every desk."""

    def __init__(self, tickets: TicketService, desks: Sequence[Desk], *,
                 acknowledge: Collection[str] = (), daily_cap: int = 3) -> None:
        self.tickets = tickets
        self.desks = list(desks)
        self.acknowledge = frozenset(acknowledge)
        self.daily_cap = daily_cap

    @property
    def handler(self) -> Handler:
        return Handler(run=self.run)

    async def run(self, job: Job) -> None:
        ticket_id, message_id = job.payload["ticket_id"], job.payload["message_id"]
        if not self.desks and not self.acknowledge:
            return
        summary = await self.tickets.summary(ticket_id)
        if job.payload.get("new_ticket") and summary.channel in self.acknowledge:
            text = acknowledgement(summary.ref, summary.customer_name, summary.language)
            # Before the desks: a retried job finds the acknowledgement queued and does not repeat it.
            await self.tickets.auto_reply(ticket_id, text, because_of=message_id, daily_cap=self.daily_cap,
                                          once_per_ticket=True)
        if not self.desks:
            return
        message = await self.tickets.message(message_id)
        for desk in self.desks:
            await desk.show(summary, message)
