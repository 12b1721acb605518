"""Helpers shared by the benchmark scripts: scratch PostgreSQL databases, timing, the report."""

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
DEFAULT_SERVER_URL = "postgres://root@127.0.0.1:5432/postgres"


def server_url() -> str:
    """The PostgreSQL server to benchmark on: BENCH_SERVER_URL or the local default."""
    return os.environ.get("BENCH_SERVER_URL", DEFAULT_SERVER_URL)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the benchmark server."""
    return re.sub(r"/[^/]*$", f"/{name}", server_url())


def create_database(name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (empty, or a copy of ``template``), dropping any leftover;
    return its URL."""
    drop_database(name)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return database_url(name)


def drop_database(name: str) -> None:
    """Drop database ``name`` if it exists, ending its sessions."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(name: str):
    """Create an empty database ``name`` (dropping any leftover) and drop it afterwards."""
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def run(args: list[str], *, env_extra: dict[str, str]) -> tuple[float, int, str]:
    """Run a command in a child process; return (seconds, peak RSS in KiB, stdout)."""
    env = {**os.environ, **env_extra}
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "__PEAK_RSS_KB__=%M", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark step failed: {' '.join(args)}")
    peak = int(re.search(r"__PEAK_RSS_KB__=(\d+)", proc.stderr).group(1))
    return seconds, peak, proc.stdout


def manage(*args: str) -> list[str]:
    """argv for ``manage.py`` under the running interpreter."""
    return [sys.executable, str(ROOT / "manage.py"), *args]


# Where each rollout starts (tasks migrated back to the step before its expand) and what its
# legacy rows leave out, as for `manage.py rehearse` (tasks/rollouts.py).
LEGACY = {
    "priority": ("0001_initial", ("--without-priority", "--without-workspace")),
    "workspace": ("0006_workspaces", ("--without-workspace",)),
}


def seed_legacy(
    url: str, tasks: int, *, rollout: str = "priority", step: str | None = None
) -> None:
    """Production before ``rollout``, in database ``url``: every app but the task queue's
    migrated, the reference fixtures loaded (on today's schema, which they are written for),
    tasks migrated back to where the rollout starts, ``tasks`` rows written as the code before
    the column wrote them, then tasks at ``step`` if given; vacuumed and analysed."""
    env = {"DATABASE_URL": url}
    for app in ("contenttypes", "auth", "admin", "sessions", "backfills", "tasks"):
        run(manage("migrate", app, "-v0"), env_extra=env)
    run(manage("loaddata", "workspaces", "categories", "roles", "-v0"), env_extra=env)
    start, flags = LEGACY[rollout]
    run(manage("migrate", "tasks", start, "-v0"), env_extra=env)
    run(
        manage("seed", f"--tasks={tasks}", "--seed=1", *flags, "--no-progress"),
        env_extra=env,
    )
    if step is not None:
        run(manage("migrate", "tasks", step, "-v0"), env_extra=env)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks_task")


def write_section(key: str, markdown: str) -> None:
    """Replace (or append) the section between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    REPORT.write_text(text)
