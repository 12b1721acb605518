"""A stopped or dead backfill process on PostgreSQL: how long the application waits, how soon
another worker takes the run over.

    python benchmarks/stalls.py [--tasks 40000] [--stop 10]

Seeds --tasks legacy rows at the priority rollout's expand step on a scratch database, then,
with the project's default settings (BACKFILL_LEASE_SECONDS 30, BACKFILL_SLICE_SECONDS 60):

- application wait: a `backfill_priority` command is stopped (SIGSTOP) for --stop seconds in the
  middle of its first batch, once inside its UPDATE and once inside its checkpoint write (each
  held there by a lock of this script's, released as the process stops); meanwhile an
  application session updates one of the batch's rows, and the time it waits is measured;
- takeover: a worker (`manage.py db_worker`) working on a background run is killed (SIGKILL),
  or stopped (SIGSTOP) and woken after the takeover, while a second worker is idle: the time
  from the signal to the run's "taken over" event, and what the stopped worker did on waking.

Writes its section of docs/benchmarks.md.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
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

# Worker slices of small, paced batches, so that a run lasts well beyond a lease.
WORKER_ENV = {
    "BACKFILL_WORKER_BATCH_SIZE": "100",
    "BACKFILL_TARGET_BATCH_MS": "0",
    "BACKFILL_WORKER_SLEEP_SECONDS": "0.2",
}
WORKER = ("db_worker", "--queue-name", "backfill", "--no-reload", "--no-startup-delay")


def start(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A manage.py process on the benchmark database."""
    return subprocess.Popen(
        manage(*args),
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def blocked_by(conn: psycopg.Connection, pid: int) -> bool:
    """Whether a session waits for a lock session ``pid`` holds."""
    return bool(
        conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [pid]
        ).fetchone()[0]
    )


def reset(conn: psycopg.Connection) -> None:
    """Every row pending again, no run, no task: the next measurement starts afresh."""
    conn.execute("UPDATE tasks_task SET priority = NULL")
    for table in ("backfillrunevent", "backfilllane", "backfillrun"):
        conn.execute(f"DELETE FROM backfills_{table}")
    conn.execute("DELETE FROM django_tasks_database_dbtaskresult")
    conn.execute("VACUUM ANALYZE tasks_task")


def application_wait(url: str, *, stop: float, stopped_in: str) -> tuple[float, str]:
    """Seconds an application UPDATE of a batch's row waited while the command was stopped
    mid-batch (in its UPDATE, or in its checkpoint write); and how the command ended."""
    with psycopg.connect(url, autocommit=True) as watch:
        reset(watch)
        ids = [row[0] for row in watch.execute("SELECT id FROM tasks_task ORDER BY id LIMIT 300")]
        row_lock = psycopg.connect(url)
        row_lock.execute("SELECT 1 FROM tasks_task WHERE id = %s FOR UPDATE", [ids[150]])
        process = start(
            url, "backfill_priority", "--batch-size=200", "--target-batch-ms=0",
            "--lock-timeout=60000", "--statement-timeout=60000", "--no-progress", "-v0",
        )  # fmt: skip
        locks = [row_lock]
        wait_for(lambda: blocked_by(watch, row_lock.info.backend_pid), timeout=60, what="batch")
        if stopped_in == "checkpoint write":
            run_lock = psycopg.connect(url)
            run_lock.execute("SELECT 1 FROM backfills_backfillrun FOR UPDATE")
            locks.append(run_lock)
            row_lock.rollback()
            wait_for(lambda: blocked_by(watch, run_lock.info.backend_pid), timeout=60, what="cp")
        process.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        for lock in locks:
            lock.rollback()
        waited: list[float] = []

        def update() -> None:
            with psycopg.connect(url, autocommit=True) as app:
                began = time.monotonic()
                app.execute("UPDATE tasks_task SET title = 'edited' WHERE id = %s", [ids[0]])
                waited.append(time.monotonic() - began)

        thread = threading.Thread(target=update)
        thread.start()
        time.sleep(max(0.0, stop - (time.monotonic() - stopped_at)))
        process.send_signal(signal.SIGCONT)
        thread.join()
        _, err = process.communicate(timeout=120)
        for lock in locks:
            lock.close()
        outcome = "finished" if process.returncode == 0 else err.strip().splitlines()[-1]
        return waited[0], outcome


def takeover(url: str, *, how: signal.Signals) -> tuple[float, str]:
    """Seconds from ``how`` (SIGKILL or SIGSTOP) of the worker at work on a run to another
    worker's takeover; and what the stopped worker's task returned once woken (SIGSTOP)."""
    with psycopg.connect(url, autocommit=True) as watch:
        reset(watch)
        run(manage("backfill_priority", "--background", "-v0"), env_extra={"DATABASE_URL": url})
        first = start(url, *WORKER, "--interval=1", env=WORKER_ENV)

        def rows_done() -> int:
            return watch.execute("SELECT rows_done FROM backfills_backfillrun").fetchone()[0]

        wait_for(lambda: rows_done() >= 1_000, timeout=120, what="the first worker's batches")
        second = start(url, *WORKER, "--interval=1", env=WORKER_ENV)
        time.sleep(3)  # the second worker idle and polling
        owner = watch.execute("SELECT lease_owner FROM backfills_backfillrun").fetchone()[0]
        signalled = datetime.now(UTC)
        first.send_signal(how)

        def taken_over_at() -> datetime | None:
            row = watch.execute(
                "SELECT at FROM backfills_backfillrunevent WHERE kind = 'taken over'"
            ).fetchone()
            return row[0] if row else None

        wait_for(lambda: taken_over_at() is not None, timeout=180, what="the takeover")
        seconds = (taken_over_at() - signalled).total_seconds()
        woken = "—"
        if how == signal.SIGSTOP:
            prefix = owner.split()[2]  # "worker task <id[:8]> user@host pid N"
            first.send_signal(signal.SIGCONT)

            def returned() -> str | None:
                row = watch.execute(
                    "SELECT return_value FROM django_tasks_database_dbtaskresult "
                    "WHERE id::text LIKE %s AND finished_at IS NOT NULL",
                    [prefix + "%"],
                ).fetchone()
                return row[0] if row else None

            wait_for(lambda: returned() is not None, timeout=120, what="the woken worker")
            woken = returned()
        for process in (first, second):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=120)
        return seconds, woken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40_000)
    parser.add_argument("--stop", type=float, default=10.0, help="seconds a command is stopped")
    args = parser.parse_args()
    with scratch_database("taskproj_bench_stalls") as url:
        seed_legacy(url, args.tasks, step="0002_priority_expand")
        run(manage("migrate", "django_tasks_database", "-v0"), env_extra={"DATABASE_URL": url})
        waits = {
            where: application_wait(url, stop=args.stop, stopped_in=where)
            for where in ("UPDATE", "checkpoint write")
        }
        takeovers = {how.name: takeover(url, how=how) for how in (signal.SIGKILL, signal.SIGSTOP)}

    lines = [
        "## A stopped or dead backfill process (PostgreSQL)",
        "",
        f"Command: `python benchmarks/stalls.py --tasks {args.tasks} --stop {args.stop:g}` "
        f"({datetime.now(UTC):%Y-%m-%d}, 2 cores). Default settings: idle-in-batch timeout "
        "2,000 ms (`IDLE_IN_BATCH_TIMEOUT_MS`), `BACKFILL_LEASE_SECONDS` 30, "
        "`BACKFILL_SLICE_SECONDS` 60, workers polling every second.",
        "",
        f"| a command stopped for {args.stop:g} s in the middle of its first batch, in its … "
        "| an application UPDATE of one of the batch's rows waited | the command, once woken |",
        "|---|---:|---|",
    ]
    for where, (waited, outcome) in waits.items():
        lines.append(f"| {where} | {waited:.2f} s | {outcome} |")
    lines += [
        "",
        "| the worker at work on a run gets … | taken over by the idle worker after "
        "| the stopped worker's task, once woken |",
        "|---|---:|---|",
    ]
    for how, (seconds, woken) in takeovers.items():
        lines.append(f"| {how} | {seconds:.1f} s | {woken} |")
    lines += [
        "",
        "How to read it: a batch's transaction left idle by a stopped process is ended by the "
        "server after the idle-in-batch timeout, which releases its row locks: the application "
        "waits that long (plus what was left of the statement running when the process "
        "stopped), not for the whole stop. The process finds its batch rolled back when it "
        "wakes, does it again on a new connection and finishes; every row is filled once. A "
        "worker that dies or stops is taken over once its lease has expired: the lease after "
        "its last batch, plus the one-second margin of the task due then, plus the poll "
        "interval of the idle worker. A stopped worker that wakes after that finds the run "
        "taken over and stops without writing to it.",
    ]
    report = "\n".join(lines)
    write_section("stalls", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
