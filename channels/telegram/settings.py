"""The `[channels.telegram]` settings: the bot, the agents' group, the Bot API server and its limits."""

from __future__ import annotations

import dataclasses
import re

from gateway.errors import SettingsError
from gateway.settings import ChannelSettings, Secret, secret, setting


@dataclasses.dataclass(frozen=True)
class TelegramSettings(ChannelSettings):
    acknowledge: bool = setting(True, "Answer each new ticket at once with its reference (an automatic reply).")
    token: Secret | None = secret("The bot's token from @BotFather.")
    agents_chat_id: int = setting(
        0, "Chat id of the agents' group (a forum supergroup gives each ticket a topic); 0: no desk.")
    default_language: str = setting("fa", "Language of the greeting when the customer's app names none (fa, en).")
    base_url: str = setting(
        "https://api.telegram.org/bot", "Bot API address the token is appended to (a self-hosted server or stand-in).")
    base_file_url: str = setting("https://api.telegram.org/file/bot", "Where the Bot API serves files.")
    poll_timeout: float = setting(25.0, "Seconds a getUpdates call waits for news (long polling).", min=0, max=50)
    max_file_bytes: int = setting(
        20 * 1024 * 1024, "Larger customer files are not downloaded (the Bot API's limit is 20 MB); a note says so.",
        min=0)
    chat_interval: float = setting(1.0, "Seconds between two messages to one customer's chat.", min=0, max=60)
    group_per_minute: int = setting(20, "Messages per minute into one group, all topics together.", min=1, max=600)
    bot_per_second: int = setting(30, "Messages per second from the bot in all.", min=1, max=1000)
    group_window: float = setting(60.0, "The window `group_per_minute` is counted over, in seconds.", min=0.01)
    timeout: float = setting(30.0, "Seconds any one Bot API request may take.", min=1, max=600)
    webhook_url: str = setting(
        "", "Public HTTPS address Telegram pushes updates to, reaching this gateway's /webhooks/telegram "
            "(through your TLS proxy); empty: getUpdates long polling.")
    webhook_secret: Secret | None = secret(
        "The secret token Telegram sends with each push (1-256 of A-Z a-z 0-9 _ -); needed with webhook_url.")

    def __post_init__(self) -> None:
        if self.default_language not in ("fa", "en"):
            raise SettingsError(
                f"settings: channels.telegram.default_language must be fa or en, got {self.default_language!r}")
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise SettingsError(f"settings: channels.telegram.webhook_url must be an http(s) address, "
                                f"got {self.webhook_url!r}")
        if self.webhook_url and not self.webhook_secret:
            raise SettingsError("settings: channels.telegram.webhook_url needs a secret token in "
                                "KARTABL_CHANNELS__TELEGRAM__WEBHOOK_SECRET (Telegram sends it with each push)")
        if self.webhook_secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", self.webhook_secret.reveal()):
            raise SettingsError("settings: channels.telegram.webhook_secret may hold only A-Z a-z 0-9 _ - "
                                "(1 to 256 of them)")

    def credentials_present(self) -> bool:
        return bool(self.token)

    def missing_credentials(self) -> list[str]:
        return [] if self.token else ["token"]
