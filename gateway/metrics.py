"""Prometheus metrics of one gateway process, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "kartabl_ingest_messages", "Inbound messages by channel and outcome "
            "(new_ticket, threaded, duplicate, error).", ["channel", "outcome"], registry=r)
        self.ingest_latency = Histogram(
            "kartabl_ingest_commit_seconds", "From ingest() call to its commit, by channel.", ["channel"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.ingest_batch = Histogram(
            "kartabl_ingest_batch_size", "Messages committed per transaction.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)
        self.jobs = Counter(
            "kartabl_jobs", "Jobs finished by kind and outcome (done, retry, dead).",
            ["kind", "outcome"], registry=r)
        self.job_seconds = Histogram(
            "kartabl_job_seconds", "Job run time by kind.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.sent = Counter(
            "kartabl_outbox_sent", "Messages a provider accepted, by channel.", ["channel"], registry=r)
        self.send_seconds = Histogram(
            "kartabl_outbox_send_seconds", "The provider's call for one reply (until it accepted or refused), "
            "by channel.", ["channel"], buckets=_LATENCY_BUCKETS, registry=r)
        self.deliveries = Counter(
            "kartabl_deliveries", "Delivery reports from providers on our replies, by channel and outcome "
            "(delivered, failed).", ["channel", "outcome"], registry=r)
        self.sla_breaches = Counter(
            "kartabl_sla_breaches", "SLA clocks breached, by the ticket's channel and the clock "
            "(first_response, resolution).", ["channel", "kind"], registry=r)
        self.send_failures = Counter(
            "kartabl_outbox_failures", "Failed send attempts by channel and kind "
            "(transient, permanent, auth).", ["channel", "kind"], registry=r)
        self.queue_depth = Gauge(
            "kartabl_queue_depth", "Pending and running jobs.", registry=r)
        self.queue_due = Gauge(
            "kartabl_queue_due", "Pending jobs whose time has come.", registry=r)
        self.queue_oldest_age = Gauge(
            "kartabl_queue_oldest_due_age_seconds", "Wait of the longest-waiting due job.", registry=r)
        self.jobs_dead = Gauge(
            "kartabl_jobs_dead", "Dead-lettered jobs awaiting an operator.", registry=r)
        self.channel_up = Gauge(
            "kartabl_channel_up", "1 while the channel runs, 0 otherwise.", ["channel"], registry=r)
        self.database_up = Gauge(
            "kartabl_database_up", "1 while the database answers, 0 during an outage.", registry=r)
        self.attachments_writable = Gauge(
            "kartabl_attachments_writable", "0 while the attachment directory's disk is full.", registry=r)
        self.channel_restarts = Counter(
            "kartabl_channel_restarts", "Restarts of a crashed channel.", ["channel"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
