"""Backfill benchmark on PostgreSQL: `manage.py backfill NAME` against its baselines, for both
registered backfills (tasks.task.priority, tasks.task.workspace).

    python benchmarks/backfill.py [--tasks 1000000] [--small 100000] [--batch-size N]
                                  [--workers 2] [--rounds 3] [--only NAME]

For each backfill, seeds --tasks legacy rows (its column NULL, at its expand step) once into a
template database, then gives each variant its own copy (CREATE DATABASE ... TEMPLATE), so all
start from the same state: the command with --sleep 0 as a whole process with 1 worker (its
default) and with --workers; after each, a bare keyset loop of the same UPDATEs on as many
connections, over key ranges as wide as that command's median batch (the limit of batched work
on this machine for batches that hold their locks as long: no bookkeeping, timed inside its
process); one single UPDATE of the whole table; and, for priority, Django's bulk_update in
keyset batches of 1,000. All but bulk_update run --rounds times, interleaved, and are reported
by their median: on a shared 2-core host one variant alone varies by 20% from minute to minute.
Also reports the command's per-batch durations (p50/p99/max, from -v2) and its peak memory at
--small and --tasks rows. Writes docs/benchmarks.md.
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
            env_extra=env,
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


def measure(backfill: str, args) -> dict:
    """Every variant of one backfill, in interleaved rounds."""
    big, small = "taskproj_bench_tpl_big", "taskproj_bench_tpl_small"
    prepare_template(big, args.tasks, backfill)
    prepare_template(small, args.small, backfill)
    seconds: dict[str, list[float]] = {}
    runs: dict[str, list] = {"command 1": [], "command N": []}
    widths: dict[str, list[int]] = {}
    try:
        for _ in range(args.rounds):
            for workers, name, loop in (
                (1, "command 1", "keyset-loop 1"),
                (args.workers, "command N", "keyset-loop N"),
            ):
                measured = command(big, backfill, args.batch_size, workers)
                runs[name].append(measured)
                seconds.setdefault(name, []).append(measured[0])
                # The same UPDATEs over key ranges as wide as the command's median batch in this
                # round: batches that hold their row locks as long.
                keys = round(statistics.median(measured[3]))
                rows, took = variant(big, backfill, "keyset-loop", str(workers), str(keys))
                assert rows == args.tasks, (loop, rows)
                seconds.setdefault(loop, []).append(took)
                widths.setdefault(loop, []).append(keys)
            rows, took = variant(big, backfill, "single-update")
            assert rows == args.tasks, rows
            seconds.setdefault("single-update", []).append(took)
        if backfill == "tasks.task.priority":
            rows, took = variant(big, backfill, "bulk-update")
            assert rows == args.tasks, rows
            seconds["bulk-update"] = [took]
        small_peak = command(small, backfill, args.batch_size)[1]
    finally:
        for name in (big, small):
            drop_database(name)
    return {"seconds": seconds, "runs": runs, "small_peak": small_peak, "widths": widths}


def section(backfill: str, measured: dict, args) -> list[str]:
    """The table and notes of one backfill."""
    seconds, runs, workers = measured["seconds"], measured["runs"], args.workers
    median = {name: statistics.median(values) for name, values in seconds.items()}
    loop = {"command 1": "keyset-loop 1", "command N": "keyset-loop N"}
    batch_size = args.batch_size or BatchPolicy().batch_size

    def row(label: str, name: str) -> str:
        values = seconds[name]
        rate = args.tasks / median[name]
        spread = f" ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else ""
        limit = loop.get(name, name if name.startswith("keyset") else None)
        versus = f"**{median[limit] / median[name]:.2f}×**" if limit else "—"
        return (
            f"| {label} | {median[name]:.1f}{spread} | {rate:,.0f} | {versus} | "
            f"{median['single-update'] / median[name]:.2f}× |"
        )

    def per_round(name: str) -> str:
        pairs = zip(seconds[loop[name]], seconds[name], strict=True)
        return ", ".join(f"{limit / took:.2f}×" for limit, took in pairs)

    def sizing(sizes: list[int]) -> str:
        if args.batch_size:
            return f"batches of {batch_size:,}"
        return (
            f"adaptive, target {settings.BACKFILL_TARGET_BATCH_MS:g} ms: first {sizes[0]:,}, "
            f"median {statistics.median(sizes):,.0f} keys"
        )

    def batches(label: str, name: str) -> str:
        batch_ms = [ms for _, _, run_ms, _, _ in runs[name] for ms in run_ms]
        sizes = [size for _, _, _, run_sizes, _ in runs[name] for size in run_sizes]
        whole = [ms for ms, _ in batch_ms]
        locked = [ms for _, ms in batch_ms]
        return (
            f"- Batches, {label} ({sizing(sizes)}; {len(batch_ms)} in {len(runs[name])} runs): "
            f"row locks held p50 {statistics.median(locked):.0f} ms, "
            f"**p99 {percentile(locked, 0.99):.0f} ms** (target ≤ 100 ms), max {max(locked):.0f}"
            f" ms; the whole batch p50 {statistics.median(whole):.0f} ms, p99 "
            f"{percentile(whole, 0.99):.0f} ms."
        )

    def inside(name: str) -> str:
        """The run inside the process against the loop: the share the whole process adds."""
        run_seconds = statistics.median(measured_inside for *_, measured_inside in runs[name])
        fixed = median[name] - run_seconds
        return (
            f"{run_seconds:.1f} s inside the process ({median[loop[name]] / run_seconds:.2f}× the "
            f"loop), {fixed:.2f} s of start-up, checks and exit around it"
        )

    def width(loop: str) -> str:
        keys = measured["widths"][loop]
        return f"ranges of {min(keys):,}–{max(keys):,} keys (the command's median batch)"

    _, _, statement = BACKFILLS[backfill]
    peak = max(measured_peak for _, measured_peak, *_ in runs["command 1"])
    lines = [
        f"### `{backfill}`",
        "",
        "| variant | seconds | rows/s | ÷ bare loop, same connections | ÷ single UPDATE |",
        "|---|---:|---:|---:|---:|",
        row(f"`manage.py backfill {backfill} --sleep 0` (whole process, 1 worker)", "command 1"),
        row(
            f"`manage.py backfill {backfill} --sleep 0 --workers {workers}` (whole process)",
            "command N",
        ),
        row(f"bare keyset loop, 1 connection, {width('keyset-loop 1')}", "keyset-loop 1"),
        row(f"bare keyset loop, {workers} connections, {width('keyset-loop N')}", "keyset-loop N"),
        row(f"one `UPDATE … SET {statement} WHERE … IS NULL` (statement only)", "single-update"),
    ]
    if "bulk-update" in seconds:
        lines.append(row("`bulk_update` in keyset batches of 1,000 (figure only)", "bulk-update"))
    lines += [
        "",
        f"- Command ÷ bare loop on as many connections, round by round: 1 worker "
        f"{per_round('command 1')}; {workers} workers {per_round('command N')} "
        f"(target ≥ {TARGET}×). The run alone: 1 worker {inside('command 1')}; "
        f"{workers} workers {inside('command N')}.",
        batches("1 worker", "command 1"),
        batches(f"{workers} workers", "command N"),
        f"- Peak memory of the command: {peak / 1024:.0f} MiB at {args.tasks:,} rows, "
        f"{measured['small_peak'] / 1024:.0f} MiB at {args.small:,} rows: "
        f"**{peak / measured['small_peak']:.2f}×** (target within 1.10×).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the command's own default"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="the parallel variant's --workers (default: 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each fast variant (default: 3)"
    )
    parser.add_argument("--only", choices=list(BACKFILLS), help="measure one backfill only")
    args = parser.parse_args()

    names = [args.only] if args.only else list(BACKFILLS)
    lines = [
        "## Backfill (PostgreSQL)",
        "",
        f"Command: `python benchmarks/backfill.py --tasks {args.tasks} --small {args.small}"
        + (f" --batch-size {args.batch_size}" if args.batch_size else "")
        + f" --workers {args.workers} --rounds {args.rounds}"
        + (f" --only {args.only}" if args.only else "")
        + f"` ({datetime.now(UTC):%Y-%m-%d}, 2 cores). {args.tasks:,} legacy rows (the column "
        "NULL) at the backfill's expand step; every variant starts from its own copy of the same "
        f"template database. Seconds: the median of {args.rounds} interleaved runs (range in "
        f"brackets). Target: the command at least {TARGET}× the bare keyset loop on as many "
        "connections, in the same run.",
        "",
    ]
    for name in names:
        lines += section(name, measure(name, args), args)
    report = "\n".join(lines).rstrip()
    write_section("backfill", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
