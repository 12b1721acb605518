import datetime
import os
import sqlite3
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.bulk_insert import BulkInsert
from tasks.factories import TaskFactory
from tasks.models import Category, Task, Workspace
from tasks.priority import Priority
from tasks.seeding import PROTOTYPE_POOL_SIZE, TASK_FIELDS
from tests.helpers import Terminal, rewind_to

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def seed(**options) -> str:
    out = StringIO()
    call_command("seed", no_progress=True, stdout=out, **options)
    return out.getvalue()


def snapshot() -> list[tuple]:
    """The seeded data in a comparable form (ids and timestamps differ between runs)."""
    return list(
        Task.objects.order_by("pk").values_list(
            "title", "description", "status", "due_date", "category__slug", "assignee__username"
        )
    )


def test_seed_creates_tasks_and_users_and_loads_missing_reference_data():
    # when
    output = seed(tasks=250, users=7, seed=3)

    # then
    assert Task.objects.count() == 250
    assert get_user_model().objects.count() == 7
    assert Category.objects.count() == 7
    assert Group.objects.count() == 3
    assert "Loaded the reference fixtures" in output
    assert "Seeded 250 tasks and 7 users" in output and "rows/s" in output


def test_seed_keeps_existing_reference_data(reference_data):
    Category.objects.filter(slug="finance").update(name="Money")

    output = seed(tasks=10, users=1, seed=1)

    assert "Loaded the reference fixtures" not in output
    assert Category.objects.get(slug="finance").name == "Money"


def test_seeded_tasks_are_realistic():
    seed(tasks=2000, users=10, seed=5)

    statuses = set(Task.objects.values_list("status", flat=True))
    due_dates = Task.objects.exclude(due_date=None).values_list("due_date", flat=True)
    today = max(Task.objects.values_list("created_at", flat=True)).date()
    assert statuses == {"todo", "in_progress", "blocked", "done"}
    assert Task.objects.filter(due_date=None).count() > 100  # some tasks have no due date
    assert min(due_dates) < today < max(due_dates)  # overdue ones and ones ahead
    assert (max(due_dates) - today).days > 60  # months ahead
    assert Task.objects.values("title").distinct().count() > 1500
    assert Task.objects.exclude(assignee=None).exclude(category=None).count() > 1500


def test_the_same_seed_gives_the_same_data():
    # given
    seed(tasks=300, users=5, seed=42)
    first = snapshot()
    Task.objects.all().delete()
    get_user_model().objects.all().delete()

    # when
    seed(tasks=300, users=5, seed=42)

    # then
    assert snapshot() == first


def every_column() -> list[tuple]:
    """Every seeded value of every task, in id order (ids included: a second seed on the same
    database state reuses the users and categories)."""
    return list(
        Task.objects.order_by("pk").values_list(
            "title", "description", "status", "due_date", "priority", "category__slug",
            "assignee__username", "workspace__slug", "created_at", "updated_at",
        )
    )  # fmt: skip


def test_the_same_seed_and_reference_date_give_the_same_rows_beyond_the_prototype_pool(
    monkeypatch,
):
    # given: more rows than prototypes, so that rows are drawn from the pool
    monkeypatch.setattr("tasks.seeding.PROTOTYPE_POOL_SIZE", 50)
    seed(tasks=400, users=4, seed=11, today="2026-03-01")
    first = every_column()
    Task.objects.all().delete()

    # when
    seed(tasks=400, users=4, seed=11, today="2026-03-01")

    # then: the same rows, row by row, timestamps included
    assert every_column() == first
    assert {row[-2] for row in first} == {
        timezone.make_aware(datetime.datetime(2026, 3, 1))
    }  # created at the start of the reference date


def test_due_dates_are_relative_to_the_reference_date_not_to_the_day_it_runs(monkeypatch):
    # given
    monkeypatch.setattr("tasks.seeding.PROTOTYPE_POOL_SIZE", 50)
    seed(tasks=200, users=2, seed=5, today="2026-03-01")
    march = Task.objects.order_by("pk").values_list("title", "status", "due_date")
    march = list(march)
    Task.objects.all().delete()

    # when: the same seed ten days later
    seed(tasks=200, users=2, seed=5, today="2026-03-11")

    # then: the same tasks, each due ten days later
    later = list(Task.objects.order_by("pk").values_list("title", "status", "due_date"))
    assert [row[:2] for row in later] == [row[:2] for row in march]
    shifts = {(b[2] - a[2]).days for a, b in zip(march, later, strict=True) if a[2] is not None}
    assert shifts == {10}


def test_the_reference_date_defaults_to_today_and_is_printed():
    output = seed(tasks=5, users=1, seed=3)

    assert f"seed 3, reference date {timezone.localdate().isoformat()}." in output


@pytest.mark.parametrize("today", ["2026-13-01", "tomorrow", ""])
def test_a_reference_date_that_is_not_a_date_is_refused_before_anything_is_written(today):
    with pytest.raises(CommandError, match=r"--today must be a date as YYYY-MM-DD"):
        seed(tasks=5, users=1, seed=3, today=today)

    assert Task.objects.count() == 0 and get_user_model().objects.count() == 0


def test_a_different_seed_gives_different_data():
    seed(tasks=100, users=5, seed=1)
    first = snapshot()
    Task.objects.all().delete()

    seed(tasks=100, users=5, seed=2)

    assert snapshot() != first


def test_more_tasks_than_the_prototype_pool_still_come_from_the_factory(monkeypatch):
    # given: a small pool so that rows must reuse prototypes
    monkeypatch.setattr("tasks.seeding.PROTOTYPE_POOL_SIZE", 50)

    # when
    seed(tasks=500, users=3, seed=9)

    # then: every row is one of the 50 factory-built prototypes, each written at least once,
    # with per-row assignments
    assert Task.objects.count() == 500
    assert Task.objects.values("title", "description").distinct().count() == 50
    assert Task.objects.values("category", "assignee").distinct().count() > 20
    assert PROTOTYPE_POOL_SIZE >= 10_000


def test_the_prototypes_are_built_while_the_rows_are_written(monkeypatch, reference_data):
    # given: a pool of 50 spread over 500 rows, written in batches of 10
    monkeypatch.setattr("tasks.seeding.PROTOTYPE_POOL_SIZE", 50)
    built = []
    build = TaskFactory.build
    monkeypatch.setattr(
        "tasks.seeding.TaskFactory.build", lambda **kw: built.append(1) or build(**kw)
    )
    built_by_batch = []
    write = BulkInsert.write

    def recording_write(self, rows):
        written = write(self, rows)
        built_by_batch.append(len(built))
        return written

    monkeypatch.setattr(BulkInsert, "write", recording_write)

    # when
    seed(tasks=500, users=2, seed=3, batch_size=10)

    # then: the server had the first batch after one prototype, not after the whole pool
    assert built_by_batch[0] == 1
    assert built_by_batch[-1] == len(built) == 50


def test_bulk_insert_writes_back_every_value_exactly_as_given(reference_data):
    # given: values COPY's text format must escape, a NULL, a string that reads like one, and a
    # date and an aware datetime
    category = Category.objects.order_by("slug").first()
    moment = timezone.make_aware(datetime.datetime(2026, 3, 4, 5, 6, 7, 891011))
    titles = ["tab\there", "line\nbreak", "back\\slash", "carriage\rreturn", "\\N", "plain"]
    default = Workspace.objects.default_id()
    fields = (*TASK_FIELDS, "priority", "workspace")
    insert = BulkInsert(Task, fields, using="default")
    rows = [
        [
            title,
            f"{title} — ünïcode",
            "todo",
            datetime.date(2026, 1, 31),
            category.pk if index % 2 else None,
            None,
            moment,
            moment,
            Priority.values[index % len(Priority.values)],
            category.workspace_id if index % 2 else default,
        ]
        for index, title in enumerate(titles)
    ]

    # when
    written = insert.write([tuple(insert.cell(value) for value in row) for row in rows])

    # then: every value reads back as it was given
    assert written == len(titles)
    assert list(Task.objects.order_by("pk").values_list(*fields)) == [tuple(r) for r in rows]


def test_each_batch_is_written_in_its_own_transaction(reference_data):
    # (inside the test's transaction each batch's atomic block is a savepoint)
    with CaptureQueriesContext(connection) as queries:
        seed(tasks=25, users=0, seed=1, batch_size=10)

    savepoints = [q for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert Task.objects.count() == 25
    assert Task.objects.filter(assignee__isnull=False).count() == 0  # --users 0: unassigned
    assert len(savepoints) == 3  # 10 + 10 + 5 rows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": "-1"}, "--tasks must be at least 0"),
        ({"tasks": "ten"}, "--tasks must be a whole number"),
        ({"tasks": "1.5"}, "--tasks must be a whole number"),
        ({"users": "-3"}, "--users must be at least 0"),
        ({"users": "x"}, "--users must be a whole number"),
        ({"batch_size": "0"}, "--batch-size must be at least 1"),
        ({"seed": "abc"}, "--seed must be a whole number"),
        ({"database": "nope"}, "Unknown database 'nope'. Use one of: default"),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(options, message):
    # when
    with pytest.raises(CommandError, match=message):
        seed(**{"tasks": "10", **options})

    # then
    assert Task.objects.count() == 0
    assert get_user_model().objects.count() == 0
    assert Category.objects.count() == 0


@pytest.mark.parametrize(
    "argv",
    [["--tasks", "-5"], ["--batch-size", "0"], ["--database", "elsewhere"], ["--users", "many"]],
)
def test_bad_arguments_exit_with_code_1_from_the_command_line(argv):
    result = subprocess.run(
        [sys.executable, "manage.py", "seed", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: ")


def test_no_progress_bar_when_output_is_not_a_terminal():
    err = StringIO()

    call_command("seed", tasks=20, users=1, seed=1, stdout=StringIO(), stderr=err)

    assert err.getvalue() == ""


def test_progress_bar_shows_rate_and_eta_on_a_terminal():
    err = Terminal()

    call_command("seed", tasks=20, users=1, seed=1, stdout=StringIO(), stderr=err)

    bar = err.getvalue()
    assert "20/20" in bar and "task/s" in bar  # count and rate
    assert "<00:00" in bar  # elapsed<ETA


@pytest.mark.postgres
def test_seed_streams_rows_with_copy_on_postgresql():
    with CaptureQueriesContext(connection) as queries:
        seed(tasks=1200, users=3, seed=4, batch_size=500)

    # COPY bypasses Django's query log: the rows arrive without a single INSERT statement.
    assert Task.objects.count() == 1200
    assert not any(
        q["sql"].startswith('INSERT INTO "tasks_task"') for q in queries.captured_queries
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # each batch its own transaction, as in production
def test_seed_batches_do_not_wait_for_the_disk_at_commit_and_leave_the_session_as_it_was():
    with CaptureQueriesContext(connection) as queries:
        seed(tasks=1200, users=3, seed=4, batch_size=500)

    # then: each batch's transaction turned synchronous_commit off for itself only
    local_off = "set_config('synchronous_commit', 'off', true)"
    assert sum(local_off in q["sql"] for q in queries.captured_queries) == 3  # 500 + 500 + 200
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


def test_seed_on_an_unmigrated_database_says_to_migrate(tmp_path):
    # given: an empty SQLite database
    empty = tmp_path / "empty.sqlite3"

    # when
    result = subprocess.run(
        [sys.executable, "manage.py", "seed", "--tasks", "5"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{empty}"},
        capture_output=True,
        text=True,
    )

    # then
    assert result.returncode == 1
    assert "Run: manage.py migrate --database default" in result.stderr
    with sqlite3.connect(empty) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall() == []


def test_seeded_tasks_get_their_priority_from_the_rule():
    from tasks.priority import PriorityRule

    seed(tasks=300, users=2, seed=8)

    rule = PriorityRule(timezone.localdate())
    for status, due_date, priority in Task.objects.values_list("status", "due_date", "priority"):
        assert priority == rule.for_task(status=status, due_date=due_date)


def test_without_priority_writes_tasks_as_the_old_code_did(expand_step):
    seed(tasks=120, users=2, seed=8, without_priority=True, without_workspace=True)

    assert Task.objects.filter(priority__isnull=True).count() == 120


def test_without_workspace_writes_tasks_as_the_old_code_did(workspace_expand_step):
    seed(tasks=120, users=2, seed=8, without_workspace=True)

    assert Task.objects.filter(workspace__isnull=True).count() == 120
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_seeded_tasks_belong_to_their_categorys_workspace_or_the_default_one(reference_data):
    seed(tasks=400, users=2, seed=3)

    tasks = Task.objects.select_related("category", "workspace")
    assert {task.workspace_id for task in tasks if task.category} == set(
        Category.objects.values_list("workspace", flat=True)
    )
    for task in tasks:
        expected = task.category.workspace_id if task.category else Workspace.objects.default_id()
        assert task.workspace_id == expected
    assert any(task.category is None for task in tasks)


def test_without_a_default_workspace_it_says_what_to_load_and_seeds_nothing(reference_data):
    Category.objects.update(workspace=Workspace.objects.get(slug="product"))
    Workspace.objects.filter(slug="default").delete()
    users = get_user_model().objects.count()

    with pytest.raises(CommandError, match="No workspace with slug 'default'.*Nothing was seeded"):
        seed(tasks=10, users=3)

    assert (Task.objects.count(), get_user_model().objects.count()) == (0, users)


@pytest.mark.parametrize("column", ["priority", "workspace"])
def test_without_a_column_is_refused_once_the_column_is_not_null(column):
    with pytest.raises(CommandError, match=f"{column} is NOT NULL here"):
        seed(tasks=10, **{f"without_{column}": True})

    assert Task.objects.count() == 0


@pytest.mark.parametrize(
    ("step", "flags", "message"),
    [
        ("0001_initial", {"without_workspace": True}, "pass --without-priority"),
        ("0001_initial", {"without_priority": True}, "pass --without-workspace"),
        ("0005_priority_index", {}, "pass --without-workspace"),
    ],
)
def test_seeding_before_an_expand_step_needs_its_without_flag(
    transactional_db, step, flags, message
):
    with rewind_to(step):
        with pytest.raises(CommandError, match=message):
            seed(tasks=10, **flags)
        seed(tasks=10, users=1, seed=1, without_priority=step < "0002", without_workspace=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM tasks_task")
            assert cursor.fetchone()[0] == 10
