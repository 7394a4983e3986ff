"""The `[channels.email]` settings: the support mailbox, its IMAP and SMTP servers, and how to read it."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Literal

from gateway.errors import SettingsError
from gateway.settings import ChannelSettings, Secret, secret, setting

Security = Literal["ssl", "starttls", "none"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class EmailSettings(ChannelSettings):
    acknowledge: bool = setting(True, "Answer each new ticket at once with its reference (an automatic reply).")
    address: str = setting("", "The support mailbox's address: customers write to it, replies come from it.")
    display_name: str = setting("پشتیبانی", "The name replies are sent under.")
    message_id_domain: str = setting(
        "", "Domain of our Message-IDs; mail carrying one is our own coming back (default: the address's domain).")

    imap_host: str = setting("", "IMAP server of the support mailbox.")
    imap_port: int = setting(993, "IMAP port (993 for ssl).", min=1, max=65535)
    imap_security: Security = setting(
        "ssl", "ssl (TLS from the first byte), or none on a loopback host only. starttls is refused: "
        "aioimaplib cannot upgrade a connection.")
    imap_user: str = setting("", "IMAP login (default: the address).")
    imap_password: Secret | None = secret("IMAP password.")
    folder: str = setting("INBOX", "Folder read for customer mail.")
    move_to: str = setting("", "After a message is stored, move it to this folder; empty: flag it \\Seen.")
    idle: bool = setting(True, "Use IMAP IDLE (push) when the server offers it; else poll.")
    idle_renew: float = setting(
        1500.0, "Seconds before an IDLE is renewed (servers cut it at about 29 minutes).", min=5, max=1740)
    poll_interval: float = setting(30.0, "Seconds between checks when the server has no IDLE.", min=0.5, max=3600)
    reconcile_interval: float = setting(
        300.0, "Seconds between full checks for unread mail a dropped connection may have missed.", min=5)
    # At most 500: aioimaplib reads an answer's lines by recursion, one level per line.
    fetch_batch: int = setting(200, "Messages fetched per IMAP request.", min=1, max=500)
    max_message_bytes: int = setting(
        60 * 1024 * 1024, "Larger messages become tickets from their headers only, with a note.", min=1024)
    parse_workers: int = setting(
        2, "Processes that parse a backlog of mail on other CPU cores (0: parse in a thread).", min=0, max=64)

    smtp_host: str = setting("", "SMTP server replies are sent through.")
    smtp_port: int = setting(465, "SMTP port (465 for ssl, 587 for starttls).", min=1, max=65535)
    smtp_security: Security = setting("ssl", "ssl, starttls, or none on a loopback host only.")
    smtp_user: str = setting("", "SMTP login (default: the address); no login when smtp_password is unset.")
    smtp_password: Secret | None = secret("SMTP password.")
    smtp_pool_size: int = setting(8, "SMTP connections kept open and reused.", min=1, max=64)

    timeout: float = setting(30.0, "Seconds any one IMAP or SMTP exchange may take.", min=1, max=600)
    ca_file: str = setting("", "Extra CA certificates (PEM) to trust, for a self-hosted server.")

    def __post_init__(self) -> None:
        if self.imap_security == "starttls":
            raise SettingsError(
                'settings: channels.email.imap_security = "starttls" is not supported: aioimaplib cannot '
                'upgrade a connection to TLS; use "ssl" (port 993)')
        for side in ("imap", "smtp"):
            host = getattr(self, f"{side}_host")
            if getattr(self, f"{side}_security") == "none" and host and not is_loopback(host):
                raise SettingsError(
                    f'settings: channels.email.{side}_security = "none" sends the password in clear text; '
                    f'it is allowed only on a loopback host, not {host!r}')
        if self.address and "@" not in self.address:
            raise SettingsError(f"settings: channels.email.address {self.address!r} is not an email address")

    def credentials_present(self) -> bool:
        return bool(self.imap_password)

    def missing_credentials(self) -> list[str]:
        needed = {"address": self.address, "imap_host": self.imap_host, "imap_password": self.imap_password,
                  "smtp_host": self.smtp_host}
        return [key for key, value in needed.items() if not value]

    @property
    def domain(self) -> str:
        return (self.message_id_domain or self.address.rpartition("@")[2]).lower()
