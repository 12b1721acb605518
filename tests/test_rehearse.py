"""manage.py rehearse: the rollout under live traffic, and the report that must not lie."""

import dataclasses
import json
import threading
import time
from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from migration_safety.rehearsal import (
    MIN_STEP_QUERIES,
    EndState,
    RehearsalReport,
    StepReport,
    Traffic,
)
from migration_safety.rollouts import Step, get_rollout, register, unregister
from tests.conftest import IS_POSTGRES

PRIORITY_ROLLOUT = get_rollout("priority")
WORKSPACE_ROLLOUT = get_rollout("workspace")


@pytest.fixture
def server(django_db_blocker):
    """The PostgreSQL server, outside any test database: rehearse makes its own scratch one.

    (A django_db test would refuse connections to the aliases the rehearsal adds.)
    """
    with django_db_blocker.unblock():
        yield


GOOD_END = EndState(null_rows=0, not_null=True, column_default="'medium'", indexes_valid=True)


def report_with(step: StepReport, end_state: EndState | None = GOOD_END) -> RehearsalReport:
    return RehearsalReport(settings={"stall_limit_ms": 3000}, steps=[step], end_state=end_state)


def test_a_clean_step_is_no_problem():
    step = StepReport(name="contract", command="migrate", latencies=[0.01, 2.9])

    assert report_with(step).problems() == []


def test_a_failed_application_query_fails_the_rehearsal():
    step = StepReport(name="contract", command="migrate", latencies=[0.01])
    step.errors = Counter({"old insert: null value in column": 3})

    assert report_with(step).problems() == ["contract: 3 application queries failed"]


def test_a_query_stalled_longer_than_lock_timeout_plus_one_second_fails_the_rehearsal():
    slow_write = StepReport(
        name="expand", command="migrate", latencies=[3.2], slowest_by_kind={"old insert": 3.2}
    )
    long_wait = StepReport(name="expand", command="migrate", longest_lock_wait=3.5)

    assert "over the 3.0 s limit" in report_with(slow_write).problems()[0]
    assert "waited 3.5 s" in report_with(long_wait).problems()[0]


def test_a_slow_read_that_did_not_wait_is_reported_but_is_no_stall():
    # a list page scanning an unindexed column for 3.2 s, never waiting on a lock
    scan = StepReport(
        name="backfill",
        command="backfill_priority",
        latencies=[0.01, 3.2],
        slowest_by_kind={"new list page": 3.2, "old insert": 0.01},
        longest_lock_wait=0.02,
    )

    assert report_with(scan).problems() == []
    assert scan.as_dict()["max_ms"] == 3200.0
    assert scan.as_dict()["slowest_ms_by_kind"]["new list page"] == 3200.0


def test_a_wrong_end_state_or_an_unfinished_rollout_fails_the_rehearsal():
    step = StepReport(name="index", command="migrate")
    invalid_index = EndState(null_rows=0, not_null=True, column_default="", indexes_valid=False)
    not_validated = EndState(
        null_rows=0, not_null=True, column_default="", indexes_valid=True, constraints_valid=False
    )

    assert "end state is wrong" in report_with(step, invalid_index).problems()[0]
    assert "end state is wrong" in report_with(step, not_validated).problems()[0]
    assert report_with(step, None).problems() == ["the rollout did not reach its end"]


def test_percentiles_are_nearest_rank():
    step = StepReport(name="s", command="c", latencies=[i / 1000 for i in range(1, 101)])

    data = step.as_dict()

    assert (data["p50_ms"], data["p99_ms"], data["max_ms"]) == (50.0, 99.0, 100.0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("tasks", "0", "--tasks must be at least 1"),
        ("tasks", "many", "--tasks must be a whole number"),
        ("rate", "0", "--rate must be at least 1"),
        ("clients", "33", "--clients must be at most 32"),
        ("blocker_seconds", "-1", "--blocker-seconds must be at least 0"),
        ("baseline_seconds", "soon", "--baseline-seconds must be a number"),
        ("database", "nope", "Unknown database 'nope'"),
        ("rollout", "nope", "no rollout named 'nope' is registered .known: priority, workspace"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(option, value, message):
    with pytest.raises(CommandError, match=message):
        call_command("rehearse", **{option: value}, stdout=StringIO())


@pytest.mark.skipif(IS_POSTGRES, reason="checks the refusal on SQLite")
def test_sqlite_is_refused_with_what_to_do(db):
    with pytest.raises(CommandError, match="rehearse needs PostgreSQL"):
        call_command("rehearse", tasks="10", stdout=StringIO())


@pytest.mark.postgres
def test_the_rollout_under_traffic_fails_no_query_and_ends_contracted_and_indexed(server):
    # given: 20,000 legacy rows, traffic, a blocker during expand
    out, progress = StringIO(), StringIO()

    # when
    call_command("rehearse", tasks="20000", json=True, stdout=out, stderr=progress)

    # then
    report = json.loads(out.getvalue())
    steps = {step["step"]: step for step in report["steps"]}
    assert list(steps) == ["baseline", *(step.name for step in PRIORITY_ROLLOUT.steps), "after"]
    assert report["ok"] and report["problems"] == []
    for step in steps.values():
        assert step["queries"] > 0, step
        assert step["failed_queries"] == 0, step["errors"]
        assert step["max_ms"] <= report["settings"]["stall_limit_ms"], step
        assert step["longest_lock_wait_ms"] <= report["settings"]["stall_limit_ms"], step
    # The blocker made expand give up on its lock at least once, and the app waited meanwhile.
    assert steps["expand"]["migration_lock_timeouts"] >= 1
    assert steps["expand"]["longest_lock_wait_ms"] > 0
    assert steps["backfill"]["rows_backfilled"] >= 20_000
    # The page the index serves waits for it: sent by no step before the index, then by the code.
    for name in ("baseline", "expand", "backfill", "data migration", "contract"):
        assert "new due-date page" not in steps[name]["slowest_ms_by_kind"], name
    assert "new due-date page" in steps["after"]["slowest_ms_by_kind"]
    assert report["end_state"] == {
        "null_rows": 0,
        "not_null": True,
        "column_default": "'medium'::character varying",
        "indexes_valid": True,
        "constraints_valid": True,
    }
    assert "[5/6] index" in progress.getvalue()


@pytest.mark.postgres
def test_the_workspace_rollout_under_traffic_fails_no_query_and_ends_validated(server):
    # given: 20,000 rows written before the workspace column, traffic, a blocker during expand
    out = StringIO()

    # when
    call_command(
        "rehearse", rollout="workspace", tasks="20000", json=True, stdout=out, stderr=StringIO()
    )

    # then: every step, old code retired before the data migration, no query failed or stalled
    report = json.loads(out.getvalue())
    steps = {step["step"]: step for step in report["steps"]}
    assert list(steps) == ["baseline", *(step.name for step in WORKSPACE_ROLLOUT.steps), "after"]
    assert report["ok"] and report["problems"] == []
    for step in steps.values():
        assert step["queries"] > 0, step
        assert step["failed_queries"] == 0, step["errors"]
        assert step["longest_lock_wait_ms"] <= report["settings"]["stall_limit_ms"], step
    assert "old insert" in steps["backfill"]["slowest_ms_by_kind"]
    assert "old insert" not in steps["contract"]["slowest_ms_by_kind"]
    assert steps["expand"]["migration_lock_timeouts"] >= 1
    assert steps["backfill"]["rows_backfilled"] >= 20_000
    assert report["end_state"] == {
        "null_rows": 0,
        "not_null": True,
        "column_default": "",
        "indexes_valid": True,
        "constraints_valid": True,
    }


@pytest.mark.postgres
def test_a_rollout_that_breaks_running_code_is_reported_and_exits_non_zero(server):
    # given: the expand step rolled back while the new code that writes priority is running
    unsafe = dataclasses.replace(
        PRIORITY_ROLLOUT,
        name="unsafe",
        steps=(
            PRIORITY_ROLLOUT.steps[0],
            Step("roll back expand", ("migrate", "tasks", "0001_initial")),
        ),
    )
    register(unsafe)
    out = StringIO()

    # when
    try:
        with pytest.raises(CommandError) as failure:
            call_command(
                "rehearse",
                rollout="unsafe",
                tasks="2000",
                blocker_seconds="0",
                baseline_seconds="0.5",
                json=True,
                stdout=out,
                stderr=StringIO(),
            )
    finally:
        unregister("unsafe")

    # then
    report = json.loads(out.getvalue())
    after = report["steps"][-1]
    assert after["step"] == "after" and after["failed_queries"] > 0
    assert any('column "priority"' in error["error"] for error in after["errors"])
    assert "after: " in str(failure.value) and "application queries failed" in str(failure.value)
    assert not report["ok"]


def test_a_step_that_ends_at_once_is_watched_until_the_application_ran_into_it():
    # given: traffic sending a query every 20 ms into a step whose command has just returned
    traffic = Traffic(None, using="default", rate=150, clients=1, seed=1)
    step = StepReport(name="reference data", command="loaddata workspaces categories")
    traffic.current = step
    stop = threading.Event()

    def application() -> None:
        while not stop.wait(0.02):
            traffic.record("old insert", 0.001)

    thread = threading.Thread(target=application)
    thread.start()
    try:
        # when
        traffic.wait_for_queries(step, MIN_STEP_QUERIES, timeout=5)
    finally:
        stop.set()
        thread.join()

    # then: the step reports on that many queries, not on none
    assert len(step.latencies) >= MIN_STEP_QUERIES


def test_a_step_without_traffic_is_not_watched_past_the_timeout():
    traffic = Traffic(None, using="default", rate=150, clients=1, seed=1)
    step = StepReport(name="contract", command="migrate tasks")
    traffic.current = step

    started = time.monotonic()
    traffic.wait_for_queries(step, MIN_STEP_QUERIES, timeout=0.2)

    assert 0.2 <= time.monotonic() - started < 2
    assert step.latencies == []
