"""The composition root: the one place the core is wired to the channels and workflows packages.

Everything else in `gateway` knows channels only through `gateway.channel.Channel` and never imports a
provider library; this module imports the registries lazily, when a command needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.channel import Channel, Desk
from gateway.domain import ChannelKind
from gateway.runtime import Runtime
from gateway.settings import Settings, load_settings

log = logging.getLogger("kartabl.compose")


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
    from workflows.engine import Workflow
    from workflows.notices import NOTICE_JOB, DeskNotices

    if channels is None:
        channels = {ChannelKind(name): build(name, cfg) for name, cfg in settings.channels.items() if cfg.active}
    runtime = Runtime(settings, channels)
    desks = [*desks, *_telegram_desks(runtime, channels)]
    acknowledge = [name for name, cfg in settings.channels.items() if cfg.active and cfg.acknowledge]
    workflow = Workflow(runtime.tickets, runtime.db, runtime.queue, desks, settings.workflows, acknowledge=acknowledge,
                        daily_cap=settings.autoreply.daily_cap_per_sender, links=_survey_links(settings),
                        metrics=runtime.metrics)
    workflow.file.refresh()
    for kind, handler in workflow.handlers.items():
        runtime.register(kind, handler)
    runtime.tickets.announce = True
    for desk in desks:
        if hasattr(desk, "lead_names"):
            desk.lead_names = lambda: workflow.config.leads
    runtime.add_routes(workflow.routes())
    if settings.http.admin_token:
        runtime.add_routes(_admin_api(runtime, settings, workflow).routes())
    runtime.add_routes(_dashboard_routes(runtime, settings, workflow))
    runtime.add_task(workflow.watch)
    runtime.on_reload(workflow.reload)
    runtime.register(NOTICE_JOB, DeskNotices(desks).handler)
    for desk in desks:
        for kind, handler in getattr(desk, "handlers", {}).items():
            runtime.register(kind, handler)
    return runtime


def _survey_links(settings: Settings):  # noqa: ANN202  (workflows is imported lazily)
    """Signed survey links in resolution emails, when the gateway has a public address and a key to sign with."""
    from workflows.links import SurveyLinks

    http = settings.http
    if http.public_url and not http.link_secret:
        log.warning("http.public_url is set but KARTABL_HTTP__LINK_SECRET is not: resolution emails carry no survey link")
    return SurveyLinks(http.public_url, http.link_secret) if http.public_url and http.link_secret else None


def _admin_api(runtime: Runtime, settings: Settings, workflow):  # noqa: ANN001, ANN202  (workflows is imported lazily)
    """The admin API (/api), given what it needs of the workflow engine as plain callables: gateway.api
    never imports workflows."""
    import dataclasses

    from gateway.api import AdminApi, Probe, RulesHooks
    from workflows.calendar import SlaKind
    from workflows.config import WorkflowError, parse_workflow
    from workflows.messages import names
    from workflows.rules import Facts

    file = workflow.file

    def current() -> dict:
        config = workflow.config
        try:
            text = file.path.read_text(encoding="utf-8", errors="replace") if file.path else None
        except OSError:
            text = None
        return {"file": str(file.path) if file.path else None, "source": config.source, "text": text,
                "rules": [{"name": rule.name, "line": rule.line} for rule in config.rules.rules], "error": file.error}

    def validate(text: str) -> str | None:
        try:
            parse_workflow(text, file.path.name if file.path else "workflows.toml", templates=names(file.templates_dir))
        except WorkflowError as exc:
            return str(exc)
        return None

    def dry_run(probe: Probe) -> dict:
        config = workflow.config
        open_now = config.calendar.is_open(probe.at)
        decision = config.rules.evaluate(Facts(
            channel=probe.channel, sender=probe.sender, subject=probe.subject, text=probe.text, language=probe.language,
            customer_tags=probe.tags, has_attachment=probe.attachment, business_hours=open_now,
            first_message=probe.first_message))
        priority = decision.priority or "normal"
        return {
            "business_hours": open_now,
            "fired": [dataclasses.asdict(firing) for firing in decision.fired],
            "missed": [dataclasses.asdict(miss) for miss in decision.missed],
            "decision": {name: getattr(decision, name) for name in
                         ("department", "priority", "tags", "assign", "reply_template", "review")},
            "first_response_due": config.sla.due(priority, SlaKind.FIRST_RESPONSE, probe.at, config.calendar),
            "resolution_due": config.sla.due(priority, SlaKind.RESOLUTION, probe.at, config.calendar),
            "explain": decision.explain(),
        }

    hooks = RulesHooks(current=current, validate=validate, dry_run=dry_run, calendar=lambda: workflow.config.calendar)
    return AdminApi(runtime.db, runtime.queue, settings.http.admin_token, hooks, reports=settings.reports,
                    clock=runtime.clock)


def _telegram_desks(runtime: Runtime, channels: Mapping[ChannelKind, Channel]) -> list[Desk]:
    """The agents' group of an active Telegram channel that names one."""
    telegram = channels.get(ChannelKind.TELEGRAM)
    chat_id = getattr(getattr(telegram, "settings", None), "agents_chat_id", 0)
    if telegram is None or not chat_id:
        return []
    from channels.telegram.desk import TelegramDesk

    desk = TelegramDesk(telegram.api, chat_id, runtime.tickets, runtime.db, runtime.files)
    telegram.attach_desk(desk)
    return [desk]


def _dashboard_routes(runtime: Runtime, settings: Settings, workflow) -> list:  # noqa: ANN001
    """The managers' dashboard (/dashboard) when the admin token is set; it reads the business calendar
    through a callable, so it follows reloads of the workflow file and never imports workflows."""
    if not settings.http.admin_token:
        return []
    from gateway.dashboard import Dashboard

    return Dashboard(runtime.db, runtime.tickets, settings, calendar=lambda: workflow.config.calendar).routes()
