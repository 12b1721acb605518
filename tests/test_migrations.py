"""The priority rollout's migrations, forward and backward between any two steps, on the run's
database (the PostgreSQL pass proves them on PostgreSQL)."""

import datetime
import itertools

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection
from django.utils import timezone

from tasks.backfill import column_state
from tasks.models import BackfillRun, Task
from tasks.priority import PriorityRule

STEPS = [
    "0001_initial",
    "0002_priority_expand",
    "0003_priority_backfill",
    "0004_priority_contract",
    "0005_priority_index",
]
PRIORITY_INDEX = "tasks_task_priority_due_idx"
# (the column, its database default, whether the priority index exists)
EXPECTED = {
    "0001_initial": ("missing", None, False),
    "0002_priority_expand": ("nullable", None, False),
    "0003_priority_backfill": ("nullable", None, False),
    "0004_priority_contract": ("not null", "medium", False),
    "0005_priority_index": ("not null", "medium", True),
}


@pytest.fixture
def migrator(transactional_db):
    """Migrate tasks to a step; always leaves the database fully migrated afterwards."""

    def migrate(step: str) -> None:
        call_command("migrate", "tasks", step, verbosity=0)

    yield migrate
    call_command("migrate", "tasks", verbosity=0)


def priority_default() -> str | None:
    """The database default of tasks_task.priority, as a plain string (None if there is none)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT column_default FROM information_schema.columns "
                "WHERE table_name = 'tasks_task' AND column_name = 'priority'"
            )
            row = cursor.fetchone()
            default = row[0] if row else None
        else:
            cursor.execute("PRAGMA table_info(tasks_task)")
            default = next((r[4] for r in cursor.fetchall() if r[1] == "priority"), None)
    if default is None:
        return None
    return default.split("::")[0].strip("'")


def has_priority_index() -> bool:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "tasks_task")
    return PRIORITY_INDEX in constraints


def schema() -> tuple[str, str | None, bool]:
    return (
        column_state(Task, "priority", using="default"),
        priority_default(),
        has_priority_index(),
    )


def old_code_insert(title: str, status: str = "todo", due_date=None) -> None:
    """INSERT the way code that predates the priority column does: it never names it."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_task (title, description, status, due_date, created_at, updated_at)"
            " VALUES (%s, '', %s, %s, %s, %s)",
            [title, status, due_date, now, now],
        )


def priority_of(title: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT priority FROM tasks_task WHERE title = %s", [title])
        return cursor.fetchone()[0]


@pytest.mark.parametrize(("start", "target"), list(itertools.permutations(STEPS, 2)))
def test_migrating_between_any_two_steps(migrator, start, target):
    # given
    migrator(start)
    assert schema() == EXPECTED[start]

    # when
    migrator(target)

    # then
    assert schema() == EXPECTED[target]


def test_the_rollout_with_legacy_rows_and_old_code_writing_throughout(migrator):
    today = timezone.localdate()
    rule = PriorityRule(today)
    migrator("0001_initial")
    old_code_insert("before expand", status="done")

    # expand: the column exists, old code's rows get NULL
    migrator("0002_priority_expand")
    old_code_insert("after expand", due_date=today)
    assert priority_of("after expand") is None

    # data migration: every NULL row gets the rule's value
    migrator("0003_priority_backfill")
    assert dict(Task.objects.values_list("title", "priority")) == {
        "before expand": "low",
        "after expand": "urgent",
    }
    old_code_insert("after backfill", due_date=today)
    assert priority_of("after backfill") is None  # still nullable

    # contract: default first, catch-up of the straggler by the rule, then NOT NULL
    migrator("0004_priority_contract")
    assert Task.objects.get(title="after backfill").priority == rule.for_task(
        status="todo", due_date=today
    )
    old_code_insert("after contract", due_date=today)
    assert priority_of("after contract") == "medium"
    assert not Task.objects.filter(priority__isnull=True).exists()

    # and back: NULL is allowed again, values are kept
    migrator("0002_priority_expand")
    old_code_insert("after rollback")
    assert priority_of("after rollback") is None
    assert Task.objects.get(title="before expand").priority == "low"


def test_the_data_migration_is_a_quick_no_op_where_the_command_ran(migrator):
    migrator("0002_priority_expand")
    old_code_insert("legacy")
    call_command("backfill_priority", no_progress=True, verbosity=0)
    runs = list(BackfillRun.objects.values_list("pk", "status", "rows_done"))

    migrator("0003_priority_backfill")

    assert list(BackfillRun.objects.values_list("pk", "status", "rows_done")) == runs
    assert runs[0][1:] == ("succeeded", 1)


def test_the_data_migration_resumes_the_commands_open_run(migrator):
    # given: the command stopped half-way through a run started a month ago; the tasks are due
    # in 10 days: "medium" by today, but 40 days after the run's date, so "low" by it
    migrator("0002_priority_expand")
    today = timezone.localdate()
    for i in range(6):
        old_code_insert(f"legacy {i}", due_date=today + datetime.timedelta(days=10))
    call_command("backfill_priority", batch_size=3, max_batches=1, no_progress=True, verbosity=0)
    month_ago = today - datetime.timedelta(days=30)
    BackfillRun.objects.update(reference_date=month_ago)

    # when
    migrator("0003_priority_backfill")

    # then: the same run finished the job, by its own reference date
    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done, run.batches) == ("succeeded", 6, 2)
    assert run.reference_date == month_ago
    priorities = list(Task.objects.order_by("pk").values_list("priority", flat=True))
    assert priorities == ["medium"] * 3 + ["low"] * 3


@pytest.mark.postgres
def test_the_index_is_built_concurrently_and_replaces_an_invalid_leftover(migrator):
    # given: an interrupted concurrent build left an INVALID index of the same name
    migrator("0004_priority_contract")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX {PRIORITY_INDEX} ON tasks_task (priority, due_date)")
        cursor.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            [PRIORITY_INDEX],
        )

    # when
    migrator("0005_priority_index")

    # then: one valid index, rebuilt
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s",
            [PRIORITY_INDEX],
        )
        assert cursor.fetchall() == [(True,)]


@pytest.mark.postgres
def test_the_index_migration_is_concurrent_and_outside_a_transaction(migrator):
    from io import StringIO

    migrator("0004_priority_contract")
    out = StringIO()
    call_command("sqlmigrate", "tasks", "0005_priority_index", stdout=out)

    sql = out.getvalue()
    assert f'CREATE INDEX CONCURRENTLY "{PRIORITY_INDEX}"' in sql
    assert "BEGIN;" not in sql


@pytest.mark.postgres
def test_the_contract_step_follows_the_safe_recipe_on_postgresql(migrator):
    # given: a legacy row the catch-up has to fill
    migrator("0003_priority_backfill")
    old_code_insert("straggler")
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    # when
    with connection.execute_wrapper(record):
        migrator("0004_priority_contract")

    # then: default, catch-up, NOT VALID check, VALIDATE, SET NOT NULL, drop the check
    def first(fragment: str) -> int:
        return next(i for i, sql in enumerate(statements) if fragment in sql)

    def last(fragment: str) -> int:
        return max(i for i, sql in enumerate(statements) if fragment in sql)

    order = [
        first("SET DEFAULT 'medium'"),
        first('UPDATE "tasks_task" SET "priority"'),
        first("NOT VALID"),
        first("VALIDATE CONSTRAINT"),
        first("SET NOT NULL"),
        last("DROP CONSTRAINT"),
    ]
    assert order == sorted(order)
    assert priority_of("straggler") == "medium"  # todo, no due date: by the rule


@pytest.mark.postgres
def test_a_failed_validation_leaves_no_check_constraint_behind(migrator):
    # given: the state just before NOT NULL, with a NULL row the catch-up did not see
    from django.db.migrations.loader import MigrationLoader

    migrator("0003_priority_backfill")
    old_code_insert("still null")
    loader = MigrationLoader(connection)
    contract = loader.get_migration("tasks", "0004_priority_contract")
    from_state = loader.project_state(("tasks", "0003_priority_backfill"))
    contract.operations[0].state_forwards("tasks", from_state)  # the default
    set_not_null = contract.operations[2]
    to_state = from_state.clone()
    set_not_null.state_forwards("tasks", to_state)

    # when
    with pytest.raises(IntegrityError):
        with connection.schema_editor(atomic=False) as editor:
            set_not_null.database_forwards("tasks", editor, from_state, to_state)

    # then: still nullable, and no check left to break the old code's updates
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "tasks_task")
    assert not [name for name in constraints if name.endswith("_notnull")]
    assert column_state(Task, "priority", using="default") == "nullable"


def test_the_data_migration_finishes_a_paused_run_and_records_it(migrator):
    # given: the command stopped after one batch, then an operator paused the run
    migrator("0002_priority_expand")
    for i in range(4):
        old_code_insert(f"legacy {i}")
    call_command(
        "backfill_priority", batch_size=2, max_batches=1, target_batch_ms=0, no_progress=True,
        verbosity=0,
    )  # fmt: skip
    call_command("backfill_priority", pause=True, verbosity=0)

    # when
    migrator("0003_priority_backfill")

    # then: the schema change needs every row, so the migration carried the run on, on record
    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done) == ("succeeded", 4)
    assert ("resumed", "migrate (0003/0004)") in run.events.values_list("kind", "actor")
