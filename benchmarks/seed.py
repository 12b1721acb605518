"""Seeding on PostgreSQL against its physical limit: a COPY of the very rows the seeder wrote.

    python benchmarks/seed.py [--tasks 1000000 10000000] [--variants today legacy]

For each size and variant, on a scratch database (created and dropped here) on the server of
BENCH_SERVER_URL: prepare the schema (``today``: every migration, as the application is now;
``legacy``: tasks back at 0001, seeded ``--without-priority --without-workspace`` as the code
before either column wrote them), CHECKPOINT, time ``manage.py seed`` as a whole process (its
peak RSS too), dump the rows it wrote with ``COPY tasks_task TO STDOUT`` into a file, empty the
table (TRUNCATE: its indexes, constraints and foreign keys stay), CHECKPOINT, and time one
``COPY tasks_task FROM STDIN`` of that file on one connection. The ratio is COPY seconds over
seed seconds (1.00× would be the seeder writing as fast as the server can take the same rows).
Writes docs/benchmarks.md.
"""

import argparse
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from benchmarks.common import manage, run, scratch_database, write_section  # noqa: E402

TARGET = 0.85
MEMORY_TARGET = 1.10
BLOCK = 1 << 20
# What each variant seeds into, and the flags that leave columns out.
VARIANTS = {
    "today": ("every migration applied", ()),
    "legacy": ("tasks at 0001_initial", ("--without-priority", "--without-workspace")),
}


def prepare(url: str, variant: str) -> None:
    """The schema the variant seeds into, with the reference fixtures loaded."""
    env = {"DATABASE_URL": url}
    run(manage("migrate", "-v0"), env_extra=env)
    run(manage("loaddata", "workspaces", "categories", "roles", "-v0"), env_extra=env)
    if variant == "legacy":
        run(manage("migrate", "tasks", "0001_initial", "-v0"), env_extra=env)


def checkpoint(url: str) -> None:
    """Write dirty buffers out first, so neither timed step pays for the one before it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def dump(url: str, path: Path) -> int:
    """COPY every task row TO the file at ``path``; return its size in bytes."""
    with psycopg.connect(url) as conn, conn.cursor() as cur, path.open("wb") as out:
        with cur.copy("COPY tasks_task TO STDOUT") as copy:
            for block in copy:
                out.write(block)
    return path.stat().st_size


def timed_copy(url: str, path: Path) -> float:
    """Empty tasks_task, then seconds of one COPY FROM STDIN of the file, committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE tasks_task")
    checkpoint(url)
    with psycopg.connect(url) as conn, conn.cursor() as cur, path.open("rb") as source:
        started = time.perf_counter()
        with cur.copy("COPY tasks_task FROM STDIN") as copy:
            while block := source.read(BLOCK):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def measure(tasks: int, variant: str) -> dict:
    """Seed and COPY figures for one size and variant."""
    _, flags = VARIANTS[variant]
    with scratch_database("taskproj_bench_seed") as url, tempfile.TemporaryDirectory() as tmp:
        prepare(url, variant)
        checkpoint(url)
        seed_seconds, peak, _ = run(
            manage("seed", f"--tasks={tasks}", "--seed=1", *flags, "--no-progress"),
            env_extra={"DATABASE_URL": url},
        )
        path = Path(tmp) / "tasks.copy"
        size = dump(url, path)
        copy_seconds = timed_copy(url, path)
    return {"seed": seed_seconds, "peak": peak, "copy": copy_seconds, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()

    for variant in args.variants:
        results = {tasks: measure(tasks, variant) for tasks in args.tasks}
        report = section(variant, results, args)
        write_section(f"seed-{variant}", report)
        sys.stdout.write(report + "\n")


def section(variant: str, results: dict[int, dict], args) -> str:
    """The table of one variant at every size."""
    schema, flags = VARIANTS[variant]
    smallest, largest = min(results), max(results)
    lines = [
        f"## Seeding against COPY: {schema} (PostgreSQL)",
        "",
        f"Command: `python benchmarks/seed.py --tasks {' '.join(map(str, args.tasks))} "
        f"--variants {variant}` ({datetime.now(UTC):%Y-%m-%d}, Python "
        f"{platform.python_version()}, 2 cores). "
        + f"`{' '.join(('manage.py seed --seed 1', *flags))}`"
        + " as a whole process (start-up, users and the factory-built prototypes included), "
        "then one `COPY tasks_task FROM STDIN` of the very rows it wrote, dumped with `COPY … "
        "TO`, into the same table emptied by TRUNCATE (its indexes and foreign keys in place). "
        f"Target: COPY seconds / seed seconds ≥ {TARGET:.2f}×; peak RSS at the largest size "
        f"within {MEMORY_TARGET:.2f}× of the smallest.",
        "",
        "| rows | seed s | rows/s | COPY of its rows s | COPY / seed | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for tasks, r in results.items():
        ratio = r["copy"] / r["seed"]
        mark = f"**{ratio:.2f}×**" if ratio >= TARGET else f"**{ratio:.2f}×** (short)"
        lines.append(
            f"| {tasks:,} | {r['seed']:.1f} | {tasks / r['seed']:,.0f} | {r['copy']:.1f} | "
            f"{mark} | {r['peak'] / 1024:.0f} MiB |"
        )
    if largest != smallest:
        memory = results[largest]["peak"] / results[smallest]["peak"]
        lines += [
            "",
            f"- Peak RSS at {largest:,} rows / at {smallest:,} rows: **{memory:.2f}×** "
            f"(target ≤ {MEMORY_TARGET:.2f}×).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
