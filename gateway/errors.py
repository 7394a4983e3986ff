"""Every exception Kartabl raises on purpose, in one tree.

    KartablError
    ├── SettingsError          a setting is missing, malformed or in the wrong place
    ├── DatabaseNotReady       the schema is older than the code (run `kartabl db upgrade`)
    ├── Unavailable            something the gateway stores into is away for now; wait, then go on
    │   ├── DatabaseUnavailable    the database does not answer (stopped, restarting, network)
    │   └── StorageFull            the attachment directory's disk is full
    ├── ShuttingDown           work offered after the gateway began to stop
    ├── TicketNotFound         an agent action named a ticket that does not exist
    ├── Postponed              a job cannot run yet (a busy provider budget): later, and no failure
    └── ChannelError           a provider refused or failed a request
        ├── TransientError     worth retrying, after `retry_after` seconds if the provider said so
        ├── PermanentError     retrying cannot help (bad address, message rejected)
        └── AuthError          credentials are wrong; nothing will work until an operator acts
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class KartablError(Exception):
    """Base of every error Kartabl raises deliberately."""


class SettingsError(KartablError):
    """A setting is wrong. The message is one line and names the key."""


class DatabaseNotReady(KartablError):
    """The database schema is not at the revision this code needs."""


class Unavailable(KartablError):
    """Storage the gateway needs is away (a stopped database, a full disk): nothing was stored, so a
    channel leaves the message with its provider. The first failure is logged once where it is found;
    `wait()` returns once it looks usable again, for whoever would otherwise retry blindly."""

    def __init__(self, message: str, *, wait: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self.wait = wait


class DatabaseUnavailable(Unavailable):
    """The database refused or dropped the connection, or is starting up."""


class StorageFull(Unavailable):
    """The attachment directory's disk (or quota) is full."""


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
