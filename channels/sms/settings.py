"""The `[channels.sms]` settings: the Kavenegar account and line, its callbacks, and how often to look."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from gateway.errors import SettingsError
from gateway.settings import ChannelSettings, Secret, secret, setting

Receive = Literal["callback", "poll"]


@dataclasses.dataclass(frozen=True)
class SmsSettings(ChannelSettings):
    acknowledge: bool = setting(
        False, "Answer each new ticket at once with its reference (an automatic reply; each one is an SMS you pay for).")
    api_key: Secret | None = secret("Kavenegar API key (it sits inside Kavenegar's URLs; never logged).")
    sender: str = setting("", "The line replies are sent from and customers text to (e.g. 10004346).")
    api_host: str = setting("api.kavenegar.com", "Kavenegar's API host (a local stand-in in the demo and tests).")
    callback_secret: Secret | None = secret(
        "The secret path segment of the callbacks (/webhooks/kavenegar/<secret>/inbound and /delivery), "
        "16 to 128 of A-Z a-z 0-9 _ -.")
    receive: Receive = setting(
        "callback", "callback: Kavenegar calls the gateway for each SMS; poll: the gateway asks (sms/receive), "
        "only where no callback URL can be had.")
    poll_interval: float = setting(10.0, "Seconds between two sms/receive calls in poll mode.", min=1, max=3600)
    reconcile_interval: float = setting(
        300.0, "Seconds between two reconciles with Kavenegar's inbox (what a callback or a crash missed).",
        min=10, max=86400)
    status_after: float = setting(
        600.0, "Seconds after a send without a delivery report before the gateway asks sms/status.", min=10)
    status_interval: float = setting(300.0, "Seconds between two sms/status rounds.", min=10, max=86400)
    max_parts: int = setting(
        3, "Longest reply in SMS parts (70 Persian or 160 Latin characters in one, 67 or 153 each when split); "
           "a longer one is shortened, with the ticket reference.", min=1, max=10)
    suspend_for: float = setting(
        300.0, "After no credit (418) or a refused IP (407), seconds before sending is tried again.", min=10)
    timeout: float = setting(15.0, "Seconds any one Kavenegar request may take.", min=1, max=120)

    def __post_init__(self) -> None:
        if self.sender and not self.sender.isdigit():
            raise SettingsError(f"settings: channels.sms.sender must be the line's digits, got {self.sender!r}")
        if self.callback_secret and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", self.callback_secret.reveal()):
            raise SettingsError("settings: channels.sms.callback_secret must be 16 to 128 of A-Z a-z 0-9 _ - "
                                "(it is part of the callback URLs)")
        if self.api_key and self.receive == "callback" and not self.callback_secret:
            raise SettingsError("settings: channels.sms.receive = \"callback\" needs "
                                "KARTABL_CHANNELS__SMS__CALLBACK_SECRET (the secret part of the callback URLs)")

    def credentials_present(self) -> bool:
        return bool(self.api_key and self.sender)

    def missing_credentials(self) -> list[str]:
        return [name for name, value in (("api_key", self.api_key), ("sender", self.sender)) if not value]
