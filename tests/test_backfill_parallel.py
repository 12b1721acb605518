"""Parallel lanes (backfill_priority --workers N): several connections fill one run, each
walking its own key range with its own checkpoint, on real PostgreSQL."""

import functools
import re
import signal
import subprocess
import threading
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection
from django.db.models import Q, Sum, Value
from django.utils import timezone

from backfills.controls import cancel_run
from backfills.engine import Backfill, BatchPolicy
from backfills.lanes import plan_lanes
from backfills.models import BackfillLane, BackfillRun
from backfills.orchestration import fill
from tests.helpers import (
    PRIORITY,
    backfill_output,
    model_at,
    priority_run_parameters,
    reference_date,
    wait_until,
)
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time
from tests.test_backfill_operations_postgres import manage
from tests.test_backfill_postgres import assert_rule_applied_to, hold_row_lock, seed_legacy

Category = model_at("tasks.Category", "0002_priority_expand")

pytestmark = pytest.mark.postgres


backfill = functools.partial(backfill_output, "backfill_priority")


def assert_lanes_match_the_data(run: BackfillRun) -> None:
    """Every lane's checkpoint is exact: rows up to its last key are filled, none after it,
    and the counts add up to the run's."""
    lanes = list(run.lanes.all())
    for lane in lanes:
        in_lane = Task.objects.filter(pk__gt=lane.after_key)
        if lane.upto_key is not None:
            in_lane = in_lane.filter(pk__lte=lane.upto_key)
        done_to = lane.after_key if lane.last_key is None else lane.last_key
        assert not in_lane.filter(pk__lte=done_to, priority__isnull=True).exists(), lane
        assert not in_lane.filter(pk__gt=done_to, priority__isnull=False).exists(), lane
        assert lane.rows_done == in_lane.filter(priority__isnull=False).count(), lane
    assert sum(lane.rows_done for lane in lanes) == run.rows_done


def each_lane_has_done(process, *, rows: int) -> bool:
    """Whether each of the 2 lanes has done ``rows`` rows; fails at once if the command died."""
    assert process.poll() is None, process.stderr.read()
    return BackfillLane.objects.filter(rows_done__gte=rows).count() == 2


def two_lanes_under_way(*, sleep: str) -> subprocess.Popen:
    """A 2-worker command in another process (batches of 100 keys, ``sleep`` seconds apart),
    returned once each lane has filled a row."""
    process = manage(
        "backfill_priority", "--workers=2", "--batch-size=100", "--target-batch-ms=0",
        f"--sleep={sleep}", "--no-progress",
    )  # fmt: skip
    try:
        wait_until(lambda: each_lane_has_done(process, rows=1), what="both lanes under way")
    except BaseException:
        process.kill()
        raise
    return process


def test_two_workers_fill_every_row_once_in_disjoint_lanes_at_the_same_time(expand_step):
    # given: legacy rows with gaps in their ids
    seed_legacy(6_000)
    Task.objects.filter(pk__in=Task.objects.order_by("pk").values("pk")[1000:1400]).delete()
    threads = []

    # when
    run, result = fill(
        PRIORITY,
        using="default",
        policy=BatchPolicy(batch_size=200, sleep=0.01),
        workers=2,
        on_batch=lambda report: threads.append(threading.current_thread().name),
    )

    # then: both lanes worked, interleaved, and each row was filled once, by the rule
    run.refresh_from_db()
    assert result.finished and (run.status, run.rows_done, run.workers) == ("succeeded", 5_600, 2)
    lanes = list(run.lanes.all())
    assert [lane.number for lane in lanes] == [1, 2] and all(lane.finished for lane in lanes)
    assert lanes[0].upto_key == lanes[1].after_key and lanes[1].upto_key is None
    assert_lanes_match_the_data(run)
    assert set(threads) == {"backfill-0", "backfill-1"}
    switches = [before != after for before, after in zip(threads, threads[1:], strict=False)]
    assert sum(switches) > 5
    assert run.batches == len(threads) == result.batches
    assert not Task.objects.filter(priority__isnull=True).exists()
    assert_rule_applied_to(Task.objects.all(), reference_date(run))
    assert list(run.events.values_list("kind", flat=True)) == [
        "succeeded",
        "processing",
        "created",
    ]


def test_a_parallel_run_killed_with_sigkill_resumes_every_lane_where_it_stopped(expand_step):
    # given: a command filling 20,000 rows with 2 workers
    seed_legacy(20_000)
    process = manage(
        "backfill_priority", "--workers=2", "--batch-size=250", "--target-batch-ms=0",
        "--sleep=0.05", env={"BACKFILL_LEASE_SECONDS": "2"},
    )  # fmt: skip
    wait_until(lambda: each_lane_has_done(process, rows=1_000), what="both lanes under way")

    # when: it is killed mid-batch, without a chance to clean up
    process.send_signal(signal.SIGKILL)
    process.wait()

    # then: each lane's checkpoint matches the data exactly
    run = BackfillRun.objects.get()
    assert run.status == "running" and 2_000 <= run.rows_done < 20_000
    assert run.rows_done == Task.objects.filter(priority__isnull=False).count()
    assert_lanes_match_the_data(run)
    lanes_before = list(run.lanes.values_list("pk", "after_key", "upto_key"))

    # when: the command runs again, once the dead process's lease has expired
    wait_until(lambda: not BackfillRun.objects.get().lease_is_live, what="the lease to expire")
    out = backfill(workers=2, batch_size=250)

    # then: the same run and the same lanes carried on; every row was filled exactly once
    run.refresh_from_db()
    assert f"Resuming run #{run.pk}" in out
    assert (run.status, run.rows_done) == ("succeeded", 20_000)
    assert list(run.lanes.values_list("pk", "after_key", "upto_key")) == lanes_before
    assert_lanes_match_the_data(run)
    assert_rule_applied_to(Task.objects.all(), reference_date(run))


def test_max_batches_bounds_all_lanes_together_and_one_worker_finishes_the_lanes(expand_step):
    # given
    seed_legacy(3_000)

    # when: 2 workers, 3 batches in all
    out = backfill(workers=2, batch_size=100, max_batches=3)

    # then
    run = BackfillRun.objects.get()
    assert (run.status, run.batches, run.rows_done) == ("running", 3, 300)
    assert "is not finished" in out and run.lanes.count() == 2
    assert_lanes_match_the_data(run)

    # when: resumed with a single worker, which walks the lanes one after the other
    backfill(workers=1, batch_size=500)

    # then
    run.refresh_from_db()
    assert (run.status, run.rows_done) == ("succeeded", 3_000)
    assert run.lanes.count() == 2 and not run.lanes.filter(finished=False).exists()
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_a_run_started_on_one_connection_carries_on_in_lanes_after_its_checkpoint(expand_step):
    # given: a run that did 2 batches of 500 on one connection
    seed_legacy(3_000)
    backfill(batch_size=500, max_batches=2)
    run = BackfillRun.objects.get()
    done_to = run.last_key

    # when: it is resumed with 2 workers
    backfill(workers=2, batch_size=500)

    # then: the lanes took the keys after its checkpoint, two batches each, and the pass
    # after them found nothing left without walking those keys again
    run.refresh_from_db()
    assert (run.status, run.rows_done) == ("succeeded", 3_000)
    lane_1, lane_2 = run.lanes.all()
    assert lane_1.after_key == done_to and (lane_1.batches, lane_2.batches) == (2, 2)
    assert run.batches == 6
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_rows_committed_behind_the_lanes_and_after_the_last_key_are_filled(expand_step):
    # given
    seed_legacy(2_000)
    first = Task.objects.order_by("pk").first()
    late: list[int] = []

    def on_batch(report) -> None:
        if not late and first.pk < report.last_key <= first.pk + 999:
            # behind lane 1's walk (a row whose transaction committed late) ...
            Task.objects.filter(pk=first.pk).update(priority=None)
            # ... and a row old code inserts after the largest key the lanes were planned with
            late.append(Task.objects.create(title="old code", status="done").pk)
            Task.objects.filter(pk=late[0]).update(priority=None)

    # when
    run, result = fill(
        PRIORITY, using="default", policy=BatchPolicy(batch_size=100), workers=2, on_batch=on_batch
    )

    # then: the pass after the lanes found the first; the open-ended last lane took the second
    assert result.finished and run.status == "succeeded" and late
    assert Task.objects.get(pk=first.pk).priority is not None
    assert Task.objects.get(pk=late[0]).priority == "low"
    assert not Task.objects.filter(priority__isnull=True).exists()


@pytest.mark.parametrize(("workers", "processes"), [(1, 1), (2, 2)])
def test_the_scan_for_rows_left_behind_takes_as_many_server_processes_as_workers(
    expand_step, workers, processes
):
    # given: the plan of every statement of this connection sent back to it (auto_explain),
    # and costs that make a parallel scan worth its while on a table this small
    seed_legacy(2_000)
    plans: list[str] = []
    connection.ensure_connection()
    connection.connection.add_notice_handler(lambda notice: plans.append(notice.message_primary))
    try:
        with connection.cursor() as cursor:
            try:
                cursor.execute("LOAD 'auto_explain'")
            except DatabaseError as error:  # a superuser's (the README's database role is one)
                pytest.skip(f"auto_explain cannot be loaded by this role: {error}")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_level = notice",
                "min_parallel_table_scan_size = 0",
                "parallel_setup_cost = 0",
                "parallel_tuple_cost = 0",
            ):
                cursor.execute(f"SET {setting}")

        # when
        run, result = fill(
            PRIORITY, using="default", policy=BatchPolicy(batch_size=500), workers=workers
        )
    finally:
        connection.close()  # the next test gets a session without these settings

    # then: the last scan of the whole table (not the probe of its first keys) found nothing,
    # in one process with 1 worker (background work leaves the other cores to the
    # application), in as many as the run was granted with more
    assert result.finished and run.status == "succeeded"
    scans = [plan for plan in plans if "MIN(" in plan and " IN (" not in plan]
    assert scans
    planned = re.search(r"Workers Planned: (\d+)", scans[-1])
    assert (1 + int(planned.group(1)) if planned else 1) == processes, scans[-1]


def test_a_failing_lane_stops_the_others_and_the_run_resumes_once_the_lock_is_gone(expand_step):
    # given: the second lane's 5th row is locked by another session
    seed_legacy(4_000)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    blocker = hold_row_lock(ids[2_004])
    try:
        # when
        with pytest.raises(CommandError, match="lock timeout"):
            backfill(workers=2, batch_size=10, sleep="0.02", lock_timeout=100, max_retries=1)

        # then: the run failed, the other lane stopped too, and every checkpoint is exact
        run = BackfillRun.objects.get()
        assert run.status == "failed" and "attempt 2 of 2" in run.last_error
        lane_1, lane_2 = run.lanes.all()
        assert lane_2.rows_done == 0 and not lane_1.finished
        assert 0 < lane_1.rows_done < 2_000
        assert_lanes_match_the_data(run)
        assert list(run.events.values_list("kind", flat=True)).count("failed") == 1
    finally:
        blocker.rollback()
        blocker.close()

    # when: the lock is gone and the command runs again
    backfill(workers=2, batch_size=500)

    # then
    run.refresh_from_db()
    assert (run.status, run.rows_done) == ("succeeded", 4_000)
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_cancelling_a_parallel_run_stops_every_lane_and_is_recorded_once(expand_step):
    # given: a 2-worker run in another process
    seed_legacy(20_000)
    process = two_lanes_under_way(sleep="0.05")
    try:
        # when
        backfill(cancel=True)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    # then: both lanes stopped; the process says so and exits 0; one cancellation recorded
    run = BackfillRun.objects.get()
    assert process.returncode == 0, err
    assert f"Run #{run.pk} was cancelled." in out
    assert run.status == "cancelled" and run.lease_owner == ""
    kinds = list(run.events.values_list("kind", flat=True))
    assert kinds.count("cancelled") == 1 and kinds.count("cancel requested") == 1
    done = run.rows_done
    time.sleep(0.3)
    assert Task.objects.filter(priority__isnull=False).count() == done < 20_000
    assert_lanes_match_the_data(run)


def test_a_worker_task_fills_a_background_run_in_lanes(expand_step):
    from backfills.workers import run_slice

    # given
    seed_legacy(3_000)
    backfill(background=True, workers=2)
    run = BackfillRun.objects.get()

    # when
    outcome = run_slice(run.pk, task_id=run.worker_task_id, using="default")

    # then
    run.refresh_from_db()
    assert "finished" in outcome
    assert (run.status, run.rows_done, run.workers) == ("succeeded", 3_000, 2)
    assert run.lanes.count() == 2
    assert_lanes_match_the_data(run)


def test_cancel_while_nobody_works_on_a_parallel_run_leaves_its_lanes_as_they_were(expand_step):
    seed_legacy(1_000)
    backfill(workers=2, batch_size=100, max_batches=2)
    run = BackfillRun.objects.get()
    before = list(run.lanes.values())

    cancel_run(run, using="default", actor="test", origin="command")

    run.refresh_from_db()
    assert run.status == "cancelled" and list(run.lanes.values()) == before
    out = backfill(workers=2)
    new_run = BackfillRun.objects.order_by("-pk").first()
    assert new_run.pk != run.pk and new_run.status == "succeeded" and "Starting" in out
    assert run.rows_done == 200
    assert new_run.rows_done == 800 and new_run.lanes.aggregate(Sum("rows_done")) == {
        "rows_done__sum": 800
    }


# -- planning the lanes ------------------------------------------------------------------------


def test_lanes_split_the_pending_keys_into_equal_ranges_and_the_last_is_open_ended(expand_step):
    seed_legacy(1_000)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    Task.objects.filter(pk__in=ids[:100]).update(priority="low")  # already filled
    backfill = PRIORITY.backfill(Task, priority_run_parameters(timezone.localdate()))

    lanes = plan_lanes(backfill, 3, using="default")

    first, last = ids[100], ids[-1]
    assert lanes[0][0] == first - 1 and lanes[-1][1] is None
    assert [after for after, _ in lanes[1:]] == [upto for _, upto in lanes[:-1]]
    widths = [upto - after for after, upto in lanes[:-1]] + [last - lanes[-1][0]]
    assert max(widths) - min(widths) <= 1 and sum(widths) == last - first + 1


def test_no_lanes_when_nothing_is_pending_and_never_more_lanes_than_keys(expand_step):
    backfill = PRIORITY.backfill(Task, priority_run_parameters(timezone.localdate()))
    assert plan_lanes(backfill, 4, using="default") == []

    seed_legacy(3)
    ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    lanes = plan_lanes(backfill, 8, using="default")

    assert len(lanes) == ids[-1] - ids[0] + 1 == 3
    assert all(upto is None or after < upto for after, upto in lanes)


@pytest.mark.django_db
def test_a_backfill_on_a_key_that_is_not_an_integer_refuses_workers_before_writing():
    from backfills.registry import BackfillDefinition, register, unregister

    definition = register(
        BackfillDefinition(
            name="tests.category.description",
            model="tasks.Category",
            field="description",
            pending=Q(description=""),
            value=lambda model, parameters: Value("described"),
            key="slug",
        )
    )
    try:
        with pytest.raises(CommandError, match="parallel lanes need an integer key"):
            call_command("backfill", definition.name, workers="2", stdout=StringIO())
        with pytest.raises(CommandError, match="parallel lanes need an integer key"):
            call_command(
                "backfill", definition.name, workers="2", background=True, stdout=StringIO()
            )
    finally:
        unregister(definition.name)
    assert not BackfillRun.objects.exists()


@pytest.mark.django_db
def test_lanes_need_an_integer_key():
    by_slug = Backfill(model=Category, field="name", value="x", pending=Q(), key="slug")

    with pytest.raises(ValueError, match="parallel lanes need an integer key"):
        plan_lanes(by_slug, 2, using="default")
