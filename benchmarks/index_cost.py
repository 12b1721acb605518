"""What each index the rollouts added costs every write to tasks_task: WAL bytes and time per row.

    python benchmarks/index_cost.py [--tasks 1000000 10000000] [--writes 5000] [--rounds 3]

For each size of --tasks, on a scratch database of the server of BENCH_SERVER_URL: every
migration applied, that many rows seeded. The added indexes are those on tasks_task that tasks
at 0001_initial did not have (read from the catalogue at both states). With all of them
dropped, then with each alone, then with all of them again, two workloads as the application
writes: --writes single-row INSERTs naming every column, and --writes single-row UPDATEs of a
random task's status and updated_at (an edit in the admin); each in one transaction, sent
pipelined (psycopg's executemany: the server's cost, not round trips), rolled back, the table
vacuumed after; the same rows for every configuration. Reports the median of --rounds per row
(after one unmeasured run: no full-page images of a first change after a checkpoint),
microseconds and WAL bytes (``pg_current_wal_insert_lsn`` before and after), and what each
index adds to the table without it, at each size. Writes docs/benchmarks.md.
"""

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from benchmarks.common import manage, run, scratch_database, write_section  # noqa: E402

INDEXES = (
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
    "AND tablename = 'tasks_task' ORDER BY indexname"
)
INSERT = (
    "INSERT INTO tasks_task (title, description, status, due_date, category_id, assignee_id, "
    "created_at, updated_at, priority, workspace_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, now(), now(), %s, %s)"
)
UPDATE = "UPDATE tasks_task SET status = %s, updated_at = now() WHERE id = %s"


def indexes(url: str) -> dict[str, str]:
    """Name -> definition of every index on tasks_task."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute(INDEXES).fetchall())


def added_indexes(url: str) -> dict[str, str]:
    """The indexes the rollouts added: on the table now, not at tasks 0001_initial (read on the
    empty table, before seeding)."""
    env = {"DATABASE_URL": url}
    run(manage("migrate", "-v0"), env_extra=env)
    now = indexes(url)
    run(manage("migrate", "tasks", "0001_initial", "-v0"), env_extra=env)
    before = indexes(url)
    run(manage("migrate", "-v0"), env_extra=env)
    return {name: sql for name, sql in now.items() if name not in before}


def workload(conn: psycopg.Connection, sql: str, rows: list[tuple]) -> tuple[float, float]:
    """Microseconds and WAL bytes per row of ``sql`` over ``rows`` in one transaction, rolled
    back; the table vacuumed after."""
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        start = cur.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        started = time.perf_counter()
        cur.executemany(sql, rows)
        seconds = time.perf_counter() - started
        wal = cur.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [start]
        ).fetchone()[0]
    conn.execute("VACUUM tasks_task")
    return seconds / len(rows) * 1e6, float(wal) / len(rows)


def measure(conn: psycopg.Connection, args, samples: dict) -> dict[str, tuple[float, float]]:
    """Median per-row (µs, WAL bytes) of each workload on the table as its indexes are now."""
    figures = {}
    for kind in ("insert", "update"):
        # A checkpoint, then a first run unmeasured of the very same rows: the first change to
        # a page after a checkpoint writes the whole page to the WAL, which would be counted
        # against whichever configuration touched that page first.
        conn.execute("CHECKPOINT")
        workload(conn, *samples[kind])
        runs = [workload(conn, *samples[kind]) for _ in range(args.rounds)]
        figures[kind] = (
            statistics.median(us for us, _ in runs),
            statistics.median(wal for _, wal in runs),
        )
    return figures


def measure_size(tasks: int, args, rng: random.Random) -> tuple[dict, dict, dict]:
    """(every, alone, bare) figures on a table of ``tasks`` seeded rows: with all the added
    indexes, with each alone (by name), with none of them."""
    with scratch_database("taskproj_bench_index_cost") as url:
        added = added_indexes(url)
        run(
            manage("seed", f"--tasks={tasks}", "--seed=1", "--no-progress"),
            env_extra={"DATABASE_URL": url},
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE tasks_task")
            ids = [row[0] for row in conn.execute("SELECT id FROM tasks_task").fetchall()]
            categories = [r[0] for r in conn.execute("SELECT id FROM tasks_category").fetchall()]
            workspace = conn.execute("SELECT min(id) FROM tasks_workspace").fetchone()[0]
            titles = [r[0] for r in conn.execute("SELECT title FROM tasks_task LIMIT 1000")]
            statuses = ["todo", "in_progress", "blocked", "done"]

            inserts = (
                INSERT,
                [
                    (rng.choice(titles), "", rng.choice(statuses), None,
                     rng.choice(categories), None, "medium", workspace)
                    for _ in range(args.writes)
                ],
            )  # fmt: skip
            # The same rows for every configuration: the same pages touched.
            updates = (
                UPDATE,
                [(rng.choice(statuses), rng.choice(ids)) for _ in range(args.writes)],
            )

            samples = {"insert": inserts, "update": updates}
            # The schema as seeded first, then each index alone, the table without them last.
            every = measure(conn, args, samples)
            for name in added:
                conn.execute(f'DROP INDEX "{name}"')
            alone = {}
            for name, sql in added.items():
                conn.execute(sql)
                alone[name] = measure(conn, args, samples)
                conn.execute(f'DROP INDEX "{name}"')
            bare = measure(conn, args, samples)
    return every, alone, bare


def table(tasks: int, every: dict, alone: dict, bare: dict) -> list[str]:
    def cells(figures: dict) -> str:
        return " | ".join(
            f"{figures[kind][0]:.1f} µs, {figures[kind][1]:,.0f} B" for kind in ("insert", "update")
        )

    def added_cost(figures: dict) -> str:
        return " | ".join(
            f"{figures[kind][0] - bare[kind][0]:+.1f} µs, "
            f"{figures[kind][1] - bare[kind][1]:+,.0f} B"
            for kind in ("insert", "update")
        )

    lines = [
        f"**{tasks:,} tasks**",
        "",
        "| indexes on tasks_task besides those of 0001 | INSERT: time, WAL per row | "
        "UPDATE: time, WAL per row | INSERT: added | UPDATE: added |",
        "|---|---:|---:|---:|---:|",
        f"| none of the rollouts' | {cells(bare)} | — | — |",
    ]
    for name, figures in alone.items():
        lines.append(f"| only `{name}` | {cells(figures)} | {added_cost(figures)} |")
    lines.append(f"| all {len(alone)} (the schema today) | {cells(every)} | {added_cost(every)} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--writes", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = " ".join(str(tasks) for tasks in args.tasks)
    lines = [
        "## What each added index costs a write (PostgreSQL)",
        "",
        f"Command: `python benchmarks/index_cost.py --tasks {sizes} --writes {args.writes} "
        f"--rounds {args.rounds}` ({datetime.now(UTC):%Y-%m-%d}, 2 cores). tasks_task with "
        f"that many seeded rows; per row, the median of {args.rounds} runs of "
        f"{args.writes:,} pipelined single-row statements in one transaction: an INSERT naming "
        "every column, an UPDATE of one random task's status and updated_at.",
        "",
    ]
    for tasks in args.tasks:
        lines += table(tasks, *measure_size(tasks, args, random.Random(1)))
    report = "\n".join(lines).rstrip()
    write_section("index-cost", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
