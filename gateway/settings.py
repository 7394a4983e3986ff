"""Settings: `settings.toml`, overridden key by key from the environment, secrets only from the environment.

A key `section.name` is overridden by `KARTABL_SECTION__NAME`; a channel's key `channels.email.imap_host`
by `KARTABL_CHANNELS__EMAIL__IMAP_HOST`. Every section is a frozen dataclass whose fields carry their
type, default, bounds and one line of help; `parse_section` turns raw values into it and reports any
mistake as a `SettingsError` of one line that names the key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from gateway.errors import SettingsError

ENV_PREFIX = "KARTABL_"
CONFIG_ENV = "KARTABL_CONFIG"


class Secret:
    """A secret value (token, password, API key) whose repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that must send it to a provider."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with its help line and optional numeric bounds."""
    return dataclasses.field(default=default, metadata={"help": help, "min": min, "max": max})


def secret(help: str) -> Any:
    """A secret field: absent by default, read only from the environment."""
    return dataclasses.field(default=None, metadata={"help": help, "secret": True})


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting(
        "sqlite+aiosqlite:///kartabl.db",
        "SQLAlchemy URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://user@host/db. "
        "A URL with a password belongs in KARTABL_DATABASE__URL, not in the file.",
    )
    upgrade_on_start: bool = setting(True, "Apply pending migrations when `kartabl run` starts.")
    pool_size: int = setting(5, "Connections kept open to PostgreSQL per process.", min=1, max=100)
    echo: bool = setting(False, "Log every SQL statement (debugging only).")


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    enabled: bool = setting(True, "Serve /healthz, /metrics and webhooks.")
    host: str = setting("127.0.0.1", "Address the HTTP server binds to.")
    port: int = setting(8080, "Port the HTTP server binds to (0 picks a free one).", min=0, max=65535)
    public_url: str = setting(
        "", "The gateway's address as customers' browsers reach it (`https://support.example.ir`): links in "
        "emails (the satisfaction survey) point there. Empty: no links.")
    link_secret: Secret | None = secret(
        "Key that signs the links in customers' emails, so nobody can score another's ticket (a long random string).")
    admin_token: Secret | None = secret(
        "Bearer token of the admin API (/api) and the dashboard's login; unset: both are off (404).")


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    batch_max: int = setting(
        500, "Most inbound messages written in one transaction.", min=1, max=10_000
    )


@dataclasses.dataclass(frozen=True)
class AttachmentSettings:
    dir: Path = setting(Path("attachments"), "Directory of attachment files, stored by SHA-256.")
    max_bytes: int = setting(25 * 1024 * 1024, "Largest attachment kept, in bytes.", min=1)
    max_count: int = setting(20, "Most attachments kept from one message.", min=0)


@dataclasses.dataclass(frozen=True)
class JobSettings:
    concurrency: int = setting(32, "Jobs (sends, workflow steps, timers) run at once per process.", min=1, max=256)
    poll_interval: float = setting(
        1.0, "Seconds between looks for work queued by other processes.", min=0.05, max=60
    )
    lease_seconds: float = setting(
        60.0, "A running job not heartbeated for this long is taken over.", min=5, max=3600
    )
    max_attempts: int = setting(12, "Attempts before a job is dead-lettered.", min=1, max=1000)
    backoff_base: float = setting(2.0, "First retry delay in seconds; doubles per attempt.", min=0.01)
    backoff_cap: float = setting(3600.0, "Longest retry delay in seconds.", min=1)


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    shutdown_grace: float = setting(
        20.0, "Seconds in-flight work may take to finish after SIGTERM.", min=0, max=600
    )
    channel_restart_cap: float = setting(
        300.0, "Longest wait in seconds before restarting a crashed channel.", min=1
    )


@dataclasses.dataclass(frozen=True)
class AutoReplySettings:
    daily_cap_per_sender: int = setting(
        3, "Most automatic messages (acknowledgements, surveys) one customer address gets in 24 hours; "
        "a cap that stops any reply loop the loop checks missed.", min=0, max=1000)


@dataclasses.dataclass(frozen=True)
class WorkflowSettings:
    file: str = setting(
        "workflows/workflows.toml", "The admins' workflow file: routing rules, business calendar, SLA targets, "
        "escalation ladder, leads (relative to the working directory; empty or missing: no rules, the defaults).")
    reload_interval: float = setting(
        5.0, "Seconds between looks at the workflow file for changes (SIGHUP reloads at once).", min=0.5, max=3600)
    auto_close_days: float = setting(
        3.0, "Days a resolved ticket stays quiet before it is closed (a customer message reopens it).", min=0)
    survey: bool = setting(True, "Ask for a satisfaction score (1-5) when a ticket is resolved.")
    templates_dir: str = setting("", "A directory of template files that replace the built-in ones of the same name.")
    flood_limit: int = setting(
        20, "Messages a minute one customer may send before the rest of the burst is kept on the ticket without "
        "being posted to the agents one by one (they are told once); 0: no limit.", min=0, max=10_000)


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    complaint_tags: tuple[str, ...] = setting(
        ("complaint", "شکایت"), "Ticket tags (set by the routing rules) that make a ticket a complaint in the reports.")
    jalali: bool = setting(False, "Show dates in reports and the dashboard in the Jalali calendar by default.")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = setting("info", "Log level.")
    format: Literal["text", "json"] = setting("text", "Log line format.")


@dataclasses.dataclass(frozen=True)
class ChannelSettings:
    """Base of every channel's section. `enabled` unset means: on when its credentials are set."""

    enabled: bool | None = setting(None, "Force the channel on or off; unset: on when credentials are set.")
    acknowledge: bool = setting(False, "Answer each new ticket at once with its reference (an automatic reply).")

    def credentials_present(self) -> bool:
        return False

    def missing_credentials(self) -> list[str]:
        """Names of the keys that must be set before the channel can run."""
        return []

    @property
    def active(self) -> bool:
        return self.credentials_present() if self.enabled is None else self.enabled


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "http": HttpSettings,
    "ingest": IngestSettings,
    "attachments": AttachmentSettings,
    "jobs": JobSettings,
    "runtime": RuntimeSettings,
    "autoreply": AutoReplySettings,
    "workflows": WorkflowSettings,
    "reports": ReportSettings,
    "log": LogSettings,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of one gateway process."""

    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    attachments: AttachmentSettings = dataclasses.field(default_factory=AttachmentSettings)
    jobs: JobSettings = dataclasses.field(default_factory=JobSettings)
    runtime: RuntimeSettings = dataclasses.field(default_factory=RuntimeSettings)
    autoreply: AutoReplySettings = dataclasses.field(default_factory=AutoReplySettings)
    workflows: WorkflowSettings = dataclasses.field(default_factory=WorkflowSettings)
    reports: ReportSettings = dataclasses.field(default_factory=ReportSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    channels: Mapping[str, ChannelSettings] = dataclasses.field(default_factory=dict)
    source: str = "defaults"

    def secrets(self) -> list[str]:
        """Every secret value in these settings (the database password too), so logs can blot them out."""
        from sqlalchemy.engine import make_url

        found = [s.reveal() for s in _secret_values(self)]
        found.append(make_url(self.database.url).password or "")
        return [s for s in found if s]


def _secret_values(obj: Any) -> list[Secret]:
    out: list[Secret] = []
    if isinstance(obj, Secret):
        return [obj]
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            out += _secret_values(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            out += _secret_values(v)
    return out


def env_name(path: str) -> str:
    """`channels.email.imap_host` -> `KARTABL_CHANNELS__EMAIL__IMAP_HOST`."""
    return ENV_PREFIX + "__".join(part.upper() for part in path.split("."))


class _Origin:
    """Where each raw value came from, for error messages."""

    def __init__(self, file_label: str) -> None:
        self.file_label = file_label
        self.from_env: set[str] = set()

    def describe(self, path: str) -> str:
        return f"from {env_name(path)}" if path in self.from_env else f"in {self.file_label}"


def load_settings(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    channel_schemas: Mapping[str, type[ChannelSettings]] | None = None,
) -> Settings:
    """Read the file (if any), overlay the environment, validate everything.

    Raises SettingsError with one line naming the offending key.
    """
    environ = os.environ if environ is None else environ
    channel_schemas = channel_schemas or {}
    raw: dict[str, Any] = {}
    label = "defaults"
    if path is not None:
        path = Path(path)
        label = str(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"settings: file {path} not found") from None
        except OSError as exc:
            raise SettingsError(f"settings: cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings: {path} is not valid TOML: {exc}") from None
    origin = _Origin(label)
    _overlay_environment(raw, environ, origin)

    unknown = sorted(set(raw) - set(SECTIONS) - {"channels"})
    if unknown:
        where = origin.describe(unknown[0])
        raise SettingsError(
            f"settings: unknown section [{unknown[0]}] {where} (known: {', '.join([*SECTIONS, 'channels'])})"
        )
    sections = {
        name: parse_section(schema, _table(raw, name, origin), name, origin)
        for name, schema in SECTIONS.items()
    }
    _refuse_password_in_file(sections["database"].url, origin)

    channels_raw = _table(raw, "channels", origin)
    unknown = sorted(set(channels_raw) - set(channel_schemas))
    if unknown:
        raise SettingsError(
            f"settings: unknown channel [channels.{unknown[0]}] {origin.describe('channels.' + unknown[0])}"
            f" (known: {', '.join(channel_schemas) or 'none'})"
        )
    channels = {
        name: parse_section(schema, _table(channels_raw, name, origin, f"channels.{name}"),
                            f"channels.{name}", origin)
        for name, schema in channel_schemas.items()
    }
    for name, cfg in channels.items():
        if cfg.active and cfg.missing_credentials():
            key = cfg.missing_credentials()[0]
            what = (f"channels.{name}.enabled is true" if cfg.enabled
                    else f"channels.{name} is on (its credentials are set)")
            raise SettingsError(
                f"settings: {what} but channels.{name}.{key} is not set "
                f"(set {env_name(f'channels.{name}.{key}')})"
            )
    return Settings(**sections, channels=channels, source=label)


def _table(raw: Mapping[str, Any], name: str, origin: _Origin, path: str | None = None) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise SettingsError(f"settings: {path or name} must be a table, {origin.describe(path or name)}")
    return value


def _overlay_environment(raw: dict[str, Any], environ: Mapping[str, str], origin: _Origin) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == CONFIG_ENV:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            raise SettingsError(f"settings: environment variable {name} has an empty part")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"settings: {name} overrides a value that is not a table")
        node[parts[-1]] = value
        origin.from_env.add(".".join(parts))


def parse_section(schema: type, raw: Mapping[str, Any], path: str, origin: _Origin | None = None) -> Any:
    """Validate one table against its dataclass schema; values from the environment are strings."""
    origin = origin or _Origin("settings")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}"
        raise SettingsError(
            f"settings: unknown key {key} {origin.describe(key)} (known: {', '.join(fields)})"
        )
    hints = typing.get_type_hints(schema)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{path}.{name}"
        field = fields[name]
        if field.metadata.get("secret") and key not in origin.from_env:
            raise SettingsError(
                f"settings: {key} is a secret and is not read from {origin.file_label}; "
                f"set {env_name(key)} in the environment"
            )
        values[name] = _convert(value, hints[name], field, key, origin)
    return schema(**values)


def _convert(value: Any, hint: Any, field: dataclasses.Field, key: str, origin: _Origin) -> Any:
    from_env = isinstance(value, str) and key in origin.from_env
    where = origin.describe(key)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if from_env and value == "":
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        if value not in args:
            raise SettingsError(
                f"settings: {key} must be one of {', '.join(map(repr, args))}, got {value!r} ({where})"
            )
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise SettingsError(f"settings: {key} must be true or false, got {value!r} ({where})")
    if hint in (int, float):
        return _number(value, hint, field, key, where, from_env)
    if hint is Secret:
        if not isinstance(value, str):
            raise SettingsError(f"settings: {key} must be a string ({where})")
        return Secret(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise SettingsError(f"settings: {key} must be a non-empty path, got {value!r} ({where})")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(f"settings: {key} must be a string, got {value!r} ({where})")
        return value
    if typing.get_origin(hint) is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if from_env else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise SettingsError(f"settings: {key} must be a list of strings, got {value!r} ({where})")
        return tuple(items)
    raise SettingsError(f"settings: {key} has an unsupported type {hint!r}")  # a schema bug


def _number(value: Any, hint: type, field: dataclasses.Field, key: str, where: str, from_env: bool) -> Any:
    kind = "an integer" if hint is int else "a number"
    accepted = int if hint is int else (int, float)
    try:
        if not from_env and (isinstance(value, bool) or not isinstance(value, accepted)):
            raise ValueError
        number = hint(value)
        if not math.isfinite(number):
            raise ValueError
    except ValueError:
        raise SettingsError(f"settings: {key} must be {kind}, got {value!r} ({where})") from None
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise SettingsError(f"settings: {key} must be {bounds}, got {value!r} ({where})")
    return number


def _refuse_password_in_file(url: str, origin: _Origin) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(
            f"settings: database.url is not a database URL ({origin.describe('database.url')})"
        ) from None
    if parsed.password and "database.url" not in origin.from_env:
        raise SettingsError(
            f"settings: database.url in {origin.file_label} contains a password; "
            f"set {env_name('database.url')} in the environment instead"
        )
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise SettingsError(
            f"settings: database.url must be sqlite+aiosqlite or postgresql+asyncpg, "
            f"got {parsed.get_backend_name()} ({origin.describe('database.url')})"
        )


def documented_keys(channel_schemas: Mapping[str, type] | None = None) -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting, for the README and `kartabl settings`."""
    rows = []
    groups = [(name, schema) for name, schema in SECTIONS.items()]
    groups += [(f"channels.{n}", s) for n, s in (channel_schemas or {}).items()]
    for prefix, schema in groups:
        for f in dataclasses.fields(schema):
            default = None if f.metadata.get("secret") else f.default
            rows.append((f"{prefix}.{f.name}", default, f.metadata.get("help", "")))
    return rows
