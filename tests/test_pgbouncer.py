"""Behind PgBouncer in transaction mode (``DATABASE_POOLING=transaction``): ``migrate`` runs both
rollouts with other clients in the same pool, refuses a concurrent migrate, and its lock dies
with it; the backfill runs with one and two workers, and a second backfill is refused, never
taking over the live lease. After each process ends the server is checked directly: no advisory
lock held, and on every pooled server connection the timeouts are the server's defaults.

The pooler is one of its own (tests/pgbouncer.py) in front of the test server, each test on a
scratch database of its own. The commands run as ``manage.py`` processes through the pooler.
Without pgbouncer the module is skipped with the reason; under CI=true that fails the run.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.helpers import unavailable_here, wait_until, workspace_expand_step
from tests.pgbouncer import Pooler, PoolerUnavailable, pgbouncer

ROOT = Path(__file__).resolve().parent.parent
ROWS = 400
# What a process could leave on a server connection; each must be the server's default.
SESSION_SETTINGS = (
    "lock_timeout",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "synchronous_commit",
)
pytestmark = pytest.mark.postgres


@pytest.fixture
def pooler() -> Iterator[Pooler]:
    """A pooler of this test's own (it starts in a moment): no test inherits another's pool."""
    server = settings.DATABASES["default"]
    try:
        with pgbouncer(
            server_host=server.get("HOST") or "127.0.0.1",
            server_port=int(server.get("PORT") or 5432),
            user=server.get("USER") or "postgres",
        ) as running:
            yield running
    except PoolerUnavailable as exc:
        unavailable_here(str(exc), "the pooler tests")


@pytest.fixture
def database(pooler: Pooler) -> Iterator[str]:
    """A scratch database of this test's own, reached through the pooler."""
    name = f"{settings.DATABASES['default']['NAME']}_pgbouncer"
    with pooler.server() as server:
        server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.execute(f"CREATE DATABASE {name}")
    yield name
    with pooler.server() as server:
        server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def manage(pooler: Pooler, database: str, *args: str, **env: str) -> tuple[list, dict]:
    """The command line and environment of ``manage.py args`` through the pooler."""
    return [sys.executable, "manage.py", *args], {
        **os.environ,
        "DATABASE_URL": pooler.url(database),
        "DATABASE_POOLING": "transaction",
        **env,
    }


def run_manage(pooler: Pooler, database: str, *args: str, **env: str):
    command, environment = manage(pooler, database, *args, **env)
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def start_manage(pooler: Pooler, database: str, *args: str, **env: str) -> subprocess.Popen:
    command, environment = manage(pooler, database, *args, **env)
    return subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def assert_nothing_left(pooler: Pooler, database: str) -> None:
    """No advisory lock on the database, and the server's defaults on every pooled
    server connection."""
    assert pooler.advisory_locks(database) == []
    with pooler.server(database) as server:
        defaults = tuple(server.execute(f"SHOW {name}").fetchone()[0] for name in SESSION_SETTINGS)
    for _ in range(3):  # a pooled connection may be idle on any of these rounds
        seen = pooler.pooled_settings(database, SESSION_SETTINGS)
        assert seen == [defaults] * len(seen)


class Traffic:
    """Other clients of the same pool, querying in a loop until stopped: each error kept."""

    def __init__(self, pooler: Pooler, database: str, clients: int = 2) -> None:
        self.errors: list[str] = []
        self.queries = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(pooler, database)) for _ in range(clients)
        ]

    def client(self, pooler: Pooler, database: str) -> None:
        with pooler.connect(database, autocommit=True) as client:
            while not self.stop.is_set():
                try:
                    client.execute("SELECT pg_sleep(0.02), count(*) FROM pg_class")
                    self.queries += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc))

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_migrate_runs_both_rollouts_with_traffic_in_the_pool_and_leaves_nothing_behind(
    pooler, database
):
    # when: every migration, from an empty database, with other clients in the pool
    with Traffic(pooler, database) as traffic:
        done = run_manage(pooler, database, "migrate", "--verbosity", "0")
    assert done.returncode == 0, done.stderr
    assert_nothing_left(pooler, database)
    assert traffic.queries > 0 and traffic.errors == []

    # then: the next migrate is not refused (nothing of the first is left on the pool)
    for _ in range(2):
        again = run_manage(pooler, database, "migrate")
        assert again.returncode == 0, again.stderr
        assert "No migrations to apply" in again.stdout
    assert_nothing_left(pooler, database)


def logged(process: subprocess.Popen, text: str) -> bool:
    """Whether a line of the running ``process``'s stderr says ``text``: read until one does,
    or until the process ends."""
    return any(text in line for line in process.stderr)


def test_a_concurrent_migrate_is_refused_and_the_lock_ends_with_the_process(pooler, database):
    # given: a migrate that keeps retrying, its lock on django_migrations not granted
    assert (
        run_manage(pooler, database, "migrate", "contenttypes", "--verbosity", "0").returncode == 0
    )
    with pooler.server(database) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE django_migrations IN ACCESS EXCLUSIVE MODE")
        first = start_manage(
            pooler, database, "migrate",
            MIGRATION_LOCK_TIMEOUT_MS="200", MIGRATION_LOCK_RETRIES="50",
            MIGRATION_RETRY_MIN_WAIT_MS="100", MIGRATION_RETRY_MAX_WAIT_MS="200",
        )  # fmt: skip
        try:
            wait_until(
                lambda: any(granted for _, _, granted, *_ in pooler.advisory_locks(database)),
                what="the first migrate's lock",
            )

            # when: a second migrate starts
            second = run_manage(pooler, database, "migrate")

            # then: it is refused, in one line
            assert second.returncode == 1
            assert second.stderr.strip().splitlines() == [
                "CommandError: Another manage.py migrate is running on database 'default'; "
                "wait for it."
            ]

            # (it has been giving up after its lock_timeout, and retrying, all along: its
            # migrations start after its lock, so on a busy machine the first retry may come
            # after the second migrate's refusal)
            assert logged(first, "Migration lock not granted within lock_timeout")

            # when: the first one dies, its lock goes with it (the pooler ends its transaction)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            wait_until(lambda: pooler.advisory_locks(database) == [], what="the lock to go")
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        blocker.execute("ROLLBACK")

    # then: the next migrate runs to the end
    done = run_manage(pooler, database, "migrate", "--verbosity", "0")
    assert done.returncode == 0, done.stderr
    assert_nothing_left(pooler, database)


@pytest.fixture
def expand_step(pooler, database) -> str:
    """The database at the workspace rollout's expand step, seeded with rows to backfill."""
    for args in workspace_expand_step(ROWS):
        done = run_manage(pooler, database, *args)
        assert done.returncode == 0, done.stderr
    return database


def pending(pooler: Pooler, database: str) -> int:
    with pooler.server(database) as server:
        return server.execute(
            "SELECT count(*) FROM tasks_task WHERE workspace_id IS NULL"
        ).fetchone()[0]


def events(pooler: Pooler, database: str) -> list[str]:
    with pooler.server(database) as server:
        return [kind for (kind,) in server.execute("SELECT kind FROM backfills_backfillrunevent")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_backfill_runs_to_its_end_through_the_pooler(pooler, expand_step, workers):
    # when
    with Traffic(pooler, expand_step) as traffic:
        done = run_manage(
            pooler, expand_step, "backfill", "tasks.task.workspace", "--batch-size", "25",
            "--workers", workers, "--no-progress",
        )  # fmt: skip

    # then
    assert done.returncode == 0, done.stderr
    assert pending(pooler, expand_step) == 0
    assert "taken over" not in events(pooler, expand_step)
    assert_nothing_left(pooler, expand_step)
    assert traffic.errors == []


@contextlib.contextmanager
def backfilling(pooler: Pooler, database: str) -> Iterator[subprocess.Popen]:
    """A backfill process working batch by batch, once its first batch is in; killed on exit
    if it is still running."""
    process = start_manage(
        pooler, database, "backfill", "tasks.task.workspace", "--batch-size", "10",
        "--sleep", "0.3", "--no-progress",
    )  # fmt: skip
    try:
        wait_until(lambda: pending(pooler, database) < ROWS, what="the first batch")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_filled_alone(pooler: Pooler, database: str, process: subprocess.Popen) -> None:
    """The backfill ran to its end, its lease never taken over, and left the pool clean."""
    assert process.wait(timeout=240) == 0, process.stderr.read()
    assert pending(pooler, database) == 0
    assert "taken over" not in events(pooler, database)
    assert_nothing_left(pooler, database)


def test_a_second_backfill_is_refused_and_never_takes_the_live_lease(pooler, expand_step):
    # given: a backfill working
    with backfilling(pooler, expand_step) as first:
        # when
        second = run_manage(pooler, expand_step, "backfill", "tasks.task.workspace")

        # then: refused in one line; the first carries on to its end, never taken over
        assert second.returncode == 1
        assert len(second.stderr.strip().splitlines()) == 1
        assert "is being processed by" in second.stderr
        assert_filled_alone(pooler, expand_step, first)


def test_dumpdata_reads_every_row_through_the_pooler(pooler, expand_step):
    # when: with other clients in the pool (a server-side cursor's next fetch would go to
    # another server connection, where the cursor does not exist)
    with Traffic(pooler, expand_step, clients=3):
        done = run_manage(pooler, expand_step, "dumpdata", "tasks.task", "--format", "jsonl")

    # then
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == ROWS
    assert_nothing_left(pooler, expand_step)


def steer(pooler: Pooler, database: str, action: str) -> None:
    """Pause or resume the open run, as the admin does, in a process of its own."""
    done = run_manage(
        pooler, database, "shell", "-c",
        f"from backfills.controls import {action}_run; from backfills.models import BackfillRun; "
        f"{action}_run(BackfillRun.objects.get(), using='default', actor='test', origin='admin')",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def run_status(pooler: Pooler, database: str) -> str:
    with pooler.server(database) as server:
        return server.execute("SELECT status FROM backfills_backfillrun").fetchone()[0]


def test_a_paused_backfill_waits_and_carries_on_when_resumed_through_the_pooler(
    pooler, expand_step
):
    # given: a backfill working
    with backfilling(pooler, expand_step) as filling:
        # when: paused, it stops filling and waits (its lease kept live, never taken over)
        steer(pooler, expand_step, "pause")
        paused_at = pending(pooler, expand_step)
        wait_until(lambda: filling.poll() is None and run_status(pooler, expand_step) == "paused")
        assert pending(pooler, expand_step) >= paused_at - 10  # at most the batch in flight
        still = pending(pooler, expand_step)
        assert_nothing_left(pooler, expand_step)
        assert pending(pooler, expand_step) == still > 0

        # then: resumed, it fills to its end
        steer(pooler, expand_step, "resume")
        assert_filled_alone(pooler, expand_step, filling)


def test_a_background_run_is_carried_out_by_a_worker_through_the_pooler(pooler, expand_step):
    # given: the task tables, and a run queued for workers
    tables = run_manage(pooler, expand_step, "migrate", "django_tasks_database", "--verbosity", "0")
    assert tables.returncode == 0, tables.stderr
    queued = run_manage(pooler, expand_step, "backfill", "tasks.task.workspace", "--background")
    assert queued.returncode == 0, queued.stderr

    # when: a worker takes the queue until it is empty
    with Traffic(pooler, expand_step) as traffic:
        done = run_manage(
            pooler, expand_step, "db_worker", "--queue-name", "backfill", "--batch",
            "--no-reload", "--no-startup-delay",
        )  # fmt: skip

    # then
    assert done.returncode == 0, done.stderr
    assert pending(pooler, expand_step) == 0 and run_status(pooler, expand_step) == "succeeded"
    assert "taken over" not in events(pooler, expand_step)
    assert_nothing_left(pooler, expand_step)
    assert traffic.errors == []


def test_the_rehearsal_runs_through_the_pooler(pooler, database):
    # when: the workspace rollout rehearsed on a scratch database, every connection pooled
    done = run_manage(
        pooler, database, "rehearse", "--rollout", "workspace", "--tasks", "2000", "--json"
    )

    # then: no application query failed or stalled, and the pool is left clean
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_nothing_left(pooler, database)
