"""The composition root: the one place the core is wired to the channels and workflows packages.

Everything else in `gateway` knows channels only through `gateway.channel.Channel` and never imports a
provider library; this module imports the registries lazily, when a command needs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.channel import Channel, Desk
from gateway.domain import ChannelKind
from gateway.ingest import INBOUND_JOB
from gateway.runtime import Runtime
from gateway.settings import Settings, load_settings


def channel_schemas() -> dict[str, type]:
    from channels import settings_schemas

    return settings_schemas()


def load(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings with every built-in channel's section validated."""
    return load_settings(path, environ, channel_schemas())


def build_runtime(settings: Settings, *, channels: Mapping[ChannelKind, Channel] | None = None,
                  desks: Sequence[Desk] = ()) -> Runtime:
    """A runtime with the active channels of `settings` (or the given ones) and the workflow handlers."""
    from channels import build
    from workflows.inbound import InboundWorkflow

    if channels is None:
        channels = {ChannelKind(name): build(name, cfg) for name, cfg in settings.channels.items() if cfg.active}
    runtime = Runtime(settings, channels)
    acknowledge = [name for name, cfg in settings.channels.items() if cfg.active and cfg.acknowledge]
    runtime.register(INBOUND_JOB, InboundWorkflow(runtime.tickets, desks, acknowledge=acknowledge,
                                              daily_cap=settings.autoreply.daily_cap_per_sender).handler)
    return runtime
