"""The admins' workflow file: routing rules, business calendar, SLA targets, escalation ladder and the
desk's leads, loaded whole or refused whole, and reloaded when it changes (or on SIGHUP)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from workflows.assignment import Strategy
from workflows.calendar import BusinessCalendar, Ladder, SlaPolicies
from workflows.messages import names
from workflows.rules import RuleError, RuleSet, load_rules

log = logging.getLogger("kartabl.workflows")

#: Top-level tables of the workflow file besides the rules.
_SECTIONS = ("calendar", "sla", "escalation", "desk")


class WorkflowError(ValueError):
    """The workflow file does not validate; one line, naming the file, the line where known, and why."""


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    rules: RuleSet
    calendar: BusinessCalendar = dataclasses.field(default_factory=BusinessCalendar)
    sla: SlaPolicies = dataclasses.field(default_factory=SlaPolicies)
    ladder: Ladder = dataclasses.field(default_factory=Ladder)
    leads: tuple[str, ...] = ()  # Telegram usernames of the leads (besides agents marked --lead)
    review: frozenset[str] = frozenset()  # departments whose agents' replies wait for a lead
    strategies: Mapping[str, Strategy] = dataclasses.field(default_factory=dict)  # by department name
    source: str = "defaults"


def parse_workflow(text: str, source: str, templates: Collection[str] | None = None) -> WorkflowConfig:
    """The workflow file's text, validated (rules naming a template not in `templates` too); raises
    WorkflowError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WorkflowError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {*_SECTIONS, "rule"})
    if unknown:
        raise WorkflowError(f"{source}: unknown table [{unknown[0]}] (known: {', '.join([*_SECTIONS, 'rule'])})")
    try:
        rules = load_rules(text, source)
        if templates is not None:
            rules.check_references(templates=templates)
        calendar = BusinessCalendar.from_mapping(data.get("calendar", {}))
        sla = SlaPolicies.from_mapping(data.get("sla", {}))
        ladder = Ladder.from_mapping(data.get("escalation", {}), where="escalation")
        desk = _desk(data.get("desk", {}))
    except (RuleError, ValueError) as exc:
        message = str(exc)
        raise WorkflowError(message if message.startswith(source) else f"{source}: {message}") from None
    return WorkflowConfig(rules=rules, calendar=calendar, sla=sla, ladder=ladder, source=source, **desk)


def _desk(data: Mapping[str, Any]) -> dict[str, Any]:
    known = {"leads", "review", "strategies"}
    if unknown := sorted(set(data) - known):
        raise ValueError(f"desk.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    leads, review, strategies = data.get("leads", []), data.get("review", []), data.get("strategies", {})
    if not isinstance(leads, list) or not all(isinstance(x, str) for x in leads):
        raise ValueError(f"desk.leads: a list of Telegram usernames, got {leads!r}")
    if not isinstance(review, list) or not all(isinstance(x, str) for x in review):
        raise ValueError(f"desk.review: a list of department names, got {review!r}")
    if not isinstance(strategies, dict):
        raise ValueError(f"desk.strategies: a table of department = strategy, got {strategies!r}")
    parsed = {}
    for department, name in strategies.items():
        try:
            parsed[department] = Strategy(name)
        except ValueError:
            raise ValueError(f"desk.strategies.{department}: {name!r} is not one of "
                             f"{', '.join(s.value for s in Strategy)}") from None
    return {"leads": tuple(x.lstrip("@") for x in leads), "review": frozenset(review), "strategies": parsed}


def default_config() -> WorkflowConfig:
    return parse_workflow("", "defaults")


class WorkflowFile:
    """The workflow file as it was when it last validated: `current` never sees a broken file.

    `refresh()` reads it again if its modification time changed (or `force`); a file that does not
    validate is refused with its one-line reason, logged, and the running rules stay.
    """

    def __init__(self, path: Path | str, templates_dir: Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.templates_dir = templates_dir
        self.current = default_config()
        self.error: str | None = None
        self._stamp: tuple[float, int] | None = None

    def refresh(self, *, force: bool = False) -> bool:
        """True if a new version was taken."""
        if self.path is None:
            return False
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.warning("workflows: %s is gone; the rules loaded before stay", self.path)
            return False
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            config = parse_workflow(self.path.read_text(encoding="utf-8"), self.path.name,
                                    templates=names(self.templates_dir))
        except (WorkflowError, OSError, UnicodeDecodeError) as exc:
            self.error = str(exc)
            log.error("workflows: %s refused, the running rules stay: %s", self.path, exc)
            return False
        self.current, self.error = config, None
        log.info("workflows: %s loaded at %s (%d rules)", self.path, time.strftime("%H:%M:%S"),
                 len(config.rules.rules))
        return True
