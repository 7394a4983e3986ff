"""The `kartabl` command: run, demo, db, jobs, quarantine, report, settings."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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

    quarantined = commands.add_parser(
        "quarantine", help="list and replay messages no parser could read",
        description="Messages a channel could not read are kept raw in the quarantine, out of the way of "
                    "the rest. List them, write one out, or replay it through today's parser.")
    q_commands = quarantined.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    q_list = q_commands.add_parser("list", help="list quarantined messages",
                                   description="List quarantined messages, oldest first.")
    q_list.add_argument("--all", action="store_true", help="include those already replayed")
    q_list.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    q_list.add_argument("--json", action="store_true", help="print JSON lines")
    q_show = q_commands.add_parser("show", help="write one message's raw bytes to standard output",
                                   description="Write a quarantined message's raw bytes to standard output "
                                               "(for an .eml: `kartabl quarantine show 3 > 3.eml`).")
    q_show.add_argument("id", type=int, metavar="ID")
    q_replay = q_commands.add_parser(
        "replay", help="read quarantined messages again and store them",
        description="Read quarantined messages again with the current parser; those it can read become "
                    "ticket messages (a duplicate is recognised), the rest stay with their new reason.")
    q_which = q_replay.add_mutually_exclusive_group(required=True)
    q_which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="quarantine ids")
    q_which.add_argument("--all", action="store_true", help="every message not yet replayed")

    staff = commands.add_parser("agents", help="register the agents who may act from the desk",
                                description="Agents act on tickets from the Telegram group; only registered "
                                            "ones can. Register each with their Telegram user id.")
    staff_commands = staff.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    agent_add = staff_commands.add_parser("add", help="register an agent (or update one)",
                                          description="Register an agent, or update the one with this Telegram id.")
    agent_add.add_argument("name", help="the agent's name, as tickets show it")
    agent_add.add_argument("--telegram-id", type=int, required=True, help="their Telegram user id")
    agent_add.add_argument("--username", help="their Telegram @username, for /assign")
    agent_add.add_argument("--lead", action="store_true", help="a lead (approves held replies; see the workflows)")
    agent_add.add_argument("--department", action="append", default=[], help="a department they work in")
    staff_commands.add_parser("list", help="list agents", description="List the registered agents.")
    units = commands.add_parser("departments", help="departments tickets can be referred to",
                                description="Departments tickets are referred to with /transfer.")
    unit_commands = units.add_subparsers(dest="departments_command", metavar="ACTION", required=True)
    unit_add = unit_commands.add_parser("add", help="add a department", description="Add a department.")
    unit_add.add_argument("name", help="its short name, as /transfer takes it (e.g. billing)")
    unit_add.add_argument("--title", help="its display name")
    unit_add.add_argument("--strategy", choices=["manual", "round_robin", "least_open"],
                          help="how its new tickets are assigned (default manual: agents /take them)")
    unit_add.add_argument("--review", action=argparse.BooleanOptionalAction, default=None,
                          help="its agents' replies wait for a lead's approval")
    unit_add.add_argument("--chat-id", type=int,
                          help="its own Telegram group, where its tickets are shown (0: none, the agents' chat)")
    unit_commands.add_parser("list", help="list departments", description="List the departments.")

    rules = commands.add_parser("rules", help="check, try and replay the routing rules",
                                description="The workflow file's routing rules: check it, try a message, replay "
                                            "the last tickets.")
    rule_commands = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    for name, text in (("check", "validate the workflow file"), ("test", "which rules a message fires and why"),
                       ("replay", "what the rules would have done to the last tickets")):
        sub = rule_commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--file", help="the workflow file (default: workflows.file)")
        if name == "test":
            sub.add_argument("--channel", default="email", choices=["email", "sms", "telegram"])
            sub.add_argument("--sender", help="address: sara@example.ir, 0912..., a Telegram id")
            sub.add_argument("--subject")
            sub.add_argument("--text")
            sub.add_argument("--language", help="fa or en")
            sub.add_argument("--tag", action="append", default=[], help="a customer tag (vip); repeatable")
            sub.add_argument("--attachment", action="store_true", help="the message has an attachment")
            sub.add_argument("--follow-up", action="store_true", help="a follow-up, not a new ticket")
            sub.add_argument("--at", help="when it arrives (ISO time; default now), for business hours")
            sub.add_argument("--eml", help="an email file to take the message from")
        if name == "replay":
            sub.add_argument("--last", type=int, default=50, help="how many of the latest tickets (default 50)")

    report = commands.add_parser(
        "report", help="the desk's KPIs for a period",
        description="Print the desk's KPIs for a period of local days (the business calendar's time zone, "
                    "Asia/Tehran by default): new, resolved and open tickets, first-response and resolution "
                    "times (wall-clock and business), SLA breaches, reopenings, complaints, CSAT, and messages "
                    "per channel. Days are Gregorian (2026-11-01) or Jalali (1405-08-10, or in Persian digits).")
    report.add_argument("--since", metavar="DAY", help="the first day (default: 29 days before --until)")
    report.add_argument("--until", metavar="DAY", help="the last day, included (default: today)")
    report.add_argument("--by", choices=["channel", "department", "agent"], help="a row per group besides the totals")
    report.add_argument("--json", action="store_true", help="print JSON (durations in seconds)")
    report.add_argument("--jalali", action=argparse.BooleanOptionalAction, default=None,
                        help="show dates in the Jalali calendar (default: reports.jalali)")

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


def _staff(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import staff
    from gateway.db import Database

    async def go() -> int:
        db = Database(settings.database.url)
        try:
            if args.command == "agents" and args.agents_command == "add":
                try:
                    agent_id = await staff.add_agent(db, args.name, telegram_user_id=args.telegram_id,
                                                     username=args.username, is_lead=args.lead,
                                                     department_names=tuple(args.department))
                except LookupError as exc:
                    print(f"kartabl: {exc.args[0]}", file=sys.stderr)
                    return 1
                print(f"agent {agent_id}: {args.name} (Telegram {args.telegram_id})")
            elif args.command == "agents":
                for a in await staff.list_agents(db):
                    lead = " lead" if a.is_lead else ""
                    print(f"{a.id:>5}  {a.name}  telegram {a.telegram_user_id}  @{a.username or '-'}{lead}"
                          f"  {', '.join(a.departments) or '-'}")
            elif args.departments_command == "add":
                department_id = await staff.add_department(db, args.name, title=args.title, chat_id=args.chat_id,
                                                           strategy=args.strategy, review=args.review)
                print(f"department {department_id}: {args.name}")
            else:
                for department_id, name, title, chat_id, strategy, review in await staff.list_departments(db):
                    chat = f"  chat {chat_id}" if chat_id else ""
                    print(f"{department_id:>5}  {name}  {title or ''}  {strategy}{'  review' if review else ''}{chat}")
        finally:
            await db.dispose()
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


def _quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import quarantine

    if args.quarantine_command == "replay":
        return asyncio.run(_replay(args, settings))

    async def go() -> int:
        from gateway.db import Database

        db = Database(settings.database.url)
        try:
            if args.quarantine_command == "show":
                sys.stdout.buffer.write(await quarantine.raw_of(db, args.id))
                return 0
            rows = await quarantine.listing(db, include_replayed=args.all, limit=args.limit)
        finally:
            await db.dispose()
        for r in rows:
            if args.json:
                print(json.dumps({**dataclasses.asdict(r), "created_at": r.created_at.isoformat(),
                                  "replayed_at": r.replayed_at and r.replayed_at.isoformat()}, ensure_ascii=False))
            else:
                done = f"  replayed as message {r.message_id}" if r.replayed_at else ""
                print(f"{r.id:>6}  {r.created_at:%Y-%m-%d %H:%M}Z  {r.channel:<8} {r.size:>9} bytes  "
                      f"{r.source or '-'}: {r.reason}{done}")
        if not rows and not args.json:
            print("the quarantine is empty")
        return 0

    try:
        return asyncio.run(go())
    except LookupError as exc:
        print(f"kartabl: {exc.args[0]}", file=sys.stderr)
        return 1


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from channels import quarantine_readers
    from gateway import quarantine
    from gateway.runtime import Runtime

    runtime = Runtime(settings)  # only its storage and ingest: no channels, no HTTP, no workers
    await runtime.ingestor.start()
    failed = 0
    try:
        ids = args.ids or [r.id for r in await quarantine.listing(runtime.db, limit=1_000_000)]
        readers = quarantine_readers(dict(settings.channels))
        for item in ids:
            try:
                stored, outcome = await quarantine.replay(runtime.db, runtime.ingestor, item, readers)
            except LookupError as exc:
                stored, outcome = False, exc.args[0]
            failed += not stored
            print(outcome)
    finally:
        await runtime.ingestor.stop()
        await runtime.db.dispose()
    return 1 if failed else 0


def _rules(args: argparse.Namespace, settings: Settings) -> int:
    from workflows import commands
    from workflows.config import WorkflowError

    try:
        if args.rules_command == "replay":
            return asyncio.run(commands.replay(args, settings))
        return (commands.check if args.rules_command == "check" else commands.test)(args, settings)
    except WorkflowError as exc:
        print(f"kartabl: {exc}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from gateway.db import Database
    from gateway.messages import utcnow
    from gateway.reports import build_report, parse_day, report_json, report_text

    try:
        calendar = _business_calendar(settings)
    except ValueError as exc:  # the workflow file does not validate (WorkflowError)
        print(f"kartabl: {exc}", file=sys.stderr)
        return 1
    zone = calendar.zone
    try:
        last = parse_day(args.until) if args.until else utcnow().astimezone(zone).date()
        first = parse_day(args.since) if args.since else last - dt.timedelta(days=29)
    except ValueError as exc:
        print(f"kartabl: {exc}", file=sys.stderr)
        return 2
    if first > last:
        print(f"kartabl: --since {first} is after --until {last}", file=sys.stderr)
        return 2
    since, until = (dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
                    for day in (first, last + dt.timedelta(days=1)))
    jalali = settings.reports.jalali if args.jalali is None else args.jalali

    async def go():  # noqa: ANN202
        db = Database(settings.database.url)
        try:
            return await build_report(db, since, until, by=args.by, calendar=calendar,
                                      complaint_tags=settings.reports.complaint_tags, zone=zone)
        finally:
            await db.dispose()

    report = asyncio.run(go())
    if args.json:
        print(json.dumps(report_json(report, jalali=jalali), ensure_ascii=False, indent=2))
    else:
        print(report_text(report, jalali=jalali))
    return 0


def _business_calendar(settings: Settings):  # noqa: ANN202 (a workflows.calendar.BusinessCalendar)
    """The workflow file's business calendar; the default one when the file is missing or empty."""
    from workflows.calendar import BusinessCalendar
    from workflows.config import parse_workflow

    path = Path(settings.workflows.file) if settings.workflows.file else None
    if path is None or not path.is_file():
        return BusinessCalendar()
    return parse_workflow(path.read_text(encoding="utf-8"), path.name).calendar


_COMMANDS = {"report": _report, "rules": _rules, "run": _run, "db": _db, "jobs": _jobs, "quarantine": _quarantine,
             "settings": _show_settings, "agents": _staff, "departments": _staff}
