"""Every benchmark in one run, one table: each figure, its target and whether it was met.

Runs each bench script under bench/ as its own process with `--json` (one at a time: they share the
machine's two cores) and prints one table of every figure, its target, the result and the script it came
from; the comparisons each script measures in the same run (the raw sqlite3 floor for ingest, the parse
and compose reference figures for email, django-helpdesk importing the same Dovecot mailbox in a virtual
environment of its own that bench/helpdesk.py builds from PyPI) are rows of the table like the rest.

Usage: python bench/run_all.py [--quick] [--skip-postgres] [--only NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: (script, extra arguments, takes --skip-postgres), in the order they run.
SCRIPTS = (
    ("ingest.py", (), True),
    ("email.py", (), False),
    ("helpdesk.py", (), False),
    ("sms.py", (), True),
    ("telegram.py", (), False),
    ("report.py", (), True),
    ("growth.py", (), True),
    ("crash.py", (), False),
    ("outage.py", (), False),
)


def run(script: str, extra: tuple[str, ...], *, quick: bool, skip_postgres: bool) -> tuple[list[dict], str | None, float]:
    """The script's figures, an error (when it printed none), and its run time in seconds."""
    args = [sys.executable, str(BENCH / script), "--json", *extra]
    if quick:
        args.append("--quick")
    if skip_postgres:
        args.append("--skip-postgres")
    began = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, cwd=BENCH.parent, check=False)
    took = time.monotonic() - began
    try:
        figures = json.loads(done.stdout)["figures"]
    except (json.JSONDecodeError, KeyError, TypeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return [], f"exit {done.returncode}: {' | '.join(tail) or 'no output'}", took
    return figures, None, took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's smoke run")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite figures only, where a script has both")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these scripts only (e.g. sms telegram)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    chosen = [s for s in SCRIPTS if not args.only or s[0].removesuffix(".py") in args.only]
    rows: list[dict] = []
    failures = 0
    began = time.monotonic()
    for script, extra, has_pg in chosen:
        if not (BENCH / script).exists():
            continue
        print(f"run_all: {script} ...", file=sys.stderr, flush=True)
        figures, error, took = run(script, extra, quick=args.quick, skip_postgres=args.skip_postgres and has_pg)
        if error:
            failures += 1
            rows.append({"script": script, "label": "(the script failed)", "value": None, "unit": "",
                         "target": "", "result": "FAIL", "notes": [error]})
        for figure in figures:
            rows.append({"script": script, **figure})
            failures += figure.get("result") == "MISS"
        print(f"run_all: {script} done in {took:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"mode": "quick" if args.quick else "full", "figures": rows}, ensure_ascii=False, indent=2))
    else:
        print(_table(rows, f"Kartabl benchmarks ({'quick' if args.quick else 'full'} run in "
                           f"{time.monotonic() - began:.0f} s, {os.cpu_count()} CPUs)"))
    return 1 if failures else 0


def _table(rows: list[dict], header: str) -> str:
    def measured(row: dict) -> str:
        value = row.get("value")
        if value is None:
            return "skipped"
        return f"{value:,.1f} {row.get('unit', '')}".strip() if isinstance(value, float) else f"{value} {row.get('unit', '')}"

    label_w = max([len(r["label"]) for r in rows] + [6])
    lines = [header, "", f"{'Script':<12}  {'Figure':<{label_w}}  {'Measured':>16}  {'Target':<16}  Result",
             f"{'-' * 12}  {'-' * label_w}  {'-' * 16}  {'-' * 16}  ------"]
    for r in rows:
        lines.append(f"{r['script']:<12}  {r['label']:<{label_w}}  {measured(r):>16}  {r.get('target') or '':<16}  "
                     f"{r.get('result') or ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
