"""Backfill benchmark on PostgreSQL: `manage.py backfill NAME` against its baselines, and how
its cost per row grows with the table.

    python benchmarks/backfill.py [--tasks 1000000 10000000] [--rounds 3 1] [--batch-size N]
                                  [--workers 2] [--only tasks.task.priority]

For each size, seeds that many legacy rows (the column NULL, at its expand step) once into a
template database, then gives each variant its own copy (CREATE DATABASE ... TEMPLATE), so all
start from the same state: the command with --sleep 0 as a whole process with 1 worker (its
default) and with --workers; after each, a bare keyset loop of the same UPDATEs on as many
connections, over key ranges as wide as that command's median batch (the limit of batched work
on this machine for batches that hold their locks as long: no bookkeeping, timed inside its
process); at the smallest size only, one single UPDATE of the whole table and, for priority,
Django's bulk_update in keyset batches of 1,000 (figures). Each variant runs that size's
--rounds times, interleaved, and is reported by its median: on a shared 2-core host one variant
alone varies by 20% from minute to minute. Reports time per row at each size and its growth,
the command's per-batch row-lock times (p50/p99/max, from -v2) and its peak memory at each size.
Writes docs/benchmarks.md.
"""

import argparse
import re
import statistics
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backfills.engine import BatchPolicy  # noqa: E402
from benchmarks.common import (  # noqa: E402
    create_database,
    drop_database,
    manage,
    run,
    seed_legacy,
    server_url,
    write_section,
)
from migration_safety.rehearsal import percentile  # noqa: E402
from taskproj import settings  # noqa: E402  (the defaults the command runs with)

# Each backfill: the rollout whose legacy rows it fills, its expand step, and what the
# single UPDATE sets.
BACKFILLS = {
    "tasks.task.priority": ("priority", "0002_priority_expand", "priority = <rule>"),
    "tasks.task.workspace": (
        "workspace",
        "0007_workspace_expand",
        "workspace_id = COALESCE((SELECT workspace_id FROM tasks_category …), <default>)",
    ),
}
TARGET = 0.9  # the command at least this share of the bare loop on as many connections
GROWTH = 1.15  # its time per row at the largest size within this of the smallest
# The command runs as in production: with DEBUG on, Django keeps each connection's last 9,000
# queries, a log a long run fills (a few MiB per connection), and its peak memory would grow
# with the table up to that bound.
PRODUCTION = {"DEBUG": "false", "SECRET_KEY": "benchmark-only-" + "x" * 50}


def prepare_template(name: str, tasks: int, backfill: str) -> None:
    """A database at the backfill's expand step holding ``tasks`` legacy rows, vacuumed."""
    rollout, step, _ = BACKFILLS[backfill]
    seed_legacy(create_database(name), tasks, rollout=rollout, step=step)


@contextmanager
def copy_of(template: str, name: str):
    """A fresh copy of ``template`` named ``name``, dropped afterwards."""
    url = create_database(name, template=template)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        # The copy is written to the WAL (~300 MB at 1,000,000 rows): without a checkpoint
        # here, the variant measured next would pay for flushing it, as a matter of timing.
        conn.execute("CHECKPOINT")
    try:
        yield {"DATABASE_URL": url}
    finally:
        drop_database(name)


def variant(template: str, backfill: str, *name: str) -> tuple[int, float]:
    with copy_of(template, "taskproj_bench_variant") as env:
        _, _, out = run(
            [sys.executable, "benchmarks/backfill_variants.py", backfill, *name], env_extra=env
        )
    rows, seconds = out.split()
    return int(rows), float(seconds)


def command(
    template: str, backfill: str, batch_size: int | None, workers: int = 1
) -> tuple[float, int, list[tuple[float, float]], list[int], float]:
    """Wall seconds, peak RSS (KiB), per-batch (whole, row locks held) ms, batch sizes of the
    whole command process, and the seconds of the run inside it."""
    size = [] if batch_size is None else [f"--batch-size={batch_size}", "--target-batch-ms=0"]
    with copy_of(template, "taskproj_bench_command") as env:
        seconds, peak, out = run(
            manage(
                "backfill",
                backfill,
                *size,
                "--sleep=0",
                f"--workers={workers}",
                "--no-progress",
                "-v2",
            ),
            env_extra={**env, **PRODUCTION},
        )
    assert "NULL rows left: 0" in out, out[-500:]
    # The command's own time for the run (from opening it to its summary): what the whole
    # process adds beyond it is start-up, the checks before the run and the exit.
    inside = float(re.search(r"batches, ([\d.]+) s \(", out).group(1))
    batch_ms = [
        (float(whole), float(locked))
        for whole, locked in re.findall(r"rows in (\d+) ms \(row locks held (\d+) ms\)", out)
    ]
    sizes = [int(size.replace(",", "")) for size in re.findall(r"batch of ([\d,]+) keys", out)]
    return seconds, peak, batch_ms, sizes, inside


def measure(backfill: str, tasks: int, rounds: int, *, baselines: bool, args) -> dict:
    """Every variant of one backfill at one size, in interleaved rounds; the single UPDATE and
    ``bulk_update`` only with ``baselines`` (the smallest size)."""
    template = "taskproj_bench_tpl"
    prepare_template(template, tasks, backfill)
    seconds: dict[str, list[float]] = {}
    runs: dict[str, list] = {"command 1": [], "command N": []}
    widths: dict[str, list[int]] = {}
    try:
        for _ in range(rounds):
            for workers, name, loop in (
                (1, "command 1", "keyset-loop 1"),
                (args.workers, "command N", "keyset-loop N"),
            ):
                measured = command(template, backfill, args.batch_size, workers)
                runs[name].append(measured)
                seconds.setdefault(name, []).append(measured[0])
                # The same UPDATEs over key ranges as wide as the command's median batch in this
                # round: batches that hold their row locks as long.
                keys = round(statistics.median(measured[3]))
                rows, took = variant(template, backfill, "keyset-loop", str(workers), str(keys))
                assert rows == tasks, (loop, rows)
                seconds.setdefault(loop, []).append(took)
                widths.setdefault(loop, []).append(keys)
            if baselines:
                rows, took = variant(template, backfill, "single-update")
                assert rows == tasks, rows
                seconds.setdefault("single-update", []).append(took)
        if baselines and backfill == "tasks.task.priority":
            rows, took = variant(template, backfill, "bulk-update")
            assert rows == tasks, rows
            seconds["bulk-update"] = [took]
    finally:
        drop_database(template)
    return {"tasks": tasks, "seconds": seconds, "runs": runs, "widths": widths}


LOOP = {"command 1": "keyset-loop 1", "command N": "keyset-loop N"}


def section(backfill: str, sizes: list[dict], args) -> list[str]:
    """The table and notes of one backfill, every size side by side."""
    workers = args.workers
    batch_size = args.batch_size or BatchPolicy().batch_size
    small, large = sizes[0], sizes[-1]
    median = [
        {name: statistics.median(values) for name, values in size["seconds"].items()}
        for size in sizes
    ]

    def per_row(index: int, name: str) -> float:
        return median[index][name] / sizes[index]["tasks"] * 1e6

    def row(label: str, name: str) -> str:
        cells = []
        for index, size in enumerate(sizes):
            if name not in median[index]:
                cells.append("— | —")
                continue
            values = size["seconds"][name]
            spread = f" ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else ""
            limit = LOOP.get(name, name if name.startswith("keyset") else None)
            versus = f"**{median[index][limit] / median[index][name]:.2f}×**" if limit else "—"
            cells.append(
                f"{median[index][name]:.1f}{spread} s, {per_row(index, name):.2f} µs/row | {versus}"
            )
        growth = "—"
        if len(sizes) > 1 and name in median[-1] and name in median[0]:
            growth = f"**{per_row(-1, name) / per_row(0, name):.2f}×**"
        return f"| {label} | {' | '.join(cells)} | {growth} |"

    def sizing(batch_sizes: list[int]) -> str:
        if args.batch_size:
            return f"batches of {batch_size:,}"
        return (
            f"adaptive, target {settings.BACKFILL_TARGET_BATCH_MS:g} ms: first "
            f"{batch_sizes[0]:,}, median {statistics.median(batch_sizes):,.0f} keys"
        )

    def batches(size: dict, label: str, name: str) -> str:
        batch_ms = [ms for _, _, run_ms, _, _ in size["runs"][name] for ms in run_ms]
        batch_sizes = [n for _, _, _, run_sizes, _ in size["runs"][name] for n in run_sizes]
        locked = [ms for _, ms in batch_ms]
        return (
            f"- {size['tasks']:,} rows, {label} ({sizing(batch_sizes)}; {len(batch_ms)} batches "
            f"in {len(size['runs'][name])} runs): row locks held p50 "
            f"{statistics.median(locked):.0f} ms, **p99 {percentile(locked, 0.99):.0f} ms** "
            f"(target ≤ 100 ms), max {max(locked):.0f} ms."
        )

    def peak(size: dict, name: str) -> int:
        return max(measured_peak for _, measured_peak, *_ in size["runs"][name])

    _, _, statement = BACKFILLS[backfill]
    heads = " | ".join(f"{size['tasks']:,}: seconds | ÷ bare loop" for size in sizes)
    lines = [
        f"### `{backfill}`",
        "",
        f"| variant | {heads} | time per row, {large['tasks']:,} ÷ {small['tasks']:,} |",
        "|---|" + "---:|---:|" * len(sizes) + "---:|",
        row(f"`manage.py backfill {backfill} --sleep 0` (whole process, 1 worker)", "command 1"),
        row(
            f"`manage.py backfill {backfill} --sleep 0 --workers {workers}` (whole process)",
            "command N",
        ),
        row("bare keyset loop, 1 connection, the command's median batch", "keyset-loop 1"),
        row(
            f"bare keyset loop, {workers} connections, the command's median batch", "keyset-loop N"
        ),
        row(f"one `UPDATE … SET {statement} WHERE … IS NULL` (figure only)", "single-update"),
    ]
    if "bulk-update" in median[0]:
        lines.append(row("`bulk_update` in keyset batches of 1,000 (figure only)", "bulk-update"))
    lines.append("")
    for size in sizes:
        lines += [
            batches(size, "1 worker", "command 1"),
            batches(size, f"{workers} workers", "command N"),
        ]

    def alone(index: int, label: str, name: str) -> str:
        """The run alone (opening it to its summary) against the bare loop: the process's
        start-up, its checks before the run and its exit cost the same at every size, and
        only a larger table amortises them."""
        inside = statistics.median(measured[4] for measured in sizes[index]["runs"][name])
        outside = median[index][name] - inside
        versus = median[index][LOOP[name]] / inside
        return f"{label} **{versus:.2f}×** ({outside:.1f} s outside the run)"

    lines.append(
        "- The run alone (from opening it to its summary) ÷ the bare loop: "
        + "; ".join(
            f"{size['tasks']:,} rows: {alone(index, '1 worker', 'command 1')}, "
            f"{alone(index, f'{workers} workers', 'command N')}"
            for index, size in enumerate(sizes)
        )
        + "."
    )
    if len(sizes) > 1:
        ratios = ", ".join(
            f"{label} {peak(large, name) / 1024:.0f} MiB against {peak(small, name) / 1024:.0f} "
            f"MiB (**{peak(large, name) / peak(small, name):.2f}×**)"
            for label, name in (("1 worker", "command 1"), (f"{workers} workers", "command N"))
        )
        lines.append(
            f"- Peak memory of the command at {large['tasks']:,} rows against "
            f"{small['tasks']:,}: {ratios} (target within 1.10×)."
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--rounds",
        type=int,
        nargs="+",
        default=[3, 1],
        help="runs of each variant at each size, in --tasks order (default: 3 1)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the command's own default"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="the parallel variant's --workers (default: 2)"
    )
    parser.add_argument(
        "--only", choices=list(BACKFILLS), default="tasks.task.priority", help="the backfill"
    )
    args = parser.parse_args()
    if len(args.rounds) != len(args.tasks):
        parser.error("give one --rounds per --tasks")

    sizes = [
        measure(args.only, tasks, rounds, baselines=index == 0, args=args)
        for index, (tasks, rounds) in enumerate(zip(args.tasks, args.rounds, strict=True))
    ]
    lines = [
        "## Backfill (PostgreSQL)",
        "",
        f"Command: `python benchmarks/backfill.py --tasks {' '.join(map(str, args.tasks))} "
        f"--rounds {' '.join(map(str, args.rounds))}"
        + (f" --batch-size {args.batch_size}" if args.batch_size else "")
        + f" --workers {args.workers} --only {args.only}` ({datetime.now(UTC):%Y-%m-%d}, 2 "
        "cores). Legacy rows (the column NULL) at the backfill's expand step; every variant "
        "starts from its own copy of the same template database. Seconds: the median of the "
        "interleaved runs at that size (range in brackets). Targets: the command at least "
        f"{TARGET}× the bare keyset loop on as many connections in the same run, its time per "
        f"row at the largest size within {GROWTH}× of the smallest, its batches' row locks "
        "held p99 ≤ 100 ms, its peak memory flat.",
        "",
        *section(args.only, sizes, args),
    ]
    report = "\n".join(lines).rstrip()
    write_section("backfill", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
