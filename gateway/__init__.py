"""Kartabl's core: tickets, ingest, outbox and job queue, settings, runtime, HTTP app and CLI."""

__version__ = "0.1.0"
