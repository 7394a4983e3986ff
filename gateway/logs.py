"""Log set-up: one line per event, text or JSON, with every secret value blotted out."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

from gateway.settings import LogSettings

REDACTED = "[secret]"


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then replaces every known secret in the finished line (tracebacks too)."""

    def __init__(self, fmt: str | None, secrets: Iterable[str], as_json: bool = False) -> None:
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S%z")
        # Longest first, so a secret that contains another is blotted out whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            entry = {"time": self.formatTime(record, self.datefmt), "level": record.levelname.lower(),
                     "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            line = json.dumps(entry, ensure_ascii=False)
        else:
            line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


def setup_logging(settings: LogSettings, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", secrets, as_json=settings.format == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Library chatter that would drown the gateway's own lines at INFO.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
