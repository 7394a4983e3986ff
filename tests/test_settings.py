"""Settings: the file, environment overrides, secrets only from the environment, one-line errors."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.compose import channel_schemas, load
from gateway.errors import SettingsError
from gateway.logs import RedactingFormatter
from gateway.settings import ChannelSettings, Secret, documented_keys, load_settings, secret, setting

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class PagerSettings(ChannelSettings):
    """A channel schema with a secret, as the provider channels have."""

    token: Secret | None = secret("API token.")
    base_url: str = setting("https://pager.example", "API root.")

    def credentials_present(self) -> bool:
        return bool(self.token)

    def missing_credentials(self) -> list[str]:
        return [] if self.token else ["token"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_settings_file_loads_with_no_channel_enabled() -> None:
    settings = load(ROOT / "settings.toml", environ={})
    assert settings.database.url == "sqlite+aiosqlite:///kartabl.db"
    assert settings.http.port == 8080
    assert [name for name, cfg in settings.channels.items() if cfg.active] == []


def test_environment_overrides_each_key_with_its_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "[http]\nport = 8080\n[jobs]\nbackoff_base = 2.0\n")
    settings = load(path, environ={
        "KARTABL_HTTP__PORT": "9090", "KARTABL_JOBS__BACKOFF_BASE": "0.5", "KARTABL_HTTP__ENABLED": "no",
        "KARTABL_LOG__LEVEL": "debug", "KARTABL_CHANNELS__LOOPBACK__ENABLED": "true",
        "KARTABL_ATTACHMENTS__DIR": "/var/lib/kartabl/files", "KARTABL_TEST_PG_URL": "not a setting",
    })
    assert (settings.http.port, settings.jobs.backoff_base, settings.http.enabled) == (9090, 0.5, False)
    assert settings.log.level == "debug" and settings.channels["loopback"].active
    assert settings.attachments.dir == Path("/var/lib/kartabl/files")


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("[http]\nport = 'eighty'\n", {},
     "settings: http.port must be an integer, got 'eighty' (in {path})"),
    ("", {"KARTABL_HTTP__PORT": "70000"},
     "settings: http.port must be between 0 and 65535, got '70000' (from KARTABL_HTTP__PORT)"),
    ("[jobs]\nwokers = 3\n", {},
     "settings: unknown key jobs.wokers in {path} (known: concurrency, poll_interval, lease_seconds, "
     "max_attempts, backoff_base, backoff_cap)"),
    ("[htpp]\nport = 1\n", {},
     "settings: unknown section [htpp] in {path} (known: database, http, ingest, attachments, jobs, runtime, autoreply, "
     "workflows, reports, log, channels)"),
    ("", {"KARTABL_LOG__LEVEL": "loud"},
     "settings: log.level must be one of 'debug', 'info', 'warning', 'error', got 'loud' (from KARTABL_LOG__LEVEL)"),
    ("[http]\nenabled = 'yes'\n", {}, "settings: http.enabled must be true or false, got 'yes' (in {path})"),
    ("", {"KARTABL_JOBS__POLL_INTERVAL": "nan"},
     "settings: jobs.poll_interval must be a number, got 'nan' (from KARTABL_JOBS__POLL_INTERVAL)"),
    ("[jobs]\nconcurrency = 2.5\n", {}, "settings: jobs.concurrency must be an integer, got 2.5 (in {path})"),
    ("[database]\nurl = 'postgresql+asyncpg://kartabl:hunter2@db/kartabl'\n", {},
     "settings: database.url in {path} contains a password; set KARTABL_DATABASE__URL in the environment instead"),
    ("[database]\nurl = 'mysql://db/kartabl'\n", {},
     "settings: database.url must be sqlite+aiosqlite or postgresql+asyncpg, got mysql (in {path})"),
    ("[channels.fax]\nenabled = true\n", {},
     "settings: unknown channel [channels.fax] in {path} (known: email, telegram, sms, loopback)"),
    ("[channels.telegram]\nwebhook_url = 'https://desk.example.ir/webhooks/telegram'\n", {},
     "settings: channels.telegram.webhook_url needs a secret token in KARTABL_CHANNELS__TELEGRAM__WEBHOOK_SECRET "
     "(Telegram sends it with each push)"),
    ("[channels.telegram]\nwebhook_url = 'https://desk.example.ir/hook'\n",
     {"KARTABL_CHANNELS__TELEGRAM__WEBHOOK_SECRET": "has spaces"},
     "settings: channels.telegram.webhook_secret may hold only A-Z a-z 0-9 _ - (1 to 256 of them)"),
    ("[http\nport = 1\n", {}, "settings: {path} is not valid TOML: Expected ']' at the end of a table "
                              "declaration (at line 1, column 6)"),
])
def test_a_wrong_setting_is_one_line_naming_the_key(tmp_path: Path, text: str, environ: dict, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load(path, environ=environ)
    assert str(caught.value) == message.format(path=path)
    assert "\n" not in str(caught.value)


def test_a_settings_path_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, environ={})
    assert str(caught.value) == f"settings: cannot read {tmp_path}: Is a directory"
    with pytest.raises(SettingsError) as caught:
        load(tmp_path / "missing.toml", environ={})
    assert str(caught.value) == f"settings: file {tmp_path / 'missing.toml'} not found"


def test_a_secret_in_the_file_is_refused_and_names_its_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "[channels.pager]\ntoken = '123:ABC'\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, {}, {"pager": PagerSettings})
    assert str(caught.value) == (
        f"settings: channels.pager.token is a secret and is not read from {path}; "
        "set KARTABL_CHANNELS__PAGER__TOKEN in the environment")


def test_a_secret_from_the_environment_enables_its_channel_and_never_shows(tmp_path: Path) -> None:
    settings = load_settings(None, {"KARTABL_CHANNELS__PAGER__TOKEN": "123456:very-secret-token"},
                             {"pager": PagerSettings})
    pager = settings.channels["pager"]
    assert pager.active and pager.token.reveal() == "123456:very-secret-token"
    assert "very-secret" not in repr(settings) and "very-secret" not in str(pager)
    assert settings.secrets() == ["123456:very-secret-token"]


def test_the_database_password_from_the_environment_is_a_secret_too() -> None:
    settings = load(None, environ={"KARTABL_DATABASE__URL": "postgresql+asyncpg://kartabl:s3cr3t-pw@db/kartabl"})
    assert settings.secrets() == ["s3cr3t-pw"]


def test_a_channel_forced_on_without_its_credentials_stops_start_up() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {"KARTABL_CHANNELS__PAGER__ENABLED": "1"}, {"pager": PagerSettings})
    assert str(caught.value) == ("settings: channels.pager.enabled is true but channels.pager.token is not set "
                                 "(set KARTABL_CHANNELS__PAGER__TOKEN)")


def test_log_lines_never_carry_a_secret_not_even_in_a_traceback_or_url() -> None:
    formatter = RedactingFormatter("%(levelname)s %(message)s", ["123456:very-secret-token"])
    try:
        raise ConnectionError("POST https://api.example/bot123456:very-secret-token/sendMessage failed")
    except ConnectionError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "calling %s", ("bot123456:very-secret-token",),
                                   sys.exc_info())
    line = formatter.format(record)
    assert "very-secret" not in line
    assert "calling bot[secret]" in line and "/bot[secret]/sendMessage failed" in line


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", readme, flags=re.MULTILINE))
    keys = {key for key, _, _ in documented_keys(channel_schemas())}
    assert keys - documented == set(), "settings missing from the README's configuration reference"
    assert documented - keys == set(), "the README documents settings that do not exist"


def test_the_command_line_reports_a_wrong_setting_in_one_line_and_exit_status_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KARTABL_JOBS__CONCURRENCY": "many"}
    done = subprocess.run([sys.executable, "-m", "gateway", "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("kartabl: settings: jobs.concurrency must be an integer, got 'many' "
                           "(from KARTABL_JOBS__CONCURRENCY)\n")
    assert done.stdout == ""
