"""The rollouts' migrations (priority, then workspace), forward and backward between any two
steps, on the run's database (the PostgreSQL pass proves them on PostgreSQL)."""

import datetime
import itertools

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from backfills.inspection import column_state
from backfills.models import BackfillRun
from backfills.operations import BackfillNotFinished
from tasks.models import Task as CurrentTask
from tasks.models import Workspace
from tasks.priority import PriorityRule
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time
from tests.helpers import (
    model_at,
    priority_run_parameters,
    reference_date,
    statements_sent,
)

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
    BackfillRun.objects.update(parameters=priority_run_parameters(month_ago))

    # when
    migrator("0003_priority_backfill")

    # then: the same run finished the job, by its own reference date
    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done, run.batches) == ("succeeded", 6, 2)
    assert reference_date(run) == month_ago
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
    assert f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{PRIORITY_INDEX}"' in sql
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
    assert not [name for name, info in constraints.items() if info["check"]]
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
    resumed = run.events.get(kind="resumed")
    assert resumed.origin == "migration" and resumed.actor.startswith("migrate ")
    assert resumed.message == "was paused; a migration finishes the backfill"


# -- the workspace rollout ---------------------------------------------------------------------

WORKSPACE_STEPS = [
    "0005_priority_index",
    "0006_workspaces",
    "0007_workspace_expand",
    "0008_workspace_backfill",
    "0009_workspace_contract",
]
# Before its contract the foreign key is NOT VALID on PostgreSQL (SQLite checks every write);
# the contract validates it, and reversing the contract leaves it valid.
ADDED = {"not valid", "valid"}
# (the column, whether an index serves it, the states its foreign key may be in)
WORKSPACE_EXPECTED = {
    "0005_priority_index": ("missing", False, {"none"}),
    "0006_workspaces": ("missing", False, {"none"}),
    "0007_workspace_expand": ("nullable", True, ADDED),
    "0008_workspace_backfill": ("nullable", True, ADDED),
    "0009_workspace_contract": ("not null", True, {"valid"}),
}


def assert_workspace_step(step: str) -> None:
    state, indexed, keys = WORKSPACE_EXPECTED[step]
    found_state, found_indexed, key = workspace_schema()
    assert (found_state, found_indexed) == (state, indexed) and key in keys, (step, key)


def workspace_foreign_key() -> str:
    """ "none", "not valid" or "valid": the foreign key of tasks_task.workspace_id."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "tasks_task")
        keys = [
            name
            for name, info in constraints.items()
            if info["foreign_key"] and info["columns"] == ["workspace_id"]
        ]
        if not keys:
            return "none"
        if connection.vendor != "postgresql":
            return "valid"
        cursor.execute(
            "SELECT bool_and(convalidated) FROM pg_constraint WHERE conname = ANY(%s)", [keys]
        )
        return "valid" if cursor.fetchone()[0] else "not valid"


def workspace_schema() -> tuple[str, bool, str]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "tasks_task")
    indexed = any(
        info["index"] and info["columns"] == ["workspace_id"] for info in constraints.values()
    )
    state = column_state(CurrentTask, "workspace", using="default")
    return state, indexed, workspace_foreign_key()


@pytest.mark.parametrize(("start", "target"), list(itertools.permutations(WORKSPACE_STEPS, 2)))
def test_migrating_between_any_two_workspace_steps(migrator, start, target):
    # given
    migrator(start)
    assert_workspace_step(start)

    # when
    migrator(target)

    # then
    assert_workspace_step(target)


def old_code_insert_with_priority(title: str, category_id: int | None = None) -> None:
    """INSERT the way the code before the workspace column does: priority, no workspace."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_task (title, description, status, priority, category_id, "
            "created_at, updated_at) VALUES (%s, '', 'todo', 'medium', %s, %s, %s)",
            [title, category_id, now, now],
        )


def workspace_of(title: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT workspace_id FROM tasks_task WHERE title = %s", [title])
        return cursor.fetchone()[0]


def test_the_workspace_rollout_with_legacy_rows_and_a_contract_that_waits_for_them(migrator):
    # given: a category in a workspace of its own, and rows written before the column
    migrator("0006_workspaces")
    product = Workspace.objects.create(name="Product", slug="product")
    engineering = model_at("tasks.Category", "0006_workspaces").objects.create(
        name="Engineering", slug="engineering", workspace_id=product.pk
    )
    default = Workspace.objects.default_id()
    old_code_insert_with_priority("categorised", engineering.pk)
    old_code_insert_with_priority("uncategorised")

    # expand: the column exists, old code's rows get NULL, today's code writes it
    migrator("0007_workspace_expand")
    old_code_insert_with_priority("after expand", engineering.pk)
    new = CurrentTask.objects.create(title="new code", category_id=engineering.pk)
    assert workspace_of("after expand") is None
    assert new.workspace_id == product.pk

    # data migration: every NULL row gets its category's workspace, or the default one
    migrator("0008_workspace_backfill")
    assert (workspace_of("categorised"), workspace_of("uncategorised")) == (product.pk, default)
    assert workspace_of("after expand") == product.pk

    # contract while old code still writes (against the deploy order): refused, nothing changed
    old_code_insert_with_priority("straggler")
    with pytest.raises(BackfillNotFinished, match="1 row of tasks_task still has a NULL"):
        migrator("0009_workspace_contract")
    assert_workspace_step("0008_workspace_backfill")
    assert (
        not MigrationRecorder(connection)
        .migration_qs.filter(app="tasks", name="0009_workspace_contract")
        .exists()
    )
    call_command("backfill", "tasks.task.workspace", no_progress=True, verbosity=0)

    # contract: validated, NOT NULL
    migrator("0009_workspace_contract")
    assert_workspace_step("0009_workspace_contract")
    with pytest.raises(IntegrityError):
        old_code_insert_with_priority("too late")

    # and back: NULL is allowed again, values are kept
    migrator("0007_workspace_expand")
    old_code_insert_with_priority("after rollback")
    assert workspace_of("after rollback") is None
    assert workspace_of("categorised") == product.pk


@pytest.mark.postgres
def test_the_workspace_expand_adds_the_key_not_valid_and_builds_its_index_concurrently(migrator):
    # given
    migrator("0006_workspaces")

    # when
    statements = statements_sent(lambda: migrator("0007_workspace_expand"))

    # then: no statement validates the key or builds an index while blocking writes
    on_tasks = [sql for sql in statements if '"tasks_task"' in sql and "pg_" not in sql]
    assert any('ADD COLUMN IF NOT EXISTS "workspace_id" bigint NULL' in sql for sql in on_tasks)
    assert any(sql.startswith("CREATE INDEX CONCURRENTLY") for sql in on_tasks)
    assert any("FOREIGN KEY" in sql and sql.endswith("NOT VALID") for sql in on_tasks)
    assert not [sql for sql in on_tasks if "VALIDATE" in sql]
    assert not [
        sql for sql in on_tasks if sql.startswith("CREATE INDEX ") and "CONCURRENTLY" not in sql
    ]
    assert workspace_foreign_key() == "not valid"


@pytest.mark.postgres
def test_the_workspace_contract_validates_the_key_then_sets_not_null_without_a_scan_under_lock(
    migrator,
):
    # given: the key as the expand step added it (NOT VALID)
    migrator("0006_workspaces")
    migrator("0008_workspace_backfill")
    assert workspace_foreign_key() == "not valid"

    # when
    statements = statements_sent(lambda: migrator("0009_workspace_contract"))

    # then: the key validated, then the CHECK ... NOT VALID -> VALIDATE -> SET NOT NULL recipe
    def first(fragment: str) -> int:
        return next(i for i, sql in enumerate(statements) if fragment in sql)

    order = [
        first('VALIDATE CONSTRAINT "tasks_task_workspace_id_fk"'),
        first('CHECK ("workspace_id" IS NOT NULL) NOT VALID'),
        first("SET NOT NULL"),
        first("DROP CONSTRAINT"),
    ]
    assert order == sorted(order)
    assert workspace_schema() == ("not null", True, "valid")
