"""Lock behaviour of the priority rollout on PostgreSQL, measured on a big table.

    python benchmarks/locks.py [--tasks 1000000]

Seeds --tasks legacy rows at 0001 on a scratch database, then runs each step as its own
`manage.py` process (expand, backfill, data migration, contract, index) while two threads with
their own connections watch:
- a sampler reads pg_locks every ~2 ms for the locks the step's session holds on tasks_task,
  with the statement it is running;
- a writer updates and inserts tasks in a loop and times each write.
For comparison it also times a plain `ALTER COLUMN … SET NOT NULL` (the scan under ACCESS
EXCLUSIVE that the contract step avoids) on the same table. Writes docs/benchmarks.md.
"""

import argparse
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    manage,
    run,
    scratch_database,
    seed_legacy,
    write_section,
)

APP_NAME = "taskproj-rollout-step"


@dataclass
class Observations:
    """What the watcher threads saw during one step."""

    locks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, mode, query)
    writes: list[float] = field(default_factory=list)  # seconds per write
    errors: list[str] = field(default_factory=list)

    def longest_hold(self, mode: str) -> float:
        """Longest run of consecutive samples showing ``mode`` held, in seconds (approx.)."""
        longest, start, last = 0.0, None, None
        for t, held, _ in self.locks:
            if held == mode:
                start = t if start is None or (last is not None and t - last > 0.02) else start
                last = t
                longest = max(longest, last - start)
            else:
                start = None
        return longest

    def modes_during(self, fragment: str) -> set[str]:
        """Lock modes held on tasks_task while a statement containing ``fragment`` ran."""
        return {mode for _, mode, query in self.locks if fragment in query}


def sampler(url: str, stop: threading.Event, seen: Observations) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "SELECT l.mode, a.query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'relation' AND l.relation = 'tasks_task'::regclass "
                "AND l.granted "
                "AND a.application_name = %s",
                [APP_NAME],
            ).fetchall()
            now = time.monotonic()
            seen.locks.extend((now, mode, query) for mode, query in rows)
            time.sleep(0.002)


def writer(url: str, stop: threading.Event, seen: Observations, max_id: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                conn.execute(
                    "UPDATE tasks_task SET title = title WHERE id = %s",
                    [random.randint(1, max_id)],
                )
                conn.execute(
                    "INSERT INTO tasks_task (title, description, status, created_at, updated_at) "
                    "VALUES (%s, '', 'todo', now(), now())",
                    [f"probe {n}"],
                )
            except psycopg.Error as exc:
                seen.errors.append(str(exc).strip().splitlines()[0])
            seen.writes.append(time.monotonic() - started)
            time.sleep(0.005)


def observe(url: str, args: list[str], max_id: int) -> tuple[Observations, float]:
    """Run one manage.py step under the watchers; return what they saw and its seconds."""
    seen, stop = Observations(), threading.Event()
    threads = [
        threading.Thread(target=sampler, args=(url, stop, seen)),
        threading.Thread(target=writer, args=(url, stop, seen, max_id)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        seconds, _, _ = run(manage(*args), env_extra={"DATABASE_URL": url, "PGAPPNAME": APP_NAME})
    finally:
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
    return seen, seconds


def plain_set_not_null_seconds(url: str) -> float:
    """A plain SET NOT NULL on the same table (rolled back): how long its scan holds the lock."""
    with psycopg.connect(url) as conn:
        # The writer's old-code rows since the data migration are still NULL.
        conn.execute("UPDATE tasks_task SET priority = 'medium' WHERE priority IS NULL")
        started = time.monotonic()
        conn.execute("ALTER TABLE tasks_task ALTER COLUMN priority SET NOT NULL")
        seconds = time.monotonic() - started
        conn.rollback()
    return seconds


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def hold(obs: "Observations") -> str:
    """The longest ACCESS EXCLUSIVE hold the sampler saw, or that it was seen only once."""
    if not any(mode == "AccessExclusiveLock" for _, mode, _ in obs.locks):
        return "none seen"
    longest = obs.longest_hold("AccessExclusiveLock")
    return ms(longest) if longest > 0 else "< one sample (~2 ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()

    with scratch_database("taskproj_bench_locks") as url:
        seed_legacy(url, args.tasks)
        with psycopg.connect(url, autocommit=True) as conn:
            max_id = conn.execute("SELECT max(id) FROM tasks_task").fetchone()[0]

        steps = {
            "expand (0002)": ["migrate", "tasks", "0002_priority_expand", "-v0"],
            "backfill_priority": ["backfill_priority", "--no-progress", "-v0"],
            "data migration (0003)": ["migrate", "tasks", "0003_priority_backfill", "-v0"],
        }
        seen = {name: observe(url, step, max_id) for name, step in steps.items()}
        plain = plain_set_not_null_seconds(url)
        seen["contract (0004)"] = observe(
            url, ["migrate", "tasks", "0004_priority_contract", "-v0"], max_id
        )
        seen["index (0005)"] = observe(
            url, ["migrate", "tasks", "0005_priority_index", "-v0"], max_id
        )

    baseline = sorted(seen["data migration (0003)"][0].writes)
    lines = [
        "## Locks during the rollout (PostgreSQL)",
        "",
        f"Command: `python benchmarks/locks.py --tasks {args.tasks}` "
        f"({datetime.now(UTC):%Y-%m-%d}, 2 cores). {args.tasks:,} legacy rows; each step is its "
        "own process while a sampler reads `pg_locks` every ~2 ms and a writer updates and "
        "inserts tasks every 5 ms on its own connection.",
        "",
        "| step | seconds | longest ACCESS EXCLUSIVE seen | lock modes held on tasks_task | "
        "writes | slowest write | failed writes |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, (obs, seconds) in seen.items():
        modes = ", ".join(sorted({mode for _, mode, _ in obs.locks})) or "—"
        lines.append(
            f"| {name} | {seconds:.1f} | {hold(obs)} | "
            f"{modes} | {len(obs.writes):,} | {ms(max(obs.writes, default=0))} | "
            f"{len(obs.errors)} |"
        )
    contract = seen["contract (0004)"][0]
    index = seen["index (0005)"][0]
    validating = contract.modes_during("VALIDATE")
    verdict = (
        "**ACCESS EXCLUSIVE while scanning (unsafe!)**"
        if "AccessExclusiveLock" in validating
        else "no ACCESS EXCLUSIVE while scanning"
    )
    setting = ", ".join(sorted(contract.modes_during("SET NOT NULL"))) or "too brief to catch"
    building = index.modes_during("CONCURRENTLY")
    lines += [
        "",
        f"- Contract: while `VALIDATE CONSTRAINT` ran, the step held "
        f"{', '.join(sorted(validating)) or 'no lock it caught'} on tasks_task: {verdict}; "
        f"`SET NOT NULL` then held {setting}. For comparison, a plain `ALTER COLUMN priority "
        f"SET NOT NULL` (its scan under ACCESS EXCLUSIVE, rolled back) took **{ms(plain)}** on "
        "the same table.",
        f"- Index: while `CREATE INDEX CONCURRENTLY` ran the step held "
        f"{', '.join(sorted(building)) or '—'}"
        + (" — **SHARE, which blocks writes!**" if "ShareLock" in building else " (not SHARE)")
        + f"; the slowest of {len(index.writes):,} writes meanwhile took "
        f"{ms(max(index.writes, default=0))}, and {len(index.errors)} failed.",
        f"- Writer baseline (during the data migration): median "
        f"{ms(baseline[len(baseline) // 2] if baseline else 0)}.",
    ]
    report = "\n".join(lines)
    write_section("locks", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
