"""Channel adapters, one per provider, and the explicit registry of the built-in ones.

Entries name their modules as strings so a provider library is imported only when its channel is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from gateway.domain import ChannelKind

#: kind -> (its settings schema, its adapter class), as "module:attribute".
REGISTRY: dict[ChannelKind, tuple[str, str]] = {
    ChannelKind.EMAIL: ("channels.email.settings:EmailSettings", "channels.email.channel:EmailChannel"),
    ChannelKind.TELEGRAM: ("channels.telegram.settings:TelegramSettings", "channels.telegram.channel:TelegramChannel"),
    ChannelKind.SMS: ("channels.sms.settings:SmsSettings", "channels.sms.channel:SmsChannel"),
    ChannelKind.LOOPBACK: ("channels.loopback:LoopbackSettings", "channels.loopback:LoopbackChannel"),
}


#: kind -> the function that reads a quarantined payload again: (raw bytes, channel settings) -> message.
QUARANTINE_READERS: dict[ChannelKind, str] = {
    ChannelKind.EMAIL: "channels.email.channel:read_quarantined",
}


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def settings_schemas() -> dict[str, type]:
    """The settings schema of every built-in channel, by the name of its `[channels.*]` table."""
    return {str(kind): _load(schema) for kind, (schema, _) in REGISTRY.items()}


def build(kind: ChannelKind | str, settings: Any) -> Any:
    """A channel adapter built from its own settings section."""
    return _load(REGISTRY[ChannelKind(kind)][1])(settings)


def quarantine_readers(channel_settings: dict[str, Any]) -> dict[str, Any]:
    """For each channel whose payloads can be quarantined: raw bytes -> InboundMessage (raises ValueError)."""
    readers = {}
    for kind, path in QUARANTINE_READERS.items():
        read, cfg = _load(path), channel_settings[str(kind)]
        readers[str(kind)] = lambda raw, read=read, cfg=cfg: read(raw, cfg)
    return readers
