"""Assignment strategies: which agent a new ticket goes to, decided from a snapshot of the candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = ["Candidate", "Strategy", "choose"]


class Strategy(StrEnum):
    ROUND_ROBIN = "round_robin"  # the next available agent after the last one assigned, by agent id
    LEAST_OPEN = "least_open"  # the available agent with the fewest open tickets
    MANUAL = "manual"  # nobody: agents take tickets from the queue themselves


@dataclass(frozen=True, slots=True)
class Candidate:
    """An agent who could take a ticket, as the department's roster and the ticket counts stood.

    `away` is the agent's own "not taking tickets" switch (a break, a holiday); `active` is false for an
    agent an admin disabled. `last_assigned_at` is when the agent was last given a ticket, if ever.
    """

    agent_id: int
    open_tickets: int
    away: bool = False
    active: bool = True
    last_assigned_at: datetime | None = None

    @property
    def available(self) -> bool:
        return self.active and not self.away


def choose(strategy: str, candidates: Sequence[Candidate], *, last_assigned: int | None) -> int | None:
    """The agent id a new ticket goes to under `strategy`, or None to leave it in the queue.

    Away and inactive agents never get a ticket; with no available candidate the answer is None.
    - "round_robin": the lowest available agent id above `last_assigned` (the agent the previous ticket
      went to), wrapping round to the lowest; `last_assigned` need not be a candidate any more.
    - "least_open": the fewest open tickets; a tie goes to the agent assigned least recently (never
      assigned counts as longest ago), then to the lowest id.
    - "manual": always None.
    Raises ValueError for an unknown strategy or two candidates with the same agent id.
    """
    try:
        kind = Strategy(strategy)
    except ValueError:
        known = ", ".join(repr(member.value) for member in Strategy)
        raise ValueError(f"unknown assignment strategy {strategy!r}; known: {known}") from None
    ids = [candidate.agent_id for candidate in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError(f"candidates repeat an agent id: {sorted(ids)}")
    available = [candidate for candidate in candidates if candidate.available]
    if kind is Strategy.MANUAL or not available:
        return None
    if kind is Strategy.ROUND_ROBIN:
        return _round_robin(available, last_assigned)
    return min(available, key=_least_open_key).agent_id


def _round_robin(available: Sequence[Candidate], last_assigned: int | None) -> int:
    ids = sorted(candidate.agent_id for candidate in available)
    if last_assigned is None:
        return ids[0]
    return next((agent_id for agent_id in ids if agent_id > last_assigned), ids[0])


def _least_open_key(candidate: Candidate) -> tuple[int, bool, float, int]:
    # Never assigned sorts first; a timestamp compares naive and aware times without a TypeError.
    at = candidate.last_assigned_at
    return (candidate.open_tickets, at is not None, at.timestamp() if at else 0.0, candidate.agent_id)
