"""Seeding benchmark on PostgreSQL: `manage.py seed` against factory build_batch + bulk_create.

    python benchmarks/seed.py [--tasks 1000000] [--small 100000]

Each variant runs in its own process on its own scratch database (created and dropped here) on
the server of BENCH_SERVER_URL (default postgres://root@127.0.0.1:5432/postgres). Reports rows/s,
the ratio, and peak memory of the seeder at --small and --tasks rows; writes docs/benchmarks.md.
"""

import argparse
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import manage, run, scratch_database, write_section  # noqa: E402


def timed_seed(tasks: int) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of ``manage.py seed --tasks N`` on a fresh migrated database."""
    with scratch_database("taskproj_bench_seed") as url:
        env = {"DATABASE_URL": url}
        run(manage("migrate", "-v0"), env_extra=env)
        seconds, peak, _ = run(
            manage("seed", f"--tasks={tasks}", "--seed=1", "--no-progress"), env_extra=env
        )
    return seconds, peak


def timed_baseline(tasks: int) -> float:
    """Seconds of the build_batch + bulk_create loop for ``tasks`` rows."""
    with scratch_database("taskproj_bench_baseline") as url:
        env = {"DATABASE_URL": url}
        run(manage("migrate", "-v0"), env_extra=env)
        seconds, _, _ = run(
            [sys.executable, "benchmarks/seed_baseline.py", f"--tasks={tasks}"], env_extra=env
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    args = parser.parse_args()

    seed_seconds, seed_peak = timed_seed(args.tasks)
    small_seconds, small_peak = timed_seed(args.small)
    base_seconds = timed_baseline(args.tasks)
    seed_rate, base_rate = args.tasks / seed_seconds, args.tasks / base_seconds
    ratio = seed_rate / base_rate
    memory_ratio = seed_peak / small_peak

    lines = [
        "## Seeding (PostgreSQL)",
        "",
        f"Command: `python benchmarks/seed.py --tasks {args.tasks} --small {args.small}` "
        f"({datetime.now(UTC):%Y-%m-%d}, {platform.python_version()}, 2 cores). "
        "Whole processes, each on a freshly migrated scratch database; times include start-up, "
        "reference fixtures, users and (for the seeder) building the prototype pool.",
        "",
        "| variant | rows | seconds | rows/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
        f"| `TaskFactory.build_batch` + `bulk_create`, batches of 1,000 (baseline) | "
        f"{args.tasks:,} | {base_seconds:.1f} | {base_rate:,.0f} | — |",
        f"| `manage.py seed` | {args.tasks:,} | {seed_seconds:.1f} | {seed_rate:,.0f} | "
        f"{seed_peak / 1024:.0f} MiB |",
        f"| `manage.py seed` | {args.small:,} | {small_seconds:.1f} | "
        f"{args.small / small_seconds:,.0f} | {small_peak / 1024:.0f} MiB |",
        "",
        f"- Seeder / baseline throughput: **{ratio:.1f}×** (target ≥ 3×).",
        f"- Peak memory at {args.tasks:,} rows / at {args.small:,} rows: **{memory_ratio:.2f}×** "
        "(flat: the pool and one batch, whatever the row count).",
    ]
    report = "\n".join(lines)
    write_section("seed", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
