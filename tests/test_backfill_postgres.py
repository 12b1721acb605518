"""The backfill under real PostgreSQL behaviour: a SIGKILLed process, concurrent writers with
their own connections, and row locks held by another session."""

import os
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
from django.utils import timezone

from backfills.engine import BatchPolicy
from backfills.leases import claim
from backfills.models import BackfillRun
from backfills.orchestration import fill
from tasks.priority import PriorityRule
from tests.helpers import (
    PRIORITY,
    fill_while_the_application_writes,
    reference_date,
    wait_until,
)
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.postgres


def conninfo() -> str:
    """libpq connection string of the test database."""
    db = connection.settings_dict
    parts = {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": db["NAME"],
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


def database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def seed_legacy(count: int) -> None:
    call_command(
        "seed",
        tasks=count,
        users=3,
        seed=7,
        without_priority=True,
        without_workspace=True,
        no_progress=True,
        verbosity=0,
    )


def assert_rule_applied_to(queryset, today) -> None:
    rule = PriorityRule(today)
    for status, due_date, priority in queryset.values_list("status", "due_date", "priority"):
        assert priority == rule.for_task(status=status, due_date=due_date)


def test_a_run_killed_with_sigkill_resumes_exactly_where_it_stopped(expand_step):
    # given: 20,000 legacy rows and a backfill process working through them
    seed_legacy(20_000)
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "backfill_priority",
            "--batch-size=500",
            "--target-batch-ms=0",
            "--sleep=0.05",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "BACKFILL_LEASE_SECONDS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = BackfillRun.objects.first()
        if run is not None and run.rows_done >= 2_000:
            break
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)

    # when: it is killed without a chance to clean up
    process.send_signal(signal.SIGKILL)
    process.wait()

    # then: the checkpoint matches the data exactly
    run = BackfillRun.objects.get()
    done = Task.objects.filter(priority__isnull=False).count()
    assert run.status == "running"
    assert 2_000 <= run.rows_done == done < 20_000
    assert not Task.objects.filter(pk__lte=run.last_key, priority__isnull=True).exists()
    assert not Task.objects.filter(pk__gt=run.last_key, priority__isnull=False).exists()

    # when: the command runs again before the dead process's lease has expired, it is refused,
    # naming that process; once it has, it carries on
    with pytest.raises(CommandError, match=rf"pid {process.pid} \(lease until"):
        call_command("backfill_priority", no_progress=True, stdout=StringIO())
    wait_until(lambda: not BackfillRun.objects.get().lease_is_live, what="the lease to expire")
    out = StringIO()
    call_command(
        "backfill_priority", batch_size=500, target_batch_ms=0, no_progress=True, stdout=out
    )

    # then: the same run carried on and finished, with the same reference date
    resumed = BackfillRun.objects.get()
    assert f"Resuming run #{run.pk} (reference date {reference_date(run)})" in out.getvalue()
    assert (resumed.status, resumed.rows_done) == ("succeeded", 20_000)
    assert resumed.batches == 40
    assert not Task.objects.filter(priority__isnull=True).exists()
    assert_rule_applied_to(Task.objects.all(), reference_date(run))


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_inserts_and_updates_leave_no_null_and_are_never_overwritten(
    expand_step, workers
):
    # given: legacy rows, and application threads writing with their own connections
    seed_legacy(15_000)
    legacy_ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    chosen: list[int] = []  # rows the application gave a priority the rule would not
    inserted: list[int] = []

    def old_code_writer(stop) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            now = timezone.now()
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "INSERT INTO tasks_task (title, description, status, created_at, "
                    "updated_at) VALUES (%s, '', 'todo', %s, %s) RETURNING id",
                    [f"old code {n}", now, now],
                )
                inserted.append(cursor.fetchone()[0])
            Task.objects.filter(pk=legacy_ids[(n * 37) % len(legacy_ids)]).update(
                title=f"renamed {n}"
            )

    def new_code_writer(stop) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # the code of the priority rollout: it writes the rule's priority
            Task.objects.create(
                title=f"new code {n}",
                priority=PriorityRule(timezone.localdate()).for_task(status="todo", due_date=None),
            )
            pk = legacy_ids[(n * 7919) % len(legacy_ids)]
            if Task.objects.filter(pk=pk, priority__isnull=True).update(
                priority="urgent", status="done"
            ):
                chosen.append(pk)

    # when
    run, result, batches, errors = fill_while_the_application_writes(
        PRIORITY, [old_code_writer, new_code_writer], workers=workers
    )

    # then
    assert not errors
    assert result.finished and batches > 20
    assert len(inserted) > 20 and len(chosen) > 20
    assert not Task.objects.filter(priority__isnull=True).exists()
    assert set(Task.objects.filter(pk__in=chosen).values_list("priority", flat=True)) == {"urgent"}
    assert_rule_applied_to(Task.objects.filter(pk__in=inserted), reference_date(run))


def hold_row_lock(pk: int) -> psycopg.Connection:
    """Another session that holds a row lock on task ``pk`` until it is rolled back."""
    blocker = psycopg.connect(conninfo())
    blocker.execute("SELECT id FROM tasks_task WHERE id = %s FOR UPDATE", [pk])
    return blocker


def stopped_at_a_locked_row(locked: int, **options) -> tuple[str, BackfillRun, float]:
    """Run the command in batches of 10 while another session locks task ``locked``, expecting
    it to stop with an error; the error, the run record and the seconds it took."""
    blocker = hold_row_lock(locked)
    try:
        started = time.monotonic()
        with pytest.raises(CommandError) as error:
            call_command(
                "backfill_priority", batch_size=10, no_progress=True, stdout=StringIO(), **options
            )
        return str(error.value), BackfillRun.objects.get(), time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()


def test_a_lock_timeout_is_retried_then_stops_cleanly_and_resumes(expand_step):
    # given: 30 legacy rows, the 15th locked by another session
    seed_legacy(30)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))

    # when
    error, run, elapsed = stopped_at_a_locked_row(ids[14], lock_timeout=100, max_retries=2)

    # then: retried (waits of 0.5 s and 1 s), stopped, checkpoint intact after batch 1
    assert "lock timeout" in error
    assert "run the command again to resume" in error
    assert elapsed >= 1.5
    assert (run.status, run.rows_done, run.batches, run.last_key) == ("failed", 10, 1, ids[9])
    assert "attempt 3 of 3" in run.last_error
    assert Task.objects.filter(priority__isnull=True).count() == 20

    # when: the lock is gone and the command runs again
    out = StringIO()
    call_command(
        "backfill_priority", batch_size=10, target_batch_ms=0, no_progress=True, stdout=out
    )

    # then: succeeded, with no current error; the failure stays in the run's history
    run = BackfillRun.objects.get()
    assert f"Resuming run #{run.pk}" in out.getvalue()
    assert (run.status, run.rows_done) == ("succeeded", 30)
    assert (run.last_error, run.last_error_at) == ("", None)
    assert run.events.filter(kind="failed", message__contains="attempt 3 of 3").exists()
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_a_statement_timeout_is_retried_then_stops_cleanly(expand_step):
    # given: the 15th row locked by another session, and a statement timeout far shorter than
    # the lock timeout: the batch that waits for the row is cancelled by its statement timeout
    seed_legacy(30)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))

    # when
    error, run, _ = stopped_at_a_locked_row(
        ids[14], lock_timeout=5_000, statement_timeout=200, max_retries=1
    )

    # then: retried once, stopped, checkpoint intact after batch 1
    assert "canceling statement due to statement timeout" in error
    assert (run.status, run.rows_done, run.batches, run.last_key) == ("failed", 10, 1, ids[9])
    assert "attempt 2 of 2" in run.last_error
    assert Task.objects.filter(priority__isnull=True).count() == 20


def wait_until_blocked_by(pid: int) -> None:
    """Return once a session of the test database waits for a lock that session ``pid`` holds."""
    with psycopg.connect(conninfo(), autocommit=True) as watcher:
        wait_until(
            lambda: watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))",
                [pid],
            ).fetchone()[0],
            timeout=30,
            what=f"a session waiting for a lock held by session {pid}",
        )


def in_thread(target, outcome: dict) -> threading.Thread:
    """``target`` started in a thread with its own connections; its result or the exception it
    raised goes to ``outcome``."""

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # re-raised by the test, in its own thread
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def finished(thread: threading.Thread, outcome: dict):
    """The result of a thread started by :func:`in_thread`, once it has ended."""
    thread.join(timeout=60)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# Created by the test in its database: a real error from the server when the second batch's
# checkpoint is written, inside that batch's transaction, after its UPDATE.
SECOND_CHECKPOINT_FAILS = """
CREATE FUNCTION test_refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'checkpoint refused by the test';
END $$;
CREATE TRIGGER test_refuse_checkpoint BEFORE UPDATE ON backfills_backfillrun
    FOR EACH ROW WHEN (NEW.batches = 2) EXECUTE FUNCTION test_refuse_checkpoint();
"""


def test_a_batch_whose_checkpoint_cannot_be_written_is_rolled_back_with_it(expand_step):
    # given: 30 rows, and a run table that refuses the second batch's checkpoint
    seed_legacy(30)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(SECOND_CHECKPOINT_FAILS)
    try:
        # when
        with pytest.raises(CommandError, match="checkpoint refused by the test"):
            call_command(
                "backfill_priority", batch_size=10, target_batch_ms=0, no_progress=True,
                stdout=StringIO(),
            )  # fmt: skip
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_refuse_checkpoint ON backfills_backfillrun")
            cursor.execute("DROP FUNCTION test_refuse_checkpoint()")

    # then: the second batch's rows were rolled back with its checkpoint; the run stopped
    # after the first batch, as its checkpoint says
    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done, run.batches, run.last_key) == ("failed", 10, 1, ids[9])
    filled = Task.objects.filter(priority__isnull=False).order_by("pk").values_list("pk", flat=True)
    assert list(filled) == ids[:10]


def test_a_batch_chosen_as_a_deadlock_victim_is_retried_and_overwrites_nothing(expand_step):
    # given: an application transaction has set the priority of the 6th row, not committed yet,
    # to a value the rule would not give (so that an overwrite would show)
    seed_legacy(20)
    rule = PriorityRule(timezone.localdate())
    rows = list(Task.objects.order_by("pk").values_list("pk", "status", "due_date"))
    ids = [pk for pk, _, _ in rows]
    chosen = {
        pk: "urgent" if rule.for_task(status=status, due_date=due) != "urgent" else "low"
        for pk, status, due in rows[:6]
    }
    app = psycopg.connect(conninfo())
    deadlock_timeout = float(
        app.execute(
            "SELECT extract(epoch FROM current_setting('deadlock_timeout')::interval)"
        ).fetchone()[0]
    )
    edit = "UPDATE tasks_task SET priority = %s WHERE id = %s"
    app.execute(edit, [chosen[ids[5]], ids[5]])
    reports, outcome = [], {}
    backfill = in_thread(
        lambda: fill(
            PRIORITY,
            using="default",
            # A lock wait far longer than deadlock_timeout: the deadlock check comes first.
            policy=BatchPolicy(batch_size=10, lock_timeout_ms=60_000, backoff_seconds=0.1),
            on_batch=reports.append,
        )[1],
        outcome,
    )
    try:
        # when: the first batch has updated rows 1-5 and waits for row 6; then the application
        # edits row 1 too, and each waits for the other. PostgreSQL checks for a deadlock once
        # per wait, deadlock_timeout after it began, in the waiting session, and cancels that
        # session if it finds one. The application starts waiting well after the batch (so the
        # batch checks first) and well before the batch's check (so that check sees the cycle).
        wait_until_blocked_by(app.info.backend_pid)
        time.sleep(deadlock_timeout * 0.3)
        app.execute(edit, [chosen[ids[0]], ids[0]])
        app.commit()
    finally:
        app.close()
    result = finished(backfill, outcome)

    # then: the batch was rolled back and retried; the application's values stand
    assert result.finished
    assert reports[0].attempts == 2
    kept = dict(Task.objects.filter(pk__in=[ids[0], ids[5]]).values_list("pk", "priority"))
    assert kept == {ids[0]: chosen[ids[0]], ids[5]: chosen[ids[5]]}
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_the_data_migration_commits_batch_by_batch(expand_step, settings):
    # given: one fixed batch and a few rows more, the last row locked by another session
    settings.BACKFILL_TARGET_BATCH_MS = 0
    seed_legacy(BatchPolicy().batch_size + 10)
    last = Task.objects.order_by("-pk").values_list("pk", flat=True)[0]
    blocker = hold_row_lock(last)
    outcome = {}

    # when: the migration runs, and its second batch waits for the locked row
    migration = in_thread(
        lambda: call_command("migrate", "tasks", "0003_priority_backfill", verbosity=0), outcome
    )
    try:
        with psycopg.connect(conninfo(), autocommit=True) as other:

            def filled() -> int:
                return other.execute(
                    "SELECT count(*) FROM tasks_task WHERE priority IS NOT NULL"
                ).fetchone()[0]

            wait_until(
                lambda: filled() or not migration.is_alive(), what="a batch of the migration"
            )
            filled_meanwhile = filled()
        still_running = migration.is_alive()
    finally:
        blocker.rollback()
        blocker.close()
    finished(migration, outcome)

    # then: other sessions saw the first batch committed while the migration was still at work
    # (an atomic migration would show nothing before its end)
    assert still_running
    assert filled_meanwhile == BatchPolicy().batch_size
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_a_batch_that_waits_on_a_lock_succeeds_once_the_lock_is_released(expand_step):
    seed_legacy(30)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    blocker = hold_row_lock(ids[25])
    release = threading.Timer(0.6, blocker.rollback)
    release.start()
    attempts = []
    try:
        run, result = fill(
            PRIORITY,
            using="default",
            policy=BatchPolicy(batch_size=10, lock_timeout_ms=100, backoff_seconds=0.2),
            on_batch=lambda report: attempts.append(report.attempts),
        )
    finally:
        release.join()
        blocker.close()

    assert result.finished
    assert attempts[0] == 1 and attempts[2] > 1  # the third batch waited and was retried
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_a_second_process_is_refused_while_a_run_is_in_progress(expand_step):
    # given: another process holds the run's lease (as a running backfill process does)
    seed_legacy(20)
    call_command("backfill_priority", batch_size=5, max_batches=1, no_progress=True, verbosity=0)
    run = BackfillRun.objects.get()
    holder = claim(
        run, owner="command on host-b", origin="command", using="default", lease_seconds=60
    )

    # when
    with pytest.raises(CommandError, match="is being processed by command on host-b"):
        call_command("backfill_priority", no_progress=True, stdout=StringIO())

    # then: nothing changed; once the holder lets go, the run carries on
    assert Task.objects.filter(priority__isnull=True).count() == 15
    assert BackfillRun.objects.get().lease_owner == "command on host-b"
    holder.release()
    call_command("backfill_priority", no_progress=True, stdout=StringIO())
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_batch_settings_do_not_leak_into_the_session(expand_step):
    seed_legacy(10)
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        before = cursor.fetchone()[0]

    fill(
        PRIORITY,
        using="default",
        policy=BatchPolicy(batch_size=4, lock_timeout_ms=123),
    )

    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == before
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


def test_a_backfill_holds_no_lock_between_its_transactions(expand_step):
    # given: a watcher of the locks the backfill's session holds
    seed_legacy(30)
    held = []
    with psycopg.connect(conninfo(), autocommit=True) as watcher:

        def locks_held(report) -> None:
            # after each batch has committed: nothing left in the session, advisory or other
            held.extend(
                watcher.execute(
                    "SELECT locktype FROM pg_locks WHERE pid = %s",
                    [connection.connection.info.backend_pid],
                ).fetchall()
            )

        # when
        fill(PRIORITY, using="default", policy=BatchPolicy(batch_size=10), on_batch=locks_held)

    # then: the lease in the run's row is the only sign a process works on it, so a process
    # stopped between batches holds up nobody, and a transaction pooler can run it
    assert held == []
    assert not Task.objects.filter(priority__isnull=True).exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_finished_backfill_tells_the_planner_what_the_column_now_holds(expand_step, workers):
    # given: legacy rows whose statistics were taken while every priority was NULL
    seed_legacy(3_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")

    # when
    call_command("backfill", "tasks.task.priority", workers=workers, stdout=StringIO())

    # then: the planner knows the column is filled, and expects a filter by it to find rows
    # (not the one row it expects of a column it believes NULL, planned as a full read)
    assert null_share_of_priority() == 0.0
    plan = Task.objects.filter(priority="low").explain()
    assert int(plan.split("rows=")[1].split()[0]) > 100


def test_the_data_migration_after_the_command_refreshes_the_statistics(expand_step):
    # given: every row filled, by a backfill whose role may not ANALYZE (not the table's owner)
    seed_legacy(3_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")
        cursor.execute("UPDATE tasks_task SET priority = 'low'")
    assert null_share_of_priority() == 1.0

    # when: migrate, as the owner, runs the data migration (nothing left to fill)
    call_command("migrate", "tasks", "0003_priority_backfill", verbosity=0)

    # then
    assert null_share_of_priority() == 0.0


def null_share_of_priority() -> float:
    """The share of NULL in tasks_task.priority, as the planner's statistics have it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT null_frac FROM pg_stats WHERE tablename = 'tasks_task' AND attname = 'priority'"
        )
        return cursor.fetchone()[0]
