"""Every exception Kartabl raises on purpose, in one tree.

    KartablError
    ├── SettingsError          a setting is missing, malformed or in the wrong place
    ├── DatabaseNotReady       the schema is older than the code (run `kartabl db upgrade`)
    ├── ShuttingDown           work offered after the gateway began to stop
    ├── TicketNotFound         an agent action named a ticket that does not exist
    ├── Postponed              a job cannot run yet (a busy provider budget): later, and no failure
    └── ChannelError           a provider refused or failed a request
        ├── TransientError     worth retrying, after `retry_after` seconds if the provider said so
        ├── PermanentError     retrying cannot help (bad address, message rejected)
        └── AuthError          credentials are wrong; nothing will work until an operator acts
"""

from __future__ import annotations


class KartablError(Exception):
    """Base of every error Kartabl raises deliberately."""


class SettingsError(KartablError):
    """A setting is wrong. The message is one line and names the key."""


class DatabaseNotReady(KartablError):
    """The database schema is not at the revision this code needs."""


class ShuttingDown(KartablError):
    """The gateway is stopping and takes no new work."""


class TicketNotFound(KartablError):
    """No ticket has the given id or reference."""


class Postponed(KartablError):
    """A job cannot run yet, through no failure: the provider's budget is spent for now (the agents'
    group at Telegram's limit). It runs again after `retry_after` seconds, not counted as an attempt,
    so a long backlog never exhausts a job's retries."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelError(KartablError):
    """A provider failed a request. Adapters raise only the subclasses."""


class TransientError(ChannelError):
    """The request may succeed later.

    `retry_after` is the provider's own wait in seconds (Telegram's `retry_after`, an HTTP
    Retry-After header); the job queue never retries sooner than that.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """The provider rejected the request for good; retrying cannot help."""


class AuthError(ChannelError):
    """The provider refused our credentials. Retried slowly, and shown in health."""
