"""A backfill process stopped (SIGSTOP: Ctrl-Z, a paused VM, a long GC pause) in the middle of a
batch, on real PostgreSQL: the server ends the batch's transaction, so the application's writes
do not wait for the process; the process, when it wakes, neither applies the batch twice nor
writes over the run another process has taken over meanwhile.

A batch is stopped at a chosen statement by making that statement wait for a lock the test
holds, stopping the process, then releasing the lock: the server finishes the statement and the
transaction is left idle, as it is when the process stops between two statements."""

import signal
import threading
from pathlib import Path

import psycopg
import pytest
from django_tasks_db.models import DBTaskResult

from backfills.models import BackfillRun
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time
from tests.helpers import reference_date, wait_until
from tests.test_backfill_operations_postgres import (
    FAST_LEASES,
    WORKER,
    background_run_held_at_row_1100,
    events,
    manage,
    run_row,
)
from tests.test_backfill_postgres import (
    assert_rule_applied_to,
    conninfo,
    hold_row_lock,
    seed_legacy,
    wait_until_blocked_by,
)

pytestmark = pytest.mark.postgres
# How long the test keeps a process stopped at most: far longer than the server's bound on the
# batch's idle transaction, far shorter than forever (what the application waited before).
STOP_SECONDS = 15


def is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def abandon(*processes) -> None:
    """After a failure: kill ``processes`` and free the run they held, so that the fixture can
    migrate forward (its data migration would wait for their leases)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    BackfillRun.objects.update(lease_owner="", lease_expires_at=None)


def lock_run_row(run_pk: int) -> psycopg.Connection:
    """Another session that holds the run's row until it is rolled back: a checkpoint write
    waits for it."""
    locker = psycopg.connect(conninfo())
    locker.execute("SELECT id FROM backfills_backfillrun WHERE id = %s FOR UPDATE", [run_pk])
    return locker


def application_update(pk: int, outcome: dict) -> threading.Thread:
    """An application write of task ``pk`` from its own connection, in a thread; ``outcome``
    gets "done" once it has committed."""

    def write() -> None:
        with psycopg.connect(conninfo(), autocommit=True) as app:
            app.execute("SET lock_timeout = 0")  # it waits as long as it has to
            app.execute("UPDATE tasks_task SET title = 'edited by the app' WHERE id = %s", [pk])
        outcome["done"] = True

    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.mark.parametrize("stopped_in", ["its UPDATE", "its checkpoint write"])
def test_a_command_stopped_mid_batch_lets_the_application_write_and_resumes_exactly(
    expand_step, stopped_in
):
    # given: 400 rows, and a command whose first batch (200 rows) will wait on a lock of ours:
    # on the 151st row (its UPDATE has locked 150 rows), or on the run's row (its UPDATE has
    # locked all 200, its checkpoint write waits)
    seed_legacy(400)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    blocker = hold_row_lock(ids[150])
    process = manage(
        "backfill_priority", "--batch-size=200", "--target-batch-ms=0", "--lock-timeout=60000",
        "--statement-timeout=60000", "--no-progress", "-v2",
    )  # fmt: skip
    lockers = [blocker]
    app, thread = {}, None
    try:
        wait_until_blocked_by(blocker.info.backend_pid)
        if stopped_in == "its checkpoint write":
            lockers.append(lock_run_row(run_row().pk))
            blocker.rollback()
            wait_until_blocked_by(lockers[-1].info.backend_pid)

        # when: the process is stopped, its statement finishes, and the application writes one
        # of the batch's rows
        process.send_signal(signal.SIGSTOP)
        for locker in lockers:
            locker.rollback()
        thread = application_update(ids[0], app)

        # then: the write goes through while the process is still stopped
        wait_until(lambda: "done" in app, timeout=STOP_SECONDS, what="the application's write")
        assert is_stopped(process.pid)
    except BaseException:
        abandon(process)
        raise
    finally:
        process.send_signal(signal.SIGCONT)
        for locker in lockers:
            locker.close()
        if thread is not None:
            thread.join(timeout=60)
    out, err = process.communicate(timeout=60)

    # then: once woken, the process found its batch rolled back, did it again on a new
    # connection and finished: every row once, the checkpoint as the data, the write kept
    run = run_row()
    assert process.returncode == 0, err
    first_batch = next(line for line in out.splitlines() if "batch of" in line)
    assert first_batch.endswith("after 1 retries")
    assert (run.status, run.rows_done, run.batches) == ("succeeded", 400, 2)
    assert Task.objects.filter(priority__isnull=False).count() == 400
    assert Task.objects.get(pk=ids[0]).title == "edited by the app"
    assert_rule_applied_to(Task.objects.all(), reference_date(run))


def test_a_stopped_worker_is_taken_over_and_writes_nothing_when_it_wakes(expand_step, settings):
    # given: a background run in batches of 200, a row lock that will hold the worker mid-batch
    settings.BACKFILL_SLICE_SECONDS = 2
    run, blocker = background_run_held_at_row_1100(2_000)
    worker_env = {**FAST_LEASES, "BACKFILL_TARGET_BATCH_MS": "0"}
    first = manage(*WORKER, "--interval=0.2", env=worker_env)
    second = None
    try:
        wait_until(lambda: run_row().rows_done >= 1_000, what="the first worker's batches")
        wait_until_blocked_by(blocker.info.backend_pid)

        # when: the first worker is stopped mid-batch (and stays stopped), and another starts
        first.send_signal(signal.SIGSTOP)
        stopped = run_row()
        blocker.rollback()
        second = manage(*WORKER, "--interval=0.2", env=worker_env)

        # then: the second takes the run over once the stopped worker's lease has expired, and
        # finishes it (succeeded, then its lease given up)
        wait_until(
            lambda: (row := run_row()).status == "succeeded" and row.lease_expires_at is None,
            timeout=90,
            what="the takeover",
        )
        assert is_stopped(first.pid)
        finished = BackfillRun.objects.filter(pk=run.pk).values().get()

        # when: the stopped worker wakes up
        first.send_signal(signal.SIGCONT)
        task_prefix = stopped.lease_owner.split()[2]  # "worker task <id[:8]> user@host pid N"
        wait_until(
            lambda: any(
                str(task.pk).startswith(task_prefix) for task in DBTaskResult.objects.finished()
            ),
            what="the woken worker's task to end",
        )
    except BaseException:
        abandon(first, second)
        raise
    finally:
        blocker.close()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                process.wait(timeout=30)

    # then: it found the run taken over and stopped without writing a thing to it
    woken = next(t for t in DBTaskResult.objects.all() if str(t.pk).startswith(task_prefix))
    assert woken.return_value == f"stopped: run #{run.pk} was taken over by another process " + (
        f"(generation {stopped.generation} is no longer current)"
    )
    assert BackfillRun.objects.filter(pk=run.pk).values().get() == finished
    # and every row was done exactly once, by the rule; the takeover is on record
    run = run_row()
    assert run.rows_done == 2_000 == Task.objects.filter(priority__isnull=False).count()
    assert_rule_applied_to(Task.objects.all(), reference_date(run))
    taken = [message for kind, message in events(run) if kind == "taken over"]
    assert len(taken) == 1 and taken[0].startswith(f"from {stopped.lease_owner}, silent for ")
