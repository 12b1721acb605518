"""Where a backfill's time goes: each kind of statement `manage.py backfill NAME` sends, per batch.

    python benchmarks/backfill_statements.py [--tasks 1000000 10000000] [--only NAME]

For each size, seeds that many legacy rows (the column NULL, at its expand step) into a
template database, as benchmarks/backfill.py does, and on a copy of it runs the command once,
with 1 worker and --sleep 0, in a child process that times every statement on its connection
(Django's ``execute_wrapper``: from the call to the result, round trip included) and one round
trip of ``SELECT 1`` on the same connection afterwards (the median of 200). Reports, per kind
of statement, how many were sent, their time and its share of the whole process (whose
start-up and exit are the whole process's seconds less the run's). What the bare keyset loop
of benchmarks/backfill.py sends is the batch UPDATE and its commit; the rest is what the command
adds. Writes docs/benchmarks.md.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backfill import BACKFILLS, PRODUCTION, copy_of, prepare_template  # noqa: E402
from benchmarks.common import drop_database, run, write_section  # noqa: E402

# Each kind: how to recognise its SQL, and what it is for. First match wins.
KINDS = [
    ("batch UPDATE", r"^UPDATE \"{table}\"", "the batch itself (the bare loop's statement)"),
    (
        "batch opening",
        r"set_config\('lock_timeout'.*idle_in_transaction.*LIMIT",
        "the batch's timeouts and its last key (its keyset), one statement; its BEGIN goes with it",
    ),
    ("waiters check", r"FROM pg_locks", "sessions waiting on the batch's row locks, pre-commit"),
    (
        "checkpoint",
        r"^UPDATE \"backfills_backfillrun\"",
        "the run's checkpoint and heartbeat, in the batch's transaction",
    ),
    ("pending scan", r"COUNT\(\*\) AS \"rows\"", "the one scan for rows left behind, at the end"),
    ("statistics", r"^ANALYZE", "the filled column's statistics, at the end"),
    ("other", r"", "the run's start and end: its row, lease, estimate, checks"),
]


def child(name: str) -> None:
    """In the child process: run the command, timing each statement; print the figures."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskproj.settings")
    import django

    django.setup()
    from io import StringIO

    from django.core.management import call_command
    from django.db import connection

    from backfills.registry import get_definition

    table = get_definition(name).model_class()._meta.db_table
    patterns = [(kind, re.compile(pattern.format(table=table), re.S)) for kind, pattern, _ in KINDS]
    figures = {kind: [0, 0.0] for kind, _, _ in KINDS}

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            kind = next(kind for kind, pattern in patterns if pattern.search(sql))
            figures[kind][0] += 1
            figures[kind][1] += time.perf_counter() - started

    started = time.perf_counter()
    with connection.execute_wrapper(timed):
        call_command("backfill", name, "--sleep=0", "--no-progress", stdout=StringIO())
    inside = time.perf_counter() - started
    trips = []
    with connection.cursor() as cursor:
        for _ in range(200):
            begun = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            trips.append(time.perf_counter() - begun)
    result = {"inside": inside, "figures": figures, "round_trip": statistics.median(trips)}
    sys.stdout.write(json.dumps(result) + "\n")


def measure(name: str, tasks: int) -> dict:
    template = "taskproj_bench_statements_tpl"
    prepare_template(template, tasks, name)
    try:
        with copy_of(template, "taskproj_bench_statements") as env:
            seconds, _, out = run(
                [sys.executable, __file__, "--measure", name], env_extra={**env, **PRODUCTION}
            )
    finally:
        drop_database(template)
    return {**json.loads(out.strip().splitlines()[-1]), "whole": seconds}


def cells(result: dict) -> dict[str, str]:
    """Each row's cells at one size: sent, seconds, ms per batch, share of the whole process."""
    figures, whole = result["figures"], result["whole"]
    batches = figures["batch UPDATE"][0]

    def cell(sent: str, seconds: float) -> str:
        return f"{sent} | {seconds:.2f} | {seconds / batches * 1000:.2f} | {seconds / whole:.1%}"

    row = {kind: cell(f"{count:,}", seconds) for kind, (count, seconds) in figures.items()}
    row["between"] = cell("—", result["inside"] - sum(s for _, s in figures.values()))
    row["start-up"] = cell("—", whole - result["inside"])
    row["whole"] = (
        f"{batches:,} batches | **{whole:.2f}** | **{whole / batches * 1000:.2f}** | 100%"
    )
    return row


def report(name: str, sizes: list[int], results: list[dict]) -> str:
    labels = [(kind, f"{kind}: {purpose}") for kind, _, purpose in KINDS] + [
        ("between", "between statements in the run: Python, each BEGIN's wait, each COMMIT"),
        ("start-up", "start-up and exit of the process (Django, imports)"),
        ("whole", "**whole process**"),
    ]
    columns = [cells(result) for result in results]
    heads = " | ".join(
        f"{size:,}: sent | seconds | ms per batch | share of the process" for size in sizes
    )
    trips = ", ".join(
        f"{result['round_trip'] * 1000:.2f} ms at {size:,}"
        for size, result in zip(sizes, results, strict=True)
    )
    return "\n".join(
        [
            "## Backfill: where the time goes (PostgreSQL)",
            "",
            f"Command: `python benchmarks/backfill_statements.py --tasks "
            f"{' '.join(map(str, sizes))} --only {name}` ({datetime.now(UTC):%Y-%m-%d}, 2 "
            f"cores). `manage.py backfill {name} --sleep 0`, 1 worker, on that many legacy "
            "rows. Each statement timed from the call to its result on the command's "
            f"connection; one round trip there (`SELECT 1`, median of 200): {trips}.",
            "",
            f"| statement | {heads} |",
            "|---|" + "---:|---:|---:|---:|" * len(sizes),
            *(
                f"| {label} | {' | '.join(column[kind] for column in columns)} |"
                for kind, label in labels
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--only", choices=list(BACKFILLS), default="tasks.task.priority")
    parser.add_argument("--measure", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args.measure)
        return
    results = [measure(args.only, tasks) for tasks in args.tasks]
    text = report(args.only, args.tasks, results)
    write_section("backfill-statements", text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
