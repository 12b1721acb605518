"""Adaptive batch size on PostgreSQL: does it converge, and does it hold the target under load?

    python benchmarks/adaptive.py [--tasks 1000000] [--target-ms 100]

Seeds --tasks legacy rows, then runs `manage.py backfill_priority -v2 --target-batch-ms T`
twice on the same table, starting from the default batch size:
- quiet: nothing else runs;
- loaded: another process loads the database throughout — two connections scanning and
  aggregating a 2,000,000-row ballast table, one updating random tasks — as the application's
  other work would.
Between the two runs every priority is set back to NULL and the table vacuumed. From each run's
per-batch lines it reports the batch size over time, when it converged, and the percentiles of
how long batches held their row locks (UPDATE to commit) against the target (p99 must stay within
1.5x). Writes docs/benchmarks.md.
"""

import argparse
import math
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    ROOT,
    manage,
    run,
    scratch_database,
    seed_legacy,
    write_section,
)

# The duration the sizer aims at: how long the batch held its row locks (UPDATE to commit).
BATCH_LINE = re.compile(
    r"batch of ([\d,]+) keys up to \S+: ([\d,]+) rows in \d+ ms \(row locks held (\d+) ms\)"
)
LOAD = """
import random, sys, threading, time
import psycopg

url, max_id = sys.argv[1], int(sys.argv[2])

def scans():
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute("SELECT count(*), sum(n), max(payload) FROM ballast WHERE n % 7 = 3")

def writes():
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute("UPDATE tasks_task SET title = title || '' WHERE id = %s",
                         [random.randint(1, max_id)])
            time.sleep(0.002)

for target in (scans, scans, writes):
    threading.Thread(target=target, daemon=True).start()
while True:
    time.sleep(1)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def backfill(url: str, target_ms: float) -> tuple[list[tuple[int, int, int]], float]:
    """Run the command; return (batch size, rows, ms) per batch and the seconds it took."""
    seconds, _, out = run(
        manage("backfill_priority", "--no-progress", "-v2", f"--target-batch-ms={target_ms:g}"),
        env_extra={"DATABASE_URL": url},
    )
    batches = [
        (int(size.replace(",", "")), int(rows.replace(",", "")), int(ms))
        for size, rows, ms in BATCH_LINE.findall(out)
    ]
    return batches, seconds


def summary(name: str, batches: list[tuple[int, int, int]], seconds: float, target: float) -> dict:
    sizes = [size for size, _, _ in batches]
    durations = [ms for _, _, ms in batches]
    settled = sorted(sizes[len(sizes) // 2 :])[len(sizes[len(sizes) // 2 :]) // 2]
    converged = next(
        (i + 1 for i, size in enumerate(sizes) if abs(size - settled) <= 0.2 * settled), None
    )
    after = durations[converged:] if converged else durations
    return {
        "name": name,
        "batches": len(batches),
        "seconds": seconds,
        "rows_per_second": sum(rows for _, rows, _ in batches) / seconds,
        "trajectory": [sizes[i - 1] for i in (1, 5, 10, 20, 50) if i <= len(sizes)] + sizes[-1:],
        "settled": settled,
        "converged_at": converged,
        "p50": percentile(durations, 0.5),
        "p99": percentile(durations, 0.99),
        "p99_after": percentile(after, 0.99) if after else 0,
        "max": max(durations),
        "within": sum(1 for ms in durations if ms <= 1.5 * target) / len(durations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--target-ms", type=float, default=100)
    args = parser.parse_args()

    with scratch_database("taskproj_bench_adaptive") as url:
        env = {"DATABASE_URL": url}
        seed_legacy(url, args.tasks)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE ballast AS SELECT n, md5(n::text) AS payload "
                "FROM generate_series(1, 2000000) n"
            )
            conn.execute("VACUUM ANALYZE ballast")
            max_id = conn.execute("SELECT max(id) FROM tasks_task").fetchone()[0]
        run(manage("migrate", "tasks", "0002_priority_expand", "-v0"), env_extra=env)

        quiet = summary("quiet", *backfill(url, args.target_ms), args.target_ms)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE tasks_task SET priority = NULL")
            conn.execute("VACUUM ANALYZE tasks_task")
        load = subprocess.Popen([sys.executable, "-c", LOAD, url, str(max_id)], cwd=ROOT)
        try:
            loaded = summary(
                "loaded (2 scanning + 1 writing connections)",
                *backfill(url, args.target_ms),
                args.target_ms,
            )
        finally:
            load.terminate()
            load.wait()

    target = args.target_ms
    lines = [
        "## Adaptive batch size (PostgreSQL)",
        "",
        f"Command: `python benchmarks/adaptive.py --tasks {args.tasks} --target-ms {target:g}` "
        f"({datetime.now(UTC):%Y-%m-%d}, 2 cores). `backfill_priority -v2 --target-batch-ms "
        f"{target:g}` from the default first batch (3,000 keys) over {args.tasks:,} legacy rows, "
        "once on a quiet database and once while another process loads it.",
        "",
        "| run | batches | seconds | rows/s | batch size: 1st, 5th, 10th, 20th, 50th, last | "
        "settled at | converged by batch | p50 ms | p99 ms | p99 after converging | max ms | "
        "batches ≤ 1.5× target |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in (quiet, loaded):
        lines.append(
            f"| {result['name']} | {result['batches']:,} | {result['seconds']:.1f} | "
            f"{result['rows_per_second']:,.0f} | "
            f"{', '.join(f'{size:,}' for size in result['trajectory'])} | "
            f"{result['settled']:,} | {result['converged_at']} | {result['p50']:,} | "
            f"{result['p99']:,} | {result['p99_after']:,} | {result['max']:,} | "
            f"{result['within']:.1%} |"
        )
    ratio = loaded["p99"] / target
    lines += [
        "",
        "Under load the p99 time a batch held its row locks (UPDATE to commit) is "
        f"{loaded['p99']:,} ms = **{ratio:.2f}× the "
        f"{target:g} ms target** (limit 1.5×); on the quiet database it is "
        f"{quiet['p99'] / target:.2f}×. The loaded run settled at "
        f"{loaded['settled'] / quiet['settled']:.2f}× the quiet run's batch size.",
    ]
    report = "\n".join(lines)
    write_section("adaptive", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
