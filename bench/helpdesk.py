"""Email comparison: django-helpdesk's `get_email` and Kartabl draining the same Dovecot mailbox, in one run.

The mail is bench/email.py's figure 2, the same generator, count and seed (2,000 emails, 500 with
--quick): Persian and English, plain text and HTML alternatives, a few attachments, follow-ups. Each
side reads its own private Dovecot 2.3 (tests/servers/dovecot.py) on loopback IMAP without TLS,
filled with that mail as a plain-Maildir MDA leaves it, before the side starts. They run one after
the other, never at once. Figures:

1. Kartabl: bench/email.py's drain path (`drain()` on `build_runtime` with the email channel only,
   SQLite in a temp dir), timed from `runtime.start()` until every message is committed and flagged
   \\Seen on the server.                                                            [>= 1,000 emails/s]
2. django-helpdesk, installed with its own dependencies (DJANGO_HELPDESK, DJANGO) in a throwaway
   virtual environment in the temp dir, in a minimal Django project there (SQLite, the apps its
   install docs name that its mail import needs, teams off, Django's in-memory mail backend so its
   acknowledgements go nowhere). One Queue polls the mailbox: email_box_type 'imap', host 127.0.0.1,
   the server's port, SSL off, INBOX, check interval 0, logging off. Timed around one
   `call_command("get_email")` (its documented `manage.py get_email`) in a process that already ran
   `django.setup()`, as the gateway's figure starts after `build_runtime`: one pass fetches every
   message that SEARCH NOT DELETED finds, one at a time, stores a ticket or a follow-up for each,
   marks it \\Deleted and expunges at the end. The whole process's wall time is printed as a note.
   Afterwards what it stored is checked against the mail: one follow-up per Message-ID, ticket titles
   against subjects, comments against the text/plain part, attachments by name and size. [reference]
3. The ratio of the two rates.                                                          [reference]

The machine may be shared with other work: both figures move with it; read them as indicative.

Usage: python bench/helpdesk.py [--quick] [--json] [--venv DIR]
--venv reuses a virtual environment that already has django-helpdesk (e.g. one kept from an earlier
run); by default one is built in the temp dir from PyPI and removed afterwards.
Exit status: 0 the target met, 1 missed, 2 the benchmark could not run (no Dovecot, no PyPI).
"""

from __future__ import annotations

import os
import sys

# `python bench/helpdesk.py` puts bench/ first on sys.path, where bench/email.py would stand in for the
# standard library's `email` package. The repository root goes there instead; helpers are `bench.*`.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import email  # noqa: E402
import email.policy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.email import FULL, QUICK, BenchError, Milestones, SinkProcess, drain, gateway_settings, settle  # noqa: E402
from bench.email_workload import SUPPORT_ADDRESS, inbox  # noqa: E402
from bench.harness import migrate  # noqa: E402
from bench.ingest import Figure, log, publish  # noqa: E402
from gateway.compose import build_runtime  # noqa: E402
from gateway.domain import ChannelKind  # noqa: E402
from gateway.runtime import Runtime  # noqa: E402
from gateway.schema import tickets  # noqa: E402
from tests.servers.dovecot import DOVECOT, NOT_INSTALLED, Dovecot, DovecotError  # noqa: E402

#: What the throwaway environment installs: the 2.6 line runs on Python >= 3.10 and asks for Django >= 5.2,
#: whose 5.2 LTS line supports 3.10-3.13.
DJANGO_HELPDESK = "django-helpdesk>=2.6,<2.7"
DJANGO = "Django>=5.2,<5.3"
PIP_SECONDS = 900
#: Subjects as django-helpdesk stores them: it deletes these anywhere in the subject (helpdesk/email.py).
STRIPPED_SUBJECT_STRINGS = ("Re: ", "Fw: ", "RE: ", "FW: ", "Automatic reply: ")
_PERSIAN = re.compile("[\u0600-\u06ff]")


class SetupError(Exception):
    """django-helpdesk's virtual environment could not be built or its project set up."""


# -- django-helpdesk's side -----------------------------------------------------------------------

_SETTINGS = '''\
"""A minimal Django project for django-helpdesk's mail import; written by Kartabl's bench/helpdesk.py."""
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
SECRET_KEY = "throwaway-bench-project"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
SITE_ID = 1
INSTALLED_APPS = [
    "django.contrib.admin",  # the apps django-helpdesk's install docs ask for, less the optional teams
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "django.contrib.humanize",
    "rest_framework",
    "helpdesk",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
ROOT_URLCONF = "hdbench.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE / "helpdesk.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MEDIA_ROOT = BASE / "media"
STATIC_URL = "/static/"
LOGIN_URL = "/helpdesk/login/"
# Acknowledgements are composed as in production but kept in memory: nothing leaves the machine.
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEFAULT_FROM_EMAIL = "{support}"
HELPDESK_TEAMS_MODE_ENABLED = False
'''

_URLS = '''\
from django.contrib import admin
from django.urls import include, path

urlpatterns = [path("admin/", admin.site.urls), path("helpdesk/", include("helpdesk.urls"))]
'''

_MANAGE = '''\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hdbench.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
'''

# Runs in the throwaway environment: makes the queue, times one get_email, writes out what was stored.
_IMPORT = '''\
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hdbench.settings")
import django

django.setup()
from django.core import mail
from django.core.management import call_command
from helpdesk.models import FollowUp, Queue, Ticket

config = json.loads(Path(sys.argv[1]).read_text())
Queue.objects.create(**config["queue"])
began = time.perf_counter()
call_command("get_email")
seconds = time.perf_counter() - began
followups = [
    {"id": f.id, "ticket": f.ticket_id, "message_id": f.message_id, "comment": f.comment,
     "attachments": [{"filename": a.filename, "size": a.size, "stored": a.file.name,
                      "on_disk": a.file.size if a.file.storage.exists(a.file.name) else None}
                     for a in f.followupattachment_set.all()]}
    for f in FollowUp.objects.order_by("id").prefetch_related("followupattachment_set")]
stored = {
    "seconds": seconds,
    "versions": {name: version(name) for name in ("django-helpdesk", "Django")},
    "acknowledgements": len(getattr(mail, "outbox", [])),
    "tickets": [{"id": t.id, "title": t.title, "description": t.description, "submitter": t.submitter_email}
                for t in Ticket.objects.order_by("id")],
    "followups": followups,
}
Path(sys.argv[2]).write_text(json.dumps(stored, ensure_ascii=False))
'''


def build_environment(venv: Path) -> Path:
    """A virtual environment at `venv` with django-helpdesk and what it needs; its python."""
    steps = {
        f"python -m venv {venv}": [sys.executable, "-m", "venv", str(venv)],
        f"pip install '{DJANGO_HELPDESK}' '{DJANGO}'": [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--timeout", "30", "--retries", "2", DJANGO_HELPDESK, DJANGO],
    }
    for what, step in steps.items():
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=PIP_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError(f"`{what}` ran out of {PIP_SECONDS}s") from None
        if done.returncode != 0:
            # pip's warnings about this machine's unused local indexes say nothing about the failure
            said = [line for line in (done.stderr or done.stdout).splitlines() if "is ignored" not in line]
            raise SetupError(f"`{what}` exited with {done.returncode}:\n" + textwrap.indent("\n".join(said[-8:]), "  "))
    return venv / "bin" / "python"


def write_project(root: Path) -> None:
    """The Django project, manage.py and the import driver under `root`."""
    (root / "hdbench").mkdir(parents=True)
    (root / "hdbench" / "__init__.py").write_text("")
    (root / "hdbench" / "settings.py").write_text(_SETTINGS.replace("{support}", SUPPORT_ADDRESS))
    (root / "hdbench" / "urls.py").write_text(_URLS)
    (root / "manage.py").write_text(_MANAGE)
    (root / "import_mail.py").write_text(_IMPORT)


def manage(python: Path, root: Path, *args: str, timeout: float = 300) -> None:
    done = subprocess.run([str(python), "manage.py", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise SetupError(f"manage.py {' '.join(args)} exited with {done.returncode}:\n{tail}")


@dataclasses.dataclass
class HelpdeskImport:
    """What one `get_email` did: its time, what it stored, and what Dovecot still holds."""

    seconds: float
    process_seconds: float
    stored: dict
    left_in_mailbox: int


def run_helpdesk(python: Path, root: Path, workdir: Path, mail: list[bytes]) -> HelpdeskImport:
    """Fill a fresh Dovecot with `mail`, point a Queue at it, time one `get_email` pass."""
    dovecot = Dovecot(workdir / "dovecot-helpdesk", tls=False, idle_notify=True)
    try:
        dovecot.start()
        for raw in mail:
            dovecot.deliver(raw)
        queue = {
            "title": "Support", "slug": "support", "email_address": SUPPORT_ADDRESS, "allow_email_submission": True,
            "email_box_type": "imap", "email_box_host": dovecot.host, "email_box_port": dovecot.port,
            "email_box_ssl": False, "email_box_user": dovecot.user, "email_box_pass": dovecot.password,
            "email_box_imap_folder": "INBOX", "email_box_interval": 0, "logging_type": "none",
        }
        config, out = root / "queue.json", root / "stored.json"
        config.write_text(json.dumps({"queue": queue}))
        began = time.perf_counter()
        done = subprocess.run([str(python), "import_mail.py", str(config), str(out)], cwd=root, capture_output=True,
                              text=True, timeout=120 + len(mail) / 2, check=False)
        process_seconds = time.perf_counter() - began
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise BenchError(f"django-helpdesk's import exited with {done.returncode}:\n{tail}")
        stored = json.loads(out.read_text())
        left = len(dovecot.messages())
    except subprocess.TimeoutExpired:
        raise BenchError("django-helpdesk's import did not finish in time") from None
    finally:
        dovecot.close()
    return HelpdeskImport(stored["seconds"], process_seconds, stored, left)


# -- what django-helpdesk stored, against the mail ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sent:
    """What a message carried, read back with the standard library: the reference for both sides."""

    message_id: str
    subject: str
    text: str
    files: tuple[tuple[str, int], ...]
    has_html: bool

    @classmethod
    def read(cls, raw: bytes) -> Sent:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
        files = tuple((part.get_filename(), len(part.get_content())) for part in msg.iter_attachments())
        return cls(msg["Message-ID"].strip(), str(msg["Subject"]), plain.get_content() if plain else "",
                   files, html is not None)

    @property
    def persian(self) -> bool:
        return bool(_PERSIAN.search(self.subject + self.text))


def _flat(text: str) -> str:
    return " ".join(text.split())


def check_import(stored: dict, mail: list[bytes]) -> tuple[list[str], dict[str, int]]:
    """Notes on what django-helpdesk kept of `mail`, and the counts behind them."""
    sent = {s.message_id: s for s in map(Sent.read, mail)}
    followups = stored["followups"]
    by_id = {f["message_id"]: f for f in followups if f["message_id"]}
    missing = [mid for mid in sent if mid not in by_id]
    first = {}
    for f in followups:
        first.setdefault(f["ticket"], f)

    titles_wrong: list[tuple[str, str]] = []
    for ticket in stored["tickets"]:
        origin = sent.get((first.get(ticket["id"]) or {}).get("message_id"))
        if origin is None:
            continue
        expected = origin.subject
        for affix in STRIPPED_SUBJECT_STRINGS:
            expected = expected.replace(affix, "")
        if ticket["title"] != expected.strip():
            titles_wrong.append((expected.strip(), ticket["title"]))

    bodies_wrong: list[tuple[str, str]] = []
    files_expected = files_kept = html_kept = 0
    files_wrong: list[str] = []
    for mid, s in sent.items():
        f = by_id.get(mid)
        if f is None:
            continue
        if _flat(f["comment"]) != _flat(s.text):
            bodies_wrong.append((s.text, f["comment"]))
        kept = {}
        for a in f["attachments"]:
            if a["filename"] == "email_html_body.txt":
                html_kept += 1
                continue
            kept[re.sub(r"^part-\d+_", "", a["filename"])] = a
        for name, size in s.files:
            files_expected += 1
            a = kept.get(name)
            if a is not None and a["size"] == size and a["on_disk"] == size:
                files_kept += 1
            else:
                files_wrong.append(f"{name!r} ({size:,} bytes) stored as "
                                   + (f"{a['filename']!r}, {a['size']} bytes, {a['on_disk']} on disk" if a else
                                      f"nothing (the message kept {sorted(kept) or 'no files'})"))
    replacement = sum("\ufffd" in f["comment"] for f in followups) + sum("\ufffd" in t["title"] for t in stored["tickets"])
    counts = {"followups": len(followups), "tickets": len(stored["tickets"]), "missing": len(missing),
              "titles_wrong": len(titles_wrong), "bodies_wrong": len(bodies_wrong), "files_expected": files_expected,
              "files_kept": files_kept, "replacement": replacement}
    persian = sum(s.persian for s in sent.values())
    html = sum(s.has_html for s in sent.values())
    notes = [
        f"stored {len(followups):,} follow-ups on {len(stored['tickets']):,} tickets for {len(mail):,} emails;"
        f" {len(missing):,} emails left without a follow-up" + (f" (e.g. {missing[0]})" if missing else ""),
        f"checked against the mail: {len(stored['tickets']) - len(titles_wrong):,} of {len(stored['tickets']):,} ticket"
        f" titles equal the subject (less the 'Re: ' it strips); {len(sent) - len(missing) - len(bodies_wrong):,} of"
        f" {len(sent) - len(missing):,} follow-up comments equal the text/plain part (whitespace aside);"
        f" {replacement} titles or comments hold U+FFFD; {persian:,} of the emails are Persian",
        f"attachments: {files_kept} of {files_expected} kept with their name and size; {html_kept:,} of {html:,} HTML"
        " alternatives kept as email_html_body.txt",
    ]
    if titles_wrong:
        notes.append(f"e.g. subject {titles_wrong[0][0]!r} became title {titles_wrong[0][1]!r}")
    if bodies_wrong:
        want, got = bodies_wrong[0]
        notes.append(f"e.g. a text part beginning {want[:60]!r} became a comment beginning {got[:60]!r}")
    if files_wrong:
        notes.append("e.g. attachment " + files_wrong[0])
    return notes, counts


# -- Kartabl's side -------------------------------------------------------------------------------


async def run_kartabl(workdir: Path, mail: list[bytes]) -> tuple[Figure, int]:
    """bench/email.py's figure 2 on a fresh Dovecot holding `mail`; the figure and the tickets it opened."""
    sink = SinkProcess()
    dovecot = Dovecot(workdir / "dovecot", tls=False, idle_notify=True)
    runtime: Runtime | None = None
    try:
        await sink.start()
        await asyncio.to_thread(dovecot.start)
        for raw in mail:
            dovecot.deliver(raw)
        settings = gateway_settings(workdir, dovecot, sink)
        await migrate(settings.database.url)
        runtime = build_runtime(settings)
        marks = Milestones()
        marks.install(runtime)
        fig, *_ = await drain(runtime, marks, dovecot, mail)
        backlog = await settle(runtime)
        async with runtime.db.read() as conn:
            opened = (await conn.execute(sa.select(sa.func.count()).select_from(tickets)
                                         .where(tickets.c.channel == ChannelKind.EMAIL))).scalar_one()
    finally:
        if runtime is not None and runtime.running:
            await runtime.stop()
        await asyncio.to_thread(dovecot.close)
        await sink.stop()
    fig.label = f"1. Kartabl: drain {len(mail):,} emails"
    fig.notes.append(f"{opened:,} tickets opened; the workflow jobs of the drained mail were all done {backlog:.1f}s"
                     " after it (not in the figure; django-helpdesk has none)")
    return fig, opened


# -- the run ----------------------------------------------------------------------------------------


def run(workdir: Path, count: int, venv: Path | None) -> list[Figure]:
    began = time.perf_counter()  # the environment first: without PyPI there is nothing to compare
    if venv is None:
        log(f"building django-helpdesk's virtual environment ({DJANGO_HELPDESK}, {DJANGO}) from PyPI")
        python = build_environment(workdir / "venv")
    else:
        python = venv / "bin" / "python"
    project = workdir / "project"
    write_project(project)
    manage(python, project, "migrate", "--no-input")
    log(f"django-helpdesk environment and database ready in {time.perf_counter() - began:.0f}s (not measured)")
    began = time.perf_counter()
    mail = inbox(count, tag="drain", seed=2)  # bench/email.py's figure 2
    log(f"built {len(mail):,} emails in {time.perf_counter() - began:.1f}s (not measured)")

    log(f"[1] Kartabl draining {len(mail):,} emails")
    kartabl, opened = asyncio.run(run_kartabl(workdir / "kartabl", mail))

    log(f"[2] django-helpdesk's get_email on the same {len(mail):,} emails")
    result = run_helpdesk(python, project, workdir, mail)
    notes, counts = check_import(result.stored, mail)
    rate = len(mail) / result.seconds
    versions = result.stored["versions"]
    helpdesk = Figure(f"2. django-helpdesk {versions['django-helpdesk']}: get_email", rate, "emails/s")
    helpdesk.notes += [
        f"django-helpdesk {versions['django-helpdesk']} on Django {versions['Django']}, SQLite; one get_email pass"
        f" took {result.seconds:.2f}s ({result.seconds / len(mail) * 1000:.1f} ms per email); the whole process,"
        f" Python and django.setup() included, {result.process_seconds:.2f}s",
        f"it fetches one message per round trip and deletes what it imported: {result.left_in_mailbox:,} messages"
        f" left in the mailbox afterwards; {result.stored['acknowledgements']:,} acknowledgements composed for the"
        " in-memory mail backend (Kartabl's run has acknowledgements off, as in bench/email.py)",
        f"threading: {counts['tickets']:,} tickets here, {opened:,} in Kartabl (django-helpdesk threads by In-Reply-To"
        " matching a stored follow-up, or a [queue-id] in the subject)",
        *notes,
    ]
    if counts["followups"] != len(mail) or counts["missing"]:
        helpdesk.notes.insert(0, f"MISMATCH: {counts['followups']:,} follow-ups for {len(mail):,} emails")
    ratio = Figure("3. Kartabl / django-helpdesk", kartabl.value / rate if kartabl.value else None, "ratio")
    ratio.notes.append("emails/s over emails/s, same mail, same Dovecot setup, one after the other on this machine")
    return [kartabl, helpdesk, ratio]


def environment() -> str:
    busy = psutil.cpu_percent(interval=0.5)
    dovecot = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False).stdout.split()
    return (f"Kartabl vs django-helpdesk email import: python {platform.python_version()},"
            f" Dovecot {dovecot[0] if dovecot else 'unknown'}; {os.cpu_count()} CPUs ({busy:.0f}% busy before start),"
            f" shared with other work: figures are indicative; temp dir {tempfile.gettempdir()}")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="See the module docstring for what each figure measures.")
    parser.add_argument("--quick", action="store_true", help="bench/email.py's --quick count: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--venv", type=Path, help="a virtual environment that already has django-helpdesk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    count = (QUICK if args.quick else FULL).drained
    if not DOVECOT.exists():
        log(f"bench: {NOT_INSTALLED}")
        return 2
    if args.venv is not None and not (args.venv / "bin" / "python").exists():
        log(f"bench: no virtual environment at {args.venv}")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    header = environment()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="kartabl-bench-helpdesk-") as tmp:
            figures = run(Path(tmp), count, args.venv)
    except SetupError as exc:
        log(f"bench: could not set up django-helpdesk: {exc}")
        return 2
    except (BenchError, DovecotError) as exc:
        log(f"bench: {exc}")
        return 2
    header += f"\n{'Quick' if args.quick else 'Full'} run in {time.monotonic() - began:.0f}s, the environment's build included."
    return publish(figures, header, quick=args.quick, as_json=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
