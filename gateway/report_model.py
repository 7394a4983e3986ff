"""What a report holds: the desk's figures for a period, overall and per group, and per day for the charts.

Built by `gateway.reports.build_report`; shown by `kartabl report`, `GET /api/reports` and the dashboard.
Times are seconds; days are the desk's local dates (Asia/Tehran unless the workflow calendar says otherwise).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

Grouping = Literal["channel", "department", "agent"]

#: Open tickets at the period's end, by age.
BACKLOG_BUCKETS = ("<1h", "1-8h", "8-24h", "1-3d", "3-7d", ">7d")
#: First responses by business time taken, for the dashboard's distribution chart.
RESPONSE_BUCKETS = ("<15m", "15m-1h", "1-4h", "4-8h", "1-2d", ">2d")


@dataclasses.dataclass(frozen=True, slots=True)
class Durations:
    """How long something took (creation to first response, or to resolution), over the tickets where it
    happened in the period: wall-clock and in business time."""

    count: int
    median: float | None
    p90: float | None
    business_median: float | None
    business_p90: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Figures:
    """The KPIs of one group over the period: everything ("all"), or one channel, department or agent
    ("-" for tickets with none)."""

    group: str
    new: int  # tickets created in the period
    resolved: int  # tickets resolved in the period
    open: int  # tickets open at the period's end
    backlog: dict[str, int]  # those open tickets by age at the period's end, keys BACKLOG_BUCKETS
    first_response: Durations  # tickets first answered in the period
    resolution: Durations  # tickets resolved in the period
    sla_breaches: int  # tickets whose SLA was breached in the period
    breach_rate: float | None  # breaches / tickets with a due time that fell in the period
    reopened: int  # reopenings in the period (a resolved or closed ticket opened again)
    reopen_rate: float | None  # reopened / resolved
    complaints: int  # new tickets tagged with one of reports.complaint_tags
    csat_average: float | None  # satisfaction scores given in the period
    csat_count: int
    messages_in: dict[str, int]  # customer messages per channel
    messages_out: dict[str, int]  # replies (agents' and automatic) per channel
    delivery_failures: dict[str, int]  # replies that failed per channel
    contacts_per_customer_month: float | None  # new tickets per distinct customer, per 30 days of the period


@dataclasses.dataclass(frozen=True, slots=True)
class Day:
    """One local day of the period, for the charts."""

    day: dt.date
    new_by_channel: dict[str, int]
    sla_breaches: int
    csat_average: float | None
    csat_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    since: dt.datetime  # UTC, inclusive
    until: dt.datetime  # UTC, exclusive
    by: Grouping | None
    total: Figures
    groups: tuple[Figures, ...]  # one per group when `by` is set, largest first; empty otherwise
    days: tuple[Day, ...]  # every local day the period touches, in order
    response_histogram: dict[str, int]  # first responses by business time, keys RESPONSE_BUCKETS
