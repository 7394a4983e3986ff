"""The `kartabl` command: run, demo, db, jobs, settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.errors import KartablError, SettingsError
from gateway.settings import CONFIG_ENV, Secret, Settings, documented_keys, env_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kartabl",
        description="Kartabl: email, SMS and Telegram into one ticket queue, answered from a Telegram group.",
    )
    parser.add_argument("--version", action="version", version=f"kartabl {__version__}")
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"settings file (default: ${CONFIG_ENV}, else ./settings.toml if present, else built-in defaults)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("run", help="run the gateway until SIGTERM",
                        description="Run the gateway: channels, ingest, job workers and the HTTP app.")
    demo = commands.add_parser(
        "demo", help="run the whole flow on this machine with no accounts",
        description="Run the cartable flow end to end on local stand-ins and print a transcript. "
                    "Needs no settings and no accounts.")
    demo.add_argument("--keep", metavar="DIR", type=Path,
                      help="keep the demo's database and files in DIR instead of a temporary directory")

    db = commands.add_parser("db", help="database schema", description="Database schema migrations.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations",
                           description="Apply every pending migration to the configured database.")
    db_commands.add_parser("current", help="show the database's revision and the code's",
                           description="Print the database's schema revision and the revision this code needs.")

    jobs = commands.add_parser("jobs", help="inspect and retry jobs",
                               description="Inspect the job queue and retry dead-lettered jobs.")
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = job_commands.add_parser("list", help="list jobs", description="List jobs, oldest first.")
    listing.add_argument("--state", choices=["pending", "running", "dead"], help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    retry = job_commands.add_parser("retry", help="retry dead-lettered jobs",
                                    description="Make dead-lettered jobs pending again, with fresh attempts.")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="job ids")
    which.add_argument("--all-dead", action="store_true", help="every dead-lettered job")

    settings = commands.add_parser(
        "settings", help="print every setting and its value",
        description="Print every setting, its effective value (secrets hidden) and its environment variable.")
    settings.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from gateway.demo import run_demo

            return asyncio.run(run_demo(keep=args.keep))
        settings = _settings(args.config)
        return _COMMANDS[args.command](args, settings)
    except SettingsError as exc:
        print(f"kartabl: {exc}", file=sys.stderr)
        return 2
    except KartablError as exc:
        print(f"kartabl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _settings(path: str | None) -> Settings:
    from gateway.compose import load

    path = path or os.environ.get(CONFIG_ENV) or None  # an empty variable means unset
    if path is None and Path("settings.toml").is_file():
        path = "settings.toml"
    return load(path)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.compose import build_runtime
    from gateway.logs import setup_logging

    setup_logging(settings.log, settings.secrets())
    asyncio.run(build_runtime(settings).serve())
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.db import Database
    from gateway.migrate import current_revision, head_revision, upgrade

    async def go() -> int:
        db = Database(settings.database.url)
        try:
            if args.db_command == "upgrade":
                await upgrade(db)
                print(f"database {db.safe_url} is at revision {await current_revision(db)}")
            else:
                current, head = await current_revision(db), head_revision()
                print(f"database {db.safe_url}: revision {current or 'none'}; code needs {head}")
                return 0 if current == head else 3
        finally:
            await db.dispose()
        return 0

    return asyncio.run(go())


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.db import Database
    from gateway.domain import JobState
    from gateway.jobs import JobQueue

    async def go() -> int:
        db = Database(settings.database.url)
        queue = JobQueue(db, settings.jobs)
        try:
            if args.jobs_command == "retry":
                count = await queue.revive(None if args.all_dead else args.ids)
                print(f"{count} job(s) will run again")
                return 0
            rows = await queue.list(JobState(args.state) if args.state else None, args.limit)
        finally:
            await db.dispose()
        if args.json:
            for r in rows:
                print(json.dumps({"id": r.id, "kind": r.kind, "key": r.key, "state": r.state,
                                  "attempts": r.attempts, "due_at": r.due_at.isoformat(),
                                  "last_error": r.last_error, "payload": r.payload}, ensure_ascii=False))
            return 0
        if not rows:
            print("no jobs")
        for r in rows:
            error = f"  last error: {r.last_error}" if r.last_error else ""
            print(f"{r.id:>8}  {r.state:<8} {r.kind:<16} {r.key or '-':<18} attempts {r.attempts:<3}"
                  f" due {r.due_at:%Y-%m-%d %H:%M:%S}Z{error}")
        return 0

    return asyncio.run(go())


def _show_settings(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.compose import channel_schemas

    rows = []
    for key, _default, help_text in documented_keys(channel_schemas()):
        value: object = settings
        for part in key.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        rows.append({"key": key, "value": _plain(value), "env": env_name(key), "help": help_text})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"# settings from {settings.source}")
    for row in rows:
        value = row["value"]
        shown = ("(unset)" if value is None else json.dumps(value, ensure_ascii=False)
                 if not isinstance(value, bool) else str(value).lower())
        print(f"{row['key']} = {shown}    # {row['env']}")
    return 0


def _plain(value: object) -> object:
    """A setting as JSON can carry it; a secret only says that it is set."""
    if isinstance(value, Secret):
        return "(secret, set)"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


_COMMANDS = {"run": _run, "db": _db, "jobs": _jobs, "settings": _show_settings}
