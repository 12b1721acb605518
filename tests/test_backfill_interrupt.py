"""Ctrl-C during a backfill command, sent for real to another process: it exits with 130 and
no traceback, marks its run interrupted at once (no "running" run with an ETA left behind),
says where it stopped and prints the command that resumes it; that command finishes the run,
every row filled once. On SQLite and on PostgreSQL, with one worker and with two."""

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from backfills.models import BackfillRun
from backfills.orchestration import interrupt as interrupt_run
from tests.conftest import IS_POSTGRES
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time
from tests.helpers import backfill_output, reference_date, wait_until
from tests.test_backfill import ROOT
from tests.test_backfill_operations_postgres import manage
from tests.test_backfill_parallel import assert_lanes_match_the_data, each_lane_has_done
from tests.test_backfill_postgres import assert_rule_applied_to, seed_legacy

SLOW = ("--batch-size=50", "--target-batch-ms=0", "--sleep=0.05", "--no-progress")


def interrupt(process: subprocess.Popen) -> tuple[str, str]:
    """Send Ctrl-C's signal to ``process``; its stdout and stderr once it has exited."""
    try:
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def resume_command(err: str) -> list[str]:
    """The arguments of the "Resume: manage.py ..." line that an interrupted command printed."""
    line = next(line for line in err.splitlines() if line.startswith("Resume: "))
    words = shlex.split(line.removeprefix("Resume: "))
    assert words[0] == "manage.py"
    return words[1:]


def assert_stopped_by_ctrl_c(process: subprocess.Popen, err: str, run: dict) -> None:
    """Exit code 130, no traceback, and the two lines: where the run stopped, how to resume."""
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.startswith(
        f"Interrupted: run #{run['id']} stopped after key {run['last_key']}, with "
        f"{run['rows_done']:,} rows done and {run['left']:,} left.\nResume: manage.py "
        "backfill_priority "
    ), err
    assert run["status"] == "interrupted" and run["lease_owner"] == ""


def assert_shown_interrupted_without_eta(status: str, pk: int) -> None:
    """``--status`` shows run ``pk`` as interrupted, with no ETA."""
    row = next(line.split() for line in status.splitlines() if line.split()[0] == f"#{pk}")
    assert (row[1], row[6]) == ("interrupted", "-"), status  # run, status, done, ..., ETA


# -- SQLite ----------------------------------------------------------------------------------


@pytest.mark.skipif(IS_POSTGRES, reason="SQLite's own file: the PostgreSQL pass has its own test")
def test_ctrl_c_on_sqlite_marks_the_run_interrupted_and_the_printed_command_resumes_it(tmp_path):
    # given: a SQLite database between the priority rollout's expand and contract steps
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}

    def command(*args: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal (see tests/test_backfill_operations_postgres.py: manage).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def succeeds(*args: str) -> str:
        process = command(*args)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        return out

    succeeds("migrate", "-v0")
    succeeds("loaddata", "workspaces", "categories", "roles", "-v0")
    succeeds("migrate", "tasks", "0002_priority_expand", "-v0")
    succeeds("seed", "--tasks=2000", "--users=3", "--seed=7", "--without-priority",
             "--without-workspace", "--no-progress", "-v0")  # fmt: skip
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    db.row_factory = sqlite3.Row

    def the_run() -> dict:
        row = db.execute(
            "SELECT id, status, last_key, rows_done, lease_owner, rows_estimated "
            "FROM backfills_backfillrun"
        ).fetchone()
        if row is None:
            return {}
        return {**dict(row), "last_key": row["last_key"] and json.loads(row["last_key"])}

    def filled() -> list[int]:
        query = "SELECT id FROM tasks_task WHERE priority IS NOT NULL ORDER BY id"
        return [pk for (pk,) in db.execute(query)]

    # when: Ctrl-C reaches a command half-way through
    process = command("backfill_priority", *SLOW)
    wait_until(lambda: the_run().get("rows_done", 0) >= 300, what="progress")
    _, err = interrupt(process)

    # then: stopped cleanly; the checkpoint is exactly what was filled
    run = the_run()
    run["left"] = 2_000 - run["rows_done"]
    assert_stopped_by_ctrl_c(process, err, run)
    assert 300 <= run["rows_done"] < 2_000
    assert len(filled()) == run["rows_done"] and max(filled()) == run["last_key"]
    nulls_behind = "SELECT count(*) FROM tasks_task WHERE priority IS NULL AND id <= ?"
    assert db.execute(nulls_behind, [run["last_key"]]).fetchone()[0] == 0
    assert_shown_interrupted_without_eta(succeeds("backfill_priority", "--status"), run["id"])

    # when: the command it printed runs
    out = succeeds(*resume_command(err))

    # then: the same run finished, every row filled once
    assert f"Resuming run #{run['id']}" in out and "succeeded" in out
    run = the_run()
    assert (run["status"], run["rows_done"], len(filled())) == ("succeeded", 2_000, 2_000)
    kinds = [kind for (kind,) in db.execute("SELECT kind FROM backfills_backfillrunevent")]
    assert kinds.count("interrupted") == 1 and kinds[-1] == "succeeded"
    db.close()


# -- PostgreSQL ------------------------------------------------------------------------------


def run_row() -> BackfillRun:
    return BackfillRun.objects.get()


def as_dict(run: BackfillRun, left: int) -> dict:
    return {
        "id": run.pk,
        "status": run.status,
        "last_key": run.last_key,
        "rows_done": run.rows_done,
        "lease_owner": run.lease_owner,
        "left": left,
    }


@pytest.mark.postgres
def test_ctrl_c_on_postgresql_marks_the_run_interrupted_and_the_printed_command_resumes_it(
    expand_step,
):
    # given: a command working through 3,000 rows in small, slow batches
    seed_legacy(3_000)
    process = manage("backfill_priority", *SLOW)
    wait_until(lambda: (BackfillRun.objects.first() or BackfillRun()).rows_done >= 300)

    # when
    _, err = interrupt(process)

    # then: stopped cleanly, and shown as interrupted, with no ETA
    run = run_row()
    assert_stopped_by_ctrl_c(process, err, as_dict(run, 3_000 - run.rows_done))
    assert run.eta_seconds is None
    filled = Task.objects.filter(priority__isnull=False)
    assert filled.count() == run.rows_done and not filled.filter(pk__gt=run.last_key).exists()
    assert not Task.objects.filter(pk__lte=run.last_key, priority__isnull=True).exists()
    status = StringIO()
    call_command("backfill_priority", status=True, stdout=status)
    assert_shown_interrupted_without_eta(status.getvalue(), run.pk)
    assert run.events.filter(kind="interrupted", message__contains=str(run.last_key)).exists()

    # when: the command it printed runs
    again = manage(*resume_command(err))
    out, err = again.communicate(timeout=120)

    # then: the same run finished, every row filled once, by the rule
    assert again.returncode == 0, err
    run = run_row()
    assert f"Resuming run #{run.pk}" in out
    assert (run.status, run.rows_done) == ("succeeded", 3_000)
    assert not Task.objects.filter(priority__isnull=True).exists()
    assert_rule_applied_to(Task.objects.all(), reference_date(run))


@pytest.mark.postgres
def test_ctrl_c_stops_both_workers_and_the_lanes_resume_where_they_stopped(expand_step):
    # given: a 2-worker command that would need ~50 s more
    seed_legacy(20_000)
    process = manage(
        "backfill_priority", "--workers=2", "--batch-size=100", "--target-batch-ms=0",
        "--sleep=0.5", "--no-progress",
    )  # fmt: skip
    wait_until(lambda: each_lane_has_done(process, rows=1), what="both lanes under way")

    # when
    _, err = interrupt(process)

    # then: both workers stopped at once; every lane's checkpoint is exact
    run = run_row()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lanes = run.lanes.order_by("number")
    keys = ", ".join(str(lane.last_key) for lane in lanes)
    assert err.startswith(
        f"Interrupted: run #{run.pk} stopped after keys {keys} (one per lane), with "
        f"{run.rows_done:,} rows done and {20_000 - run.rows_done:,} left.\n"
    ), err
    assert resume_command(err) == [
        "backfill_priority", "--batch-size", "100", "--target-batch-ms", "0", "--sleep", "0.5",
        "--workers", "2",
    ]  # fmt: skip
    assert (run.status, run.lease_owner, run.eta_seconds) == ("interrupted", "", None)
    assert run.rows_done < 10_000
    assert_lanes_match_the_data(run)
    assert Task.objects.filter(priority__isnull=False).count() == run.rows_done

    # when: resumed (without the pauses between batches)
    call_command(
        "backfill_priority", workers="2", batch_size="1000", no_progress=True, stdout=StringIO()
    )

    # then: every lane carried on where it stopped; every row filled once
    run = run_row()
    assert (run.status, run.rows_done) == ("succeeded", 20_000)
    assert_lanes_match_the_data(run)
    assert_rule_applied_to(Task.objects.all(), reference_date(run))


def test_an_interrupted_run_is_running_again_once_a_command_carries_it_on(expand_step):
    # given: a run that did one batch, then was interrupted by its operator
    seed_legacy(300)
    backfill_output("backfill_priority", batch_size=100, max_batches=1)
    run = interrupt_run(run_row(), using="default", actor="operator", origin="command")
    assert run.status == "interrupted" and run.is_open

    # when: the command runs again, for one more batch
    out = backfill_output("backfill_priority", batch_size=100, max_batches=1)

    # then: the same run, running (its ETA shown again) while it is not finished
    run = run_row()
    assert f"Resuming run #{run.pk}" in out
    assert (run.status, run.rows_done, run.status_label) == ("running", 200, "running")


class CtrlCWhileAQueryIsOnTheWire(StringIO):
    """The command's output, at -v2: after its first batch, a query is sent on the command's
    connection without waiting for it, and Ctrl-C lands — as when SIGINT arrives between
    psycopg sending a query and reading its result. What the command runs as it unwinds meets
    that connection mid-query ("another command is already in progress")."""

    def write(self, text: str) -> int:
        if "batch of" in text:
            from django.db import connection

            connection.connection.pgconn.send_query(b"SELECT pg_sleep(0.2)")
            raise KeyboardInterrupt
        return super().write(text)


@pytest.mark.postgres
def test_ctrl_c_while_a_query_is_on_the_wire_is_still_a_clean_interruption(expand_step):
    # given: a run with batches to do
    seed_legacy(300)

    # when: Ctrl-C lands after the first batch, with a query left on the connection
    with pytest.raises(CommandError) as stopped:
        call_command(
            "backfill_priority", batch_size=100, verbosity=2, stdout=CtrlCWhileAQueryIsOnTheWire()
        )

    # then: exit code 130 and the Ctrl-C message, not a database error; the run is recorded
    # as interrupted (its lease given up) where it stopped, for the printed command to resume
    assert stopped.value.returncode == 130, stopped.value
    assert "stopped" in str(stopped.value) and "Resume: manage.py backfill_priority" in str(
        stopped.value
    )
    run = run_row()
    assert (run.status, run.rows_done, run.lease_owner) == ("interrupted", 100, "")
    assert run.events.filter(kind="interrupted").exists()
