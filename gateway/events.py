"""The event log: one row per change to a ticket or customer (who, what, old, new, when)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def event_row(now: dt.datetime, kind: str, *, ticket_id: int | None = None, customer_id: int | None = None,
              actor: str = "system", field: str | None = None, old: Any = None, new: Any = None,
              data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The insert values of one event. `actor` is `system`, `customer:<id>`, `agent:<id>` or `rule:<name>`."""
    return {
        "ticket_id": ticket_id, "customer_id": customer_id, "actor": actor, "kind": kind,
        "field": field, "old": None if old is None else str(old)[:500],
        "new": None if new is None else str(new)[:500], "data": data, "created_at": now,
    }
