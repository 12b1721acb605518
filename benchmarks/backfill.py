"""Backfill benchmark on PostgreSQL: `manage.py backfill_priority` against its baselines.

    python benchmarks/backfill.py [--tasks 1000000] [--small 100000] [--batch-size N]
                                  [--workers 2] [--rounds 3]

Seeds --tasks legacy rows (priority NULL, at the expand step) once into a template database,
then gives each variant its own copy (CREATE DATABASE ... TEMPLATE), so all start from the same
state: one single UPDATE (the physical limit of one connection), the command with --sleep 0 as
a whole process with 1 worker (its default) and with --workers, a bare keyset loop of the same
UPDATEs on 1 and on --workers connections (what the hardware allows batched work, without the
command's bookkeeping), and Django's bulk_update in keyset batches of 1,000. All but bulk_update
run --rounds times, interleaved, and are reported by their median: on a shared 2-core host one
variant alone varies by 20% from minute to minute. Also reports the command's per-batch
durations (p50/p99/max, from -v2) and its peak memory at --small and --tasks rows. Writes
docs/benchmarks.md.
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
    database_url,
    manage,
    run,
    scratch_database,
    seed_legacy,
    server_url,
    write_section,
)
from taskproj import settings  # noqa: E402  (the defaults the command runs with)


def prepare_template(name: str, tasks: int) -> None:
    """A database at the expand step holding ``tasks`` legacy rows, analysed and vacuumed."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    seed_legacy(database_url(name), tasks, step="0002_priority_expand")


@contextmanager
def copy_of(template: str, name: str):
    """A fresh copy of ``template`` named ``name``, dropped afterwards."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        # The copy is written to the WAL (~300 MB at 1,000,000 rows): without a checkpoint
        # here, the variant measured next would pay for flushing it, as a matter of timing.
        conn.execute("CHECKPOINT")
    try:
        yield {"DATABASE_URL": database_url(name)}
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def variant(template: str, *name: str) -> tuple[int, float]:
    with copy_of(template, "taskproj_bench_variant") as env:
        _, _, out = run([sys.executable, "benchmarks/backfill_variants.py", *name], env_extra=env)
    rows, seconds = out.split()
    return int(rows), float(seconds)


def command(
    template: str, batch_size: int | None, workers: int = 1
) -> tuple[float, int, list[float], list[int], str]:
    """Wall seconds, peak RSS (KiB), per-batch ms, batch sizes and output of the whole command
    process."""
    size = [] if batch_size is None else [f"--batch-size={batch_size}", "--target-batch-ms=0"]
    with copy_of(template, "taskproj_bench_command") as env:
        seconds, peak, out = run(
            manage(
                "backfill_priority",
                *size,
                "--sleep=0",
                f"--workers={workers}",
                "--no-progress",
                "-v2",
            ),
            env_extra=env,
        )
    assert "NULL rows left: 0" in out, out[-500:]
    batch_ms = [
        (float(whole), float(locked))
        for whole, locked in re.findall(r"rows in (\d+) ms \(row locks held (\d+) ms\)", out)
    ]
    sizes = [int(size.replace(",", "")) for size in re.findall(r"batch of ([\d,]+) keys", out)]
    return seconds, peak, batch_ms, sizes, out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0


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
    args = parser.parse_args()
    batch_size = args.batch_size or BatchPolicy().batch_size
    workers = args.workers

    big, small = "taskproj_bench_tpl_big", "taskproj_bench_tpl_small"
    prepare_template(big, args.tasks)
    prepare_template(small, args.small)
    seconds: dict[str, list[float]] = {}
    serial, parallel = [], []
    try:
        baselines = {
            "single-update": ["single-update"],
            "keyset-loop 1": ["keyset-loop", "1"],
            "keyset-loop N": ["keyset-loop", str(workers)],
        }
        for _ in range(args.rounds):
            for name, argv in baselines.items():
                rows, took = variant(big, *argv)
                assert rows == args.tasks, (name, rows)
                seconds.setdefault(name, []).append(took)
            serial.append(command(big, args.batch_size))
            parallel.append(command(big, args.batch_size, workers))
        bulk_rows, bulk_seconds = variant(big, "bulk-update")
        small_peak = command(small, args.batch_size)[1]
    finally:
        for name in (big, small):
            with scratch_database(name):
                pass

    assert bulk_rows == args.tasks, bulk_rows
    seconds["command 1"] = [took for took, *_ in serial]
    seconds["command N"] = [took for took, *_ in parallel]
    median = {name: statistics.median(values) for name, values in seconds.items()}
    single_rate = args.tasks / median["single-update"]
    bulk_rate = args.tasks / bulk_seconds

    def sizing(sizes: list[int]) -> str:
        if args.batch_size:
            return f"batches of {batch_size:,}"
        return (
            f"adaptive batches, target {settings.BACKFILL_TARGET_BATCH_MS:g} ms: first "
            f"{sizes[0]:,}, median {statistics.median(sizes):,.0f} keys"
        )

    def row(label: str, name: str) -> str:
        values = seconds.get(name, [bulk_seconds])
        rate = args.tasks / statistics.median(values)
        spread = f" ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else ""
        return (
            f"| {label} | {statistics.median(values):.1f}{spread} | {rate:,.0f} | "
            f"**{rate / single_rate:.2f}×** | **{rate / bulk_rate:.1f}×** |"
        )

    def batches(label: str, runs: list) -> str:
        batch_ms = [ms for _, _, run_ms, _, _ in runs for ms in run_ms]
        sizes = [size for _, _, _, run_sizes, _ in runs for size in run_sizes]
        whole = [ms for ms, _ in batch_ms]
        locked = [ms for _, ms in batch_ms]
        return (
            f"- Batches, {label} ({sizing(sizes)}, {len(batch_ms)} batches in {len(runs)} runs): "
            f"row locks held p50 {statistics.median(locked):.0f} ms, "
            f"**p99 {percentile(locked, 99):.0f} ms** (target ≤ 100 ms), max {max(locked):.0f} ms; "
            f"the whole batch (with its upper-key read before the UPDATE) p50 "
            f"{statistics.median(whole):.0f} ms, **p99 {percentile(whole, 99):.0f} ms**, "
            f"max {max(whole):.0f} ms."
        )

    def per_round(name: str) -> str:
        ratios = [
            single / took
            for single, took in zip(seconds["single-update"], seconds[name], strict=True)
        ]
        return ", ".join(f"{ratio:.2f}×" for ratio in ratios)

    cmd_peak = max(peak for _, peak, *_ in serial)
    lines = [
        "## Backfill (PostgreSQL)",
        "",
        f"Command: `python benchmarks/backfill.py --tasks {args.tasks} --small {args.small}"
        + (f" --batch-size {args.batch_size}" if args.batch_size else "")
        + f" --workers {workers} --rounds {args.rounds}` ({datetime.now(UTC):%Y-%m-%d}, "
        f"2 cores). {args.tasks:,} legacy rows (priority NULL) at the expand step; every variant "
        "starts from its own copy of the same template database, in one run of the script. "
        f"Seconds are the median of {args.rounds} interleaved runs (range in brackets), "
        "`bulk_update` ran once. Targets: the command at least 0.8× the single UPDATE and at "
        "least 20× `bulk_update`.",
        "",
        "| variant | seconds | rows/s | ÷ single UPDATE | ÷ `bulk_update` |",
        "|---|---:|---:|---:|---:|",
        row(
            "one `UPDATE … SET priority = <rule> WHERE priority IS NULL` (statement only)",
            "single-update",
        ),
        row(
            "`manage.py backfill_priority --sleep 0` (whole process, 1 worker: the default)",
            "command 1",
        ),
        row(
            f"`manage.py backfill_priority --sleep 0 --workers {workers}` (whole process)",
            "command N",
        ),
        row(
            "bare keyset loop, 4,000 keys per batch, 1 connection (no bookkeeping)", "keyset-loop 1"
        ),
        row(
            f"bare keyset loop, 4,000 keys per batch, {workers} connections (no bookkeeping)",
            "keyset-loop N",
        ),
        row("`bulk_update` in keyset batches of 1,000", "bulk-update"),
        "",
        f"- Command ÷ single UPDATE, run by run: 1 worker {per_round('command 1')}; "
        f"{workers} workers {per_round('command N')}.",
        batches("1 worker", serial),
        batches(f"{workers} workers", parallel),
        f"- Peak memory of the command: {cmd_peak / 1024:.0f} MiB at {args.tasks:,} rows, "
        f"{small_peak / 1024:.0f} MiB at {args.small:,} rows: **{cmd_peak / small_peak:.2f}×** "
        "(target within 1.10×).",
    ]
    report = "\n".join(lines)
    write_section("backfill", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
