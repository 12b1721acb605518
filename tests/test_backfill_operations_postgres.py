"""Operating a backfill on real PostgreSQL: steering a running process from another one, health
signals produced for real (a vacuum, sessions queued on the batch's locks; replication lag is
tests/test_replicas.py's, on a scratch primary and standby), workers killed mid-batch and a
database restart mid-run."""

import datetime
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.db.models.expressions import RawSQL
from django.utils import timezone

from backfills import health as backfill_health
from backfills.engine import Backfill, BatchPolicy, run_backfill
from backfills.health import DatabaseHealth
from backfills.inspection import estimate_pending
from backfills.leases import claim
from backfills.models import BackfillRun
from backfills.orchestration import fill
from tests.helpers import (
    PRIORITY,
    priority_run_parameters,
    reference_date,
    rewind_to,
    wait_until,
)
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time
from tests.test_backfill_postgres import (
    assert_rule_applied_to,
    conninfo,
    database_url,
    hold_row_lock,
    seed_legacy,
)

ROOT = Path(__file__).resolve().parent.parent
TODAY = datetime.date(2026, 11, 26)
pytestmark = pytest.mark.postgres


def run_row() -> BackfillRun | None:
    return BackfillRun.objects.order_by("-pk").first()


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A manage.py process on the test database, as another terminal or host would run it."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell running CI in the background ignores SIGINT, and a child
        # inherits that (Python then installs no KeyboardInterrupt handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def events(run: BackfillRun) -> list[tuple[str, str]]:
    return list(run.events.order_by("at", "id").values_list("kind", "message"))


# -- estimate --------------------------------------------------------------------------------


def test_the_estimate_of_a_fresh_column_comes_from_statistics_gathered_for_it(transactional_db):
    # given: 5,000 rows analysed before the column existed, so it has no statistics yet
    with rewind_to("0001_initial"):
        seed_legacy(5_000)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE tasks_task")
        call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)

        # when
        estimate = estimate_pending(
            PRIORITY.backfill(Task, priority_run_parameters(TODAY)), using="default"
        )

        # then: close to the truth, not the planner's 0.5% guess for IS NULL without statistics
        assert 4_500 <= estimate <= 5_500


@pytest.mark.parametrize("workers", [1, 2])
def test_the_estimate_of_a_resumed_run_stays_within_the_table(expand_step, workers):
    # given: 20,000 rows, and statistics that will not follow the run (as between two
    # autovacuum ANALYZEs): they keep saying every row is pending
    seed_legacy(20_000)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE tasks_task SET (autovacuum_enabled = false)")
    try:
        estimates = []
        for _ in range(3):
            # when: a run stopped after 4,000 rows, then resumed, twice
            call_command(
                "backfill_priority", batch_size="2000", target_batch_ms="0", max_batches="2",
                workers=str(workers), no_progress=True, stdout=StringIO(),
            )  # fmt: skip
            estimates.append(BackfillRun.objects.get().rows_estimated)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE tasks_task RESET (autovacuum_enabled)")

    # then: rows done and the rows left never add up to more rows than there are
    assert all(estimate <= 20_000 for estimate in estimates), estimates
    assert BackfillRun.objects.get().rows_done == 12_000


# -- steering a running process --------------------------------------------------------------


def test_a_running_command_obeys_pause_resume_and_cancel_from_another_process(expand_step):
    # given: a command working through 5,000 rows in small, slow batches
    seed_legacy(5_000)
    process = manage(
        "backfill_priority", "--batch-size=50", "--target-batch-ms=0", "--sleep=0.05",
        "--no-progress",
    )  # fmt: skip
    try:
        wait_until(lambda: (run_row() or BackfillRun()).rows_done >= 500, what="progress")

        # when: paused from here
        call_command("backfill_priority", pause=True, stdout=StringIO())
        at_pause = run_row().rows_done
        time.sleep(1.0)

        # then: at most the batch in flight committed; the process waits, keeping its lease
        paused = run_row()
        assert paused.status == "paused" and paused.rows_done <= at_pause + 50
        time.sleep(0.5)
        assert run_row().rows_done == paused.rows_done
        assert process.poll() is None and run_row().lease_is_live

        # when: resumed, it carries on
        call_command("backfill_priority", resume=True, stdout=StringIO())
        wait_until(lambda: run_row().rows_done >= paused.rows_done + 200, what="resumed work")

        # when: cancelled, it stops before its next batch and exits
        call_command("backfill_priority", cancel=True, stdout=StringIO())
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    run = run_row()
    assert process.returncode == 0, err
    assert f"Run #{run.pk} was cancelled." in out
    assert run.status == "cancelled" and run.rows_done < 5_000
    assert Task.objects.filter(priority__isnull=False).count() == run.rows_done
    kinds = [kind for kind, _ in events(run)]
    assert kinds == ["created", "processing", "paused", "resumed", "cancel requested", "cancelled"]


# -- health signals -------------------------------------------------------------------------


def test_a_vacuum_running_on_the_table_makes_the_backfill_wait(expand_step):
    # given: a slow VACUUM of tasks_task in another session (cost-based delay on every page)
    seed_legacy(3_000)
    Task.objects.filter(pk__in=Task.objects.values("pk")[:1500]).update(title="churn")
    vacuum_done = threading.Event()

    def vacuum() -> None:
        with psycopg.connect(conninfo(), autocommit=True) as other:
            other.execute("SET vacuum_cost_delay = 20")
            other.execute("SET vacuum_cost_limit = 1")
            other.execute("VACUUM tasks_task")
        vacuum_done.set()

    thread = threading.Thread(target=vacuum)
    thread.start()
    try:
        wait_until(
            lambda: backfill_health.vacuum_phase("tasks_task", using="default") is not None,
            what="the vacuum",
        )
        # when
        fill(
            PRIORITY,
            using="default",
            policy=BatchPolicy(batch_size=1000),
            health=DatabaseHealth(model=Task, backoff_seconds=0.2),
        )
        finished_during_vacuum = not vacuum_done.is_set()
    finally:
        thread.join()

    # then: it waited for the vacuum before its first batch
    run = run_row()
    throttles = [message for kind, message in events(run) if kind == "throttled"]
    assert throttles and throttles[0].startswith("vacuum running on tasks_task (")
    assert not finished_during_vacuum
    assert run.status == "succeeded" and not Task.objects.filter(PRIORITY.pending).exists()


def test_sessions_queued_on_a_batchs_locks_make_the_backfill_back_off(expand_step):
    # given: a deliberately slow backfill (0.2 s per row) and a run record holding its lease
    seed_legacy(10)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    slow = Backfill(
        model=Task,
        field="priority",
        # pg_sleep is volatile: evaluated (and slept) once per row
        value=RawSQL("CASE WHEN pg_sleep(0.2)::text = '' THEN 'low' ELSE 'low' END", []),
        pending=PRIORITY.pending,
    )
    run = BackfillRun.objects.create(name="tests.slow", parameters={})
    checkpoint = claim(run, owner="test", origin="command", using="default", lease_seconds=60)
    waited = []

    def application_update() -> None:
        time.sleep(0.5)  # the batch has locked the first rows by now
        with psycopg.connect(conninfo(), autocommit=True) as app:
            started = time.monotonic()
            app.execute("UPDATE tasks_task SET title = 'edited' WHERE id = %s", [ids[0]])
            waited.append(time.monotonic() - started)

    thread = threading.Thread(target=application_update)
    thread.start()

    # when: one batch of 5 rows (~1 s) while the application waits on its first row
    run_backfill(
        slow,
        BatchPolicy(batch_size=5, max_batches=1),
        checkpoint,
        using="default",
        health=DatabaseHealth(model=Task, backoff_seconds=0.1),
    )
    thread.join()

    # then
    assert waited and waited[0] > 0.2
    assert ("throttled", "1 session(s) waited on the backfill's row locks; smaller batches") in (
        events(run)
    )


# -- faults ---------------------------------------------------------------------------------

WORKER = ("db_worker", "--queue-name", "backfill", "--no-reload", "--no-startup-delay")
FAST_LEASES = {"BACKFILL_LEASE_SECONDS": "3", "BACKFILL_SLICE_SECONDS": "2"}


def background_run_held_at_row_1100(rows: int) -> tuple[BackfillRun, psycopg.Connection]:
    """A background run of ``rows`` legacy rows in batches of 200 for workers, and a session
    holding a lock on the 1,101st row, which will hold a worker mid-batch."""
    seed_legacy(rows)
    call_command("backfill_priority", background=True, stdout=StringIO())
    run = run_row()
    BackfillRun.objects.filter(pk=run.pk).update(batch_size=200)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    return run, hold_row_lock(ids[1_100])


def test_a_worker_killed_mid_batch_is_taken_over_and_no_batch_is_applied_twice(
    expand_step, settings
):
    # given: a background run in batches of 200, a row lock that will hold the worker mid-batch
    settings.BACKFILL_SLICE_SECONDS = 2
    run, blocker = background_run_held_at_row_1100(4_000)
    first = manage(*WORKER, "--interval=0.2", env={**FAST_LEASES, "BACKFILL_TARGET_BATCH_MS": "0"})
    second = None
    try:
        wait_until(lambda: run_row().rows_done >= 1_000, what="the first worker's batches")
        time.sleep(0.5)  # now waiting on the locked row, its batch half-done and uncommitted

        # when: the first worker is killed, the lock goes away and another worker starts
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = run_row()
        blocker.rollback()
        second = manage(*WORKER, "--interval=0.2", env=FAST_LEASES)
        wait_until(lambda: run_row().status == "succeeded", timeout=90, what="the takeover")
    finally:
        blocker.close()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    # then: every row done exactly once, by the rule, and the takeover is on record
    run = run_row()
    assert killed_at.rows_done == 1_000 and killed_at.status == "running"
    assert run.rows_done == 4_000 == Task.objects.filter(priority__isnull=False).count()
    assert_rule_applied_to(Task.objects.all(), reference_date(run))
    taken = [message for kind, message in events(run) if kind == "taken over"]
    assert len(taken) == 1 and taken[0].startswith("from worker task ")


def restart_postgresql() -> None:
    """Restart the local cluster (as CI and this machine run it)."""
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        capture_output=True,
    )


# Restarting the server breaks every other client of it, so the test runs only where it is
# asked for (`.ci/run` asks; a plain `make test` on a shared server does not).
RESTART_OPT_IN = "TASKPROJ_TEST_RESTARTS_POSTGRES"

needs_local_cluster = pytest.mark.skipif(
    os.environ.get(RESTART_OPT_IN) != "1"
    or shutil.which("pg_ctlcluster") is None
    or not os.path.isdir("/etc/postgresql"),
    reason=f"restarts the local PostgreSQL cluster with pg_ctlcluster: set {RESTART_OPT_IN}=1",
)


@needs_local_cluster
def test_a_database_restart_mid_run_stops_the_command_and_the_run_resumes(expand_step):
    # given: a command working through 5,000 rows
    seed_legacy(5_000)
    process = manage(
        "backfill_priority", "--batch-size=100", "--target-batch-ms=0", "--sleep=0.02",
        "--no-progress", env={"BACKFILL_LEASE_SECONDS": "2"},
    )  # fmt: skip
    wait_until(lambda: (run_row() or BackfillRun()).rows_done >= 1_000, what="progress")

    # when: the server restarts under it
    restart_postgresql()
    connections.close_all()
    out, err = process.communicate(timeout=60)

    # then: it stops with the error and what to do; the checkpoint matches the data
    assert process.returncode == 1
    assert "run the command again to resume" in err
    run = run_row()
    assert 1_000 <= run.rows_done == Task.objects.filter(priority__isnull=False).count() < 5_000

    # when: run again once its lease has lapsed (the server was down when it stopped, so it
    # could not give the lease up: the lease is the only proof that it is gone)
    wait_until(lambda: run_row().lease_expires_at < timezone.now(), what="the lease to lapse")
    call_command(
        "backfill_priority", batch_size=100, target_batch_ms=0, no_progress=True, stdout=StringIO()
    )

    # then: the same run finished, every row once
    resumed = run_row()
    assert resumed.pk == run.pk and resumed.status == "succeeded"
    assert resumed.rows_done == 5_000 and not Task.objects.filter(PRIORITY.pending).exists()
    with pytest.raises(CommandError, match="no open tasks.task.priority run"):
        call_command("backfill_priority", pause=True, stdout=StringIO())


def test_the_restart_test_is_skipped_unless_asked_for():
    # given: a plain run, without the opt-in
    env = {k: v for k, v in os.environ.items() if k != RESTART_OPT_IN}

    # when: the restart test is collected and run
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "--no-header",
         f"{__file__}::test_a_database_restart_mid_run_stops_the_command_and_the_run_resumes"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # then: it is skipped, naming the variable that opts in, and the server was not touched
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and f"{RESTART_OPT_IN}=1" in result.stdout
