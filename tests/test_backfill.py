"""backfill_priority and the engine behind it, on the run's database (SQLite or PostgreSQL)."""

import datetime
import functools
import re
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backfills.engine import Backfill, BatchPolicy, BatchSizer, run_backfill
from backfills.ledger import RunCheckpoint, open_run
from backfills.models import BackfillRun
from backfills.orchestration import fill, finish_in_migration
from tasks.models import Category
from tasks.priority import PriorityRule
from tests.conftest import IS_POSTGRES
from tests.helpers import (
    PRIORITY,
    Terminal,
    backfill_output,
    priority_run_parameters,
    reference_date,
    rewind_to,
)
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time

ROOT = Path(__file__).resolve().parent.parent
TODAY = timezone.localdate()
DAY = datetime.timedelta(days=1)


def legacy_tasks(count: int, *, ids: list[int] | None = None) -> list[Task]:
    """Tasks as the application wrote them before the priority column: priority NULL."""
    rows = [
        Task(
            pk=None if ids is None else ids[i],
            title=f"legacy {i}",
            status=["todo", "done", "blocked", "in_progress"][i % 4],
            due_date=None if i % 5 == 0 else TODAY + (i % 40 - 10) * DAY,
        )
        for i in range(count)
    ]
    return Task.objects.bulk_create(rows)


backfill = functools.partial(backfill_output, "backfill_priority")


def nulls() -> int:
    return Task.objects.filter(priority__isnull=True).count()


def assert_rule_applied(today: datetime.date = TODAY) -> None:
    rule = PriorityRule(today)
    for task in Task.objects.all():
        assert task.priority == rule.for_task(status=task.status, due_date=task.due_date), task


def test_fills_every_null_row_by_the_rule_and_reports(expand_step):
    legacy_tasks(23)

    output = backfill(batch_size=5)

    assert nulls() == 0
    assert_rule_applied()
    assert "Updated 23 rows in 5 batches" in output
    assert "NULL rows left: 0" in output
    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done, run.batches, reference_date(run)) == (
        "succeeded",
        23,
        5,
        TODAY,
    )


def test_keyset_batches_handle_gaps_in_ids_and_a_last_partial_batch(expand_step):
    # given: ids with large gaps
    ids = [1, 2, 3, 10, 11, 500, 501, 502, 9_000, 1_000_000, 1_000_001]
    legacy_tasks(len(ids), ids=ids)

    # when
    with CaptureQueriesContext(connection) as queries:
        backfill(batch_size=3)

    # then: 3 + 3 + 3 + 2 rows, one set-based UPDATE per batch, never OFFSET
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    task_updates = [sql for sql in updates if '"tasks_task"' in sql.split("SET")[0]]
    assert nulls() == 0
    assert len(task_updates) == 4
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    assert BackfillRun.objects.get().last_key == 1_000_001


def test_an_empty_table_has_nothing_to_do(expand_step):
    output = backfill()

    assert "Nothing to backfill" in output
    assert not BackfillRun.objects.exists()


def test_only_null_rows_are_touched(expand_step):
    # given: rows the new code already wrote, with priorities the rule would not give, among
    # NULL ones: after the first row to fill, so that every batch walks over some of them
    legacy_tasks(12)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    chosen = ids[1::3]
    Task.objects.filter(pk__in=chosen).update(priority="urgent")
    Task.objects.filter(pk__in=chosen).update(status="done")  # rule would say "low"

    # when
    output = backfill(batch_size=3)

    # then: each batch of 3 keys filled its 2 NULL rows and left the application's value
    assert set(Task.objects.filter(pk__in=chosen).values_list("priority", flat=True)) == {"urgent"}
    assert "Updated 8 rows in 4 batches" in output
    assert nulls() == 0


def test_a_second_run_changes_nothing_and_says_so(expand_step):
    legacy_tasks(12)
    backfill(batch_size=5)
    before = list(Task.objects.order_by("pk").values_list("pk", "priority", "updated_at"))

    output = backfill(batch_size=5)

    assert "Nothing to backfill: no task has a NULL priority." in output
    assert list(Task.objects.order_by("pk").values_list("pk", "priority", "updated_at")) == before
    assert BackfillRun.objects.count() == 1


def test_a_new_run_after_a_finished_one_starts_at_the_rows_inserted_since(expand_step):
    # given: a finished run over 100 rows, then old code inserts 3 more at the end
    legacy_tasks(100)
    backfill(batch_size=10)
    legacy_tasks(3)

    # when
    output = backfill(batch_size=10)

    # then: one batch, not a walk over the 100 rows already done
    assert "Updated 3 rows in 1 batches" in output
    assert nulls() == 0


def test_a_stopped_run_resumes_with_its_own_reference_date(expand_step):
    # given: a run that stopped after one batch, started on an earlier day
    legacy_tasks(10)
    first = backfill(batch_size=4, max_batches=1)
    run = BackfillRun.objects.get()
    first_batch_end = run.last_key
    earlier = TODAY - 30 * DAY
    BackfillRun.objects.filter(pk=run.pk).update(parameters=priority_run_parameters(earlier))

    # when
    second = backfill(batch_size=4)

    # then: same run, and the remaining rows were computed against its date
    run.refresh_from_db()
    assert "is not finished (stopped by --max-batches" in first
    assert "NULL rows left: 6." in first  # counted: only a finished run knows it is 0
    assert f"Resuming run #{run.pk} (reference date {earlier})" in second
    assert (run.status, run.rows_done, run.batches) == ("succeeded", 10, 3)
    rule = PriorityRule(earlier)
    resumed = Task.objects.filter(pk__gt=first_batch_end)
    assert resumed.count() == 6
    for task in resumed:
        assert task.priority == rule.for_task(status=task.status, due_date=task.due_date)


def test_a_killed_run_resumes_once_its_lease_has_expired(expand_step):
    # given: a run whose process was killed after one batch, its lease still running
    legacy_tasks(10)
    backfill(batch_size="4", max_batches="1")
    BackfillRun.objects.update(
        status="running",
        lease_owner="command on host-a (pid 4242)",
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )

    # when: the next invocation comes before the lease has expired, it says how long to wait
    with pytest.raises(CommandError, match=r"host-a \(pid 4242\) \(lease until \d\d:\d\d:\d\d\)"):
        backfill(batch_size="4")
    assert nulls() == 6

    # when: it comes after
    BackfillRun.objects.update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=1))
    output = backfill(batch_size="4")

    # then: the same run carried on from its checkpoint
    run = BackfillRun.objects.get()
    assert f"Resuming run #{run.pk}" in output
    assert (run.status, run.rows_done, run.batches) == ("succeeded", 10, 3)
    assert nulls() == 0


def test_restart_cancels_the_open_run_and_starts_a_new_one(expand_step):
    legacy_tasks(10)
    backfill(batch_size=4, max_batches=1)
    old = BackfillRun.objects.get()

    output = backfill(batch_size=4, restart=True)

    old.refresh_from_db()
    new = BackfillRun.objects.exclude(pk=old.pk).get()
    assert old.status == "cancelled" and old.finished_at is not None
    assert new.status == "succeeded" and new.rows_done == 6
    assert f"Starting run #{new.pk}" in output


def test_dry_run_counts_per_priority_and_writes_nothing(expand_step):
    # given: one task for each outcome of the rule, and two urgent ones
    for status, due in [
        ("done", None),
        ("todo", None),
        ("todo", TODAY - DAY),
        ("todo", TODAY),
        ("todo", TODAY + 2 * DAY),
        ("todo", TODAY + 30 * DAY),
    ]:
        Task.objects.bulk_create([Task(title="t", status=status, due_date=due)])

    # when
    output = backfill(dry_run=True)

    # then
    lines = {line.split()[0]: line.split()[1] for line in output.splitlines()[1:-1]}
    assert lines == {"Urgent": "2", "High": "1", "Medium": "1", "Low": "2", "Total": "6"}
    assert "Nothing was written." in output
    assert nulls() == 6
    assert not BackfillRun.objects.exists()


# Every bad value of every option: CommandError naming the option, nothing read or written.
BAD_ARGUMENTS = [
    ({"batch_size": "0"}, "--batch-size must be at least 1"),
    ({"batch_size": "100001"}, "--batch-size must be at most 100,000"),
    ({"batch_size": "lots"}, "--batch-size must be a whole number"),
    ({"sleep": "-0.5"}, "--sleep must be at least 0"),
    ({"sleep": "soon"}, "--sleep must be a number"),
    ({"sleep": "nan"}, "--sleep must be a finite number"),
    ({"max_batches": "0"}, "--max-batches must be at least 1"),
    ({"max_batches": "all"}, "--max-batches must be a whole number"),
    ({"lock_timeout": "1s"}, "--lock-timeout must be a whole number"),
    ({"lock_timeout": "0"}, "--lock-timeout must be at least 1"),
    ({"lock_timeout": "3600001"}, "--lock-timeout must be at most 3,600,000"),
    ({"statement_timeout": "-5"}, "--statement-timeout must be at least 1"),
    ({"statement_timeout": "15s"}, "--statement-timeout must be a whole number"),
    ({"statement_timeout": "86400001"}, "--statement-timeout must be at most 86,400,000"),
    ({"max_retries": "-1"}, "--max-retries must be at least 0"),
    ({"max_retries": "many"}, "--max-retries must be a whole number"),
    ({"max_retries": "101"}, "--max-retries must be at most 100"),
    ({"target_batch_ms": "fast"}, "--target-batch-ms must be a number"),
    ({"target_batch_ms": "-60"}, "--target-batch-ms must be at least 0"),
    ({"max_throttle": "-1"}, "--max-throttle must be at least 0"),
    ({"max_throttle": "long"}, "--max-throttle must be a number"),
    ({"database": "replica"}, "Unknown database 'replica'"),
    ({"workers": "0"}, "--workers must be at least 1"),
    ({"workers": "17"}, "--workers must be at most 16"),
    ({"workers": "two"}, "--workers must be a whole number"),
]


@pytest.mark.parametrize(("options", "message"), BAD_ARGUMENTS)
def test_bad_arguments_fail_clearly_and_write_nothing(expand_step, options, message):
    legacy_tasks(5)

    with pytest.raises(CommandError, match=message):
        backfill(**options)

    assert nulls() == 5
    assert not BackfillRun.objects.exists()


@pytest.mark.skipif(IS_POSTGRES, reason="SQLite only: PostgreSQL takes several workers")
def test_several_workers_on_sqlite_are_refused_and_write_nothing(expand_step):
    legacy_tasks(5)

    with pytest.raises(CommandError, match="2 workers need PostgreSQL: database 'default' is"):
        backfill(workers="2")

    assert nulls() == 5
    assert not BackfillRun.objects.exists()


def test_bad_arguments_exit_with_code_1_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "manage.py", "backfill_priority", "--batch-size", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert "CommandError: --batch-size must be at least 1" in result.stderr


def test_before_the_expand_step_it_says_which_migration_to_apply(transactional_db):
    with rewind_to("0001_initial"):
        with pytest.raises(CommandError, match="migrate tasks 0002_priority_expand"):
            backfill()


@pytest.mark.django_db
def test_after_the_contract_step_there_is_nothing_to_do():
    output = backfill()

    assert "already NOT NULL" in output
    assert not BackfillRun.objects.exists()


def test_engine_is_generic_over_model_field_value_and_filter(expand_step):
    # given: a backfill of a different column with a constant and a filter
    legacy_tasks(9)
    job = Backfill(
        model=Task,
        field="description",
        value="archived",
        pending=Q(status="done") & ~Q(description="archived"),
    )
    run, _ = open_run(BackfillRun, name="tasks.task.description", using="default", parameters=dict)

    # when
    result = run_backfill(
        job, BatchPolicy(batch_size=2), RunCheckpoint(run, using="default"), using="default"
    )

    # then
    assert result.finished and result.rows == 2
    assert set(Task.objects.filter(status="done").values_list("description", flat=True)) == {
        "archived"
    }
    assert not Task.objects.exclude(status="done").filter(description="archived").exists()
    assert nulls() == 9  # the priority backfill is untouched


@pytest.mark.django_db
def test_a_backfill_keyed_on_a_text_column_walks_its_keys_in_order():
    # given: categories whose slugs sort otherwise than their ids
    for slug in ["m", "b", "z", "a", "q", "c", "x"]:
        Category.objects.create(name=slug.upper(), slug=slug)
    Category.objects.filter(slug="c").update(description="kept")
    job = Backfill(
        model=Category,
        field="description",
        value="described",
        pending=Q(description=""),
        key="slug",
    )
    run, _ = open_run(BackfillRun, name="tests.category.slug", using="default", parameters=dict)
    batches = []

    # when
    result = run_backfill(
        job,
        BatchPolicy(batch_size=2),
        RunCheckpoint(run, using="default"),
        using="default",
        on_batch=lambda batch: batches.append((batch.last_key, batch.rows)),
    )

    # then: batches of two slugs in the slugs' order, each ending at its last slug
    assert result.finished and result.rows == 6
    assert batches == [("b", 2), ("m", 1), ("x", 2), ("z", 1)]
    assert dict(Category.objects.values_list("slug", "description")) == {
        **{slug: "described" for slug in "abmqxz"},
        "c": "kept",
    }
    run.refresh_from_db()
    assert run.last_key == "z"


@pytest.mark.parametrize(
    ("null_positions", "batches", "scans"),
    [
        # few NULL rows: the table is read whole twice, once before the run (its first key and
        # their count in one scan: no exists(), no count of its own) and once, at the end, for
        # rows left behind the walk; the walk goes from 150 to the end
        ([150, 600, 1_300], 14, 2),
        # the same from 1,200 to the end
        ([1_200, 1_300, 1_450], 3, 2),
    ],
)
def test_a_run_starts_at_the_first_null_row_wherever_it_is(
    expand_step, null_positions, batches, scans
):
    # given: 1,500 rows with a priority but a few, as after a run and inserts by old code
    keys = [task.pk for task in legacy_tasks(1_500)]
    nulls_at = [keys[position] for position in null_positions]
    Task.objects.exclude(pk__in=nulls_at).update(priority="low")

    # when
    with CaptureQueriesContext(connection) as queries:
        run, result = fill(PRIORITY, using="default", policy=BatchPolicy(batch_size=100))

    # then: it walked from just before the first NULL row, and filled them all
    assert result.finished and nulls() == 0
    assert (result.rows, result.batches) == (len(null_positions), batches)
    assert len(whole_table_reads(queries)) == scans, whole_table_reads(queries)


def whole_table_reads(queries) -> list[str]:
    """The statements among ``queries`` that may read all of tasks_task: an aggregate or an
    exists() with no bound on the key."""
    return [
        q["sql"]
        for q in queries
        if '"tasks_task"' in q["sql"]
        and any(read in q["sql"] for read in ("COUNT(", "MIN(", "SELECT 1 AS"))  # exists()
        and " IN (" not in q["sql"]
        and '"id" <' not in q["sql"]
        and '"id" >' not in q["sql"]
    ]


def test_the_data_migration_reads_the_whole_table_once_before_it_fills_the_rows_left(
    expand_step,
):
    # given: a finished command left all rows filled; old code then inserted a few at the end
    keys = [task.pk for task in legacy_tasks(1_500)]
    Task.objects.exclude(pk__in=keys[-3:]).update(priority="low")

    # when: the data migration's operation finishes the backfill
    with CaptureQueriesContext(connection) as queries:
        result = finish_in_migration(PRIORITY, apps=django_apps, using="default")

    # then: one look before the run (no exists() first) and one for rows left behind the walk
    assert result.finished and result.rows == 3 and nulls() == 0
    assert len(whole_table_reads(queries)) == 2, whole_table_reads(queries)


def test_rows_that_appear_behind_the_walk_are_caught_by_another_pass(expand_step):
    # given: a row behind the checkpoint turns NULL mid-run, as a row whose INSERT committed
    # after the walk passed its id would
    legacy_tasks(12)
    first_id = Task.objects.order_by("pk").values_list("pk", flat=True)[0]
    reopened = []

    def reopen_a_row_behind(report) -> None:
        if not reopened:
            Task.objects.filter(pk=first_id).update(priority=None)
            reopened.append(first_id)

    # when
    run, result = fill(
        PRIORITY,
        using="default",
        policy=BatchPolicy(batch_size=5),
        on_batch=reopen_a_row_behind,
    )

    # then
    run.refresh_from_db()
    assert result.finished and run.status == "succeeded"
    assert nulls() == 0
    assert run.rows_done == 13  # 12 + the one that came back


def test_rows_that_keep_arriving_behind_the_walk_leave_the_run_open_after_four_walks(
    expand_step,
):
    # given: after every batch the first row turns NULL again, as if old code kept committing
    # rows behind the walk
    legacy_tasks(6)
    first_id = Task.objects.order_by("pk").values_list("pk", flat=True)[0]
    batches = []

    def reopen_the_first_row(report) -> None:
        batches.append(report)
        assert len(batches) < 50, "the walk never gave up"
        Task.objects.filter(pk=first_id).update(priority=None)

    # when
    run, result = fill(
        PRIORITY, using="default", policy=BatchPolicy(batch_size=5), on_batch=reopen_the_first_row
    )

    # then: four walks of two batches (the first one fills all 6 rows, each later one the row
    # that came back), then the run stops unfinished and stays open for the next invocation
    run.refresh_from_db()
    assert (result.finished, result.stopped) == (False, "rows keep arriving")
    assert (result.batches, result.rows) == (8, 9)
    assert run.status == "running" and run.finished_at is None and run.lease_owner == ""
    assert list(Task.objects.filter(priority__isnull=True).values_list("pk", flat=True)) == [
        first_id
    ]


def test_sleep_pauses_between_batches(expand_step):
    legacy_tasks(7)
    events = []

    def sleep(seconds: float) -> None:
        events.append("sleep")
        time.sleep(seconds)

    started = time.monotonic()
    run, result = fill(
        PRIORITY,
        using="default",
        policy=BatchPolicy(batch_size=3, sleep=0.25),
        on_batch=lambda report: events.append(f"batch of {report.rows}"),
        sleep=sleep,
    )

    assert result.finished and nulls() == 0
    assert events == ["batch of 3", "sleep", "batch of 3", "sleep", "batch of 1", "sleep"]
    assert time.monotonic() - started >= 0.75


def test_the_command_pauses_for_sleep_between_batches(expand_step):
    legacy_tasks(7)
    started = time.monotonic()

    backfill(batch_size="3", sleep="0.2")

    assert time.monotonic() - started >= 0.6  # three batches, a pause after each
    assert nulls() == 0


def test_progress_bar_shows_rows_rate_and_eta_on_a_terminal_and_the_summary_the_rate(
    expand_step,
):
    legacy_tasks(12)
    out, err = StringIO(), Terminal()

    call_command("backfill_priority", batch_size="5", target_batch_ms="0", stdout=out, stderr=err)

    bar = err.getvalue()
    assert "12/12" in bar and "row/s" in bar  # rows done of pending, and the rate
    assert "<00:00" in bar  # elapsed<ETA
    assert re.search(
        r"Updated 12 rows in 3 batches, \d+\.\d s \([\d,]+ rows/s\); NULL rows left: 0\.",
        out.getvalue(),
    )


def test_on_a_terminal_the_start_line_comes_before_the_progress_bar(expand_step):
    # given: a terminal showing both the command's output and its progress bar
    legacy_tasks(12)
    terminal = Terminal()

    # when
    call_command(
        "backfill_priority", batch_size="5", target_batch_ms="0", stdout=terminal, stderr=terminal
    )

    # then: the first thing on the screen is the start line, not an empty bar
    screen = terminal.getvalue()
    assert screen.startswith("Starting run #"), screen
    assert "12/12" in screen and "0row [" not in screen


def test_no_progress_keeps_the_terminal_free_of_the_bar(expand_step):
    legacy_tasks(4)
    err = Terminal()

    call_command("backfill_priority", no_progress=True, stdout=StringIO(), stderr=err)

    assert err.getvalue() == ""
    assert nulls() == 0


def test_verbosity_0_prints_nothing(expand_step):
    legacy_tasks(3)
    out = StringIO()

    call_command("backfill_priority", no_progress=True, verbosity=0, stdout=out)
    call_command("backfill_priority", no_progress=True, verbosity=0, stdout=out)

    assert out.getvalue() == ""
    assert nulls() == 0


# -- adaptive batch size ----------------------------------------------------------------------


def test_the_sizer_grows_at_most_a_quarter_per_batch_towards_the_target():
    sizer = BatchSizer(size=1_000, target_seconds=0.1, minimum=100, maximum=50_000)

    # 1,000 keys in 10 ms: the target would take 10,000, but growth is bounded per step
    sizes = [sizer.observe(keys=sizer.size, seconds=sizer.size * 0.00001) for _ in range(12)]

    assert sizes[:3] == [1_250, 1_562, 1_952]
    assert sizes[-1] == 8_000  # converged on 80% of the target / time per key


def test_the_sizer_shrinks_at_most_by_half_and_smooths_one_slow_batch():
    sizer = BatchSizer(size=8_000, target_seconds=0.1, minimum=100, maximum=50_000)
    sizer.observe(keys=8_000, seconds=0.08)  # on its aim

    after_spike = sizer.observe(keys=8_000, seconds=1.0)  # one batch 10x slower

    assert after_spike == 4_000  # not 800: halved at most, and the spike is smoothed
    assert sizer.shrink() == 2_000


def test_the_sizer_keeps_within_its_bounds_and_stays_fixed_without_a_target():
    fast = BatchSizer(size=40_000, target_seconds=0.1, minimum=100, maximum=50_000)
    slow = BatchSizer(size=150, target_seconds=0.1, minimum=100, maximum=50_000)
    fixed = BatchSizer(size=500)

    assert fast.observe(keys=40_000, seconds=0.001) == 50_000
    assert slow.observe(keys=150, seconds=10) == 100
    assert fixed.observe(keys=500, seconds=10) == 500 and fixed.shrink() == 500


def test_with_a_target_the_command_adapts_its_batches(expand_step):
    # given: 2,000 rows; batches of 10 take far less than 100 ms
    legacy_tasks(2_000)
    sizes = []

    # when
    fill(
        PRIORITY,
        using="default",
        policy=BatchPolicy(batch_size=10, target_batch_ms=100),
        on_batch=lambda report: sizes.append(report.batch_size),
    )

    # then: the batch grew, a quarter at most each time, and the run records the last size
    assert sizes[0] == 10 and max(sizes) > 100
    assert all(b <= int(a * 1.25) + 1 for a, b in zip(sizes, sizes[1:], strict=False))
    assert BackfillRun.objects.get().batch_size == sizes[-1]
    assert nulls() == 0


def a_busy_check(using: str) -> str | None:
    """A user health check (BACKFILL_HEALTH_CHECK): busy for its first two calls."""
    a_busy_check.calls = getattr(a_busy_check, "calls", 0) + 1
    return "nightly report running" if a_busy_check.calls <= 2 else None


def test_a_user_health_check_makes_the_backfill_wait_and_is_logged(expand_step, settings):
    settings.BACKFILL_HEALTH_CHECK = "tests.test_backfill.a_busy_check"
    settings.BACKFILL_BACKOFF_SECONDS = 0.05
    a_busy_check.calls = 0
    legacy_tasks(12)

    backfill(batch_size=5)

    run = BackfillRun.objects.get()
    throttles = list(run.events.filter(kind="throttled").values_list("message", flat=True))
    assert throttles == ["health check: nightly report running"]
    assert a_busy_check.calls >= 3 and run.status == "succeeded" and run.throttle_reason == ""


def an_always_busy_check(using: str) -> str | None:
    """A user health check that never clears: a replica that never catches up, say."""
    return "nightly report running"


def test_a_run_backing_off_longer_than_max_throttle_stops_and_resumes_later(expand_step, settings):
    # given: a health check that never clears
    settings.BACKFILL_HEALTH_CHECK = "tests.test_backfill.an_always_busy_check"
    settings.BACKFILL_BACKOFF_SECONDS = 0.05
    legacy_tasks(12)

    # when: the command may back off for 0.2 s at most
    with pytest.raises(CommandError) as stopped:
        backfill(batch_size=5, max_throttle="0.2")

    # then: it says why and how to resume; the run stays open with nothing written
    message = str(stopped.value)
    assert "stopped after backing off for 0.2 s without a batch: health check: nightly" in message
    assert "Run the command again to resume" in message
    run = BackfillRun.objects.get()
    assert run.is_open and run.rows_done == 0 and run.lease_owner == "" and nulls() == 12

    # when: the check clears, the command runs again
    settings.BACKFILL_HEALTH_CHECK = ""
    backfill(batch_size=5)

    # then: the same run finishes
    run.refresh_from_db()
    assert run.status == "succeeded" and run.rows_done == 12 and nulls() == 0


def test_a_health_check_path_that_does_not_import_is_a_clear_error(expand_step, settings):
    settings.BACKFILL_HEALTH_CHECK = "tests.nowhere.check"
    legacy_tasks(3)

    with pytest.raises(CommandError, match="BACKFILL_HEALTH_CHECK"):
        backfill()

    assert nulls() == 3 and not BackfillRun.objects.exists()
