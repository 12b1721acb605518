"""The registry of backfills and the one generic command that runs any of them."""

import functools
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Q, Value
from django.utils import timezone

from backfills.models import BackfillRun
from backfills.registry import (
    BackfillDefinition,
    DuplicateBackfill,
    UnknownBackfill,
    definitions,
    get_definition,
    register,
    unregister,
)
from tasks.models import Task
from tests.helpers import (
    PRIORITY,
    WORKSPACE,
    PriorityStepTask,
    backfill_output,
    create_legacy_tasks,
)
from tests.test_backfill import BAD_ARGUMENTS

ROOT = Path(__file__).resolve().parent.parent


backfill = functools.partial(backfill_output, "backfill")


def test_both_backfills_are_registered_by_the_app_that_owns_the_table():
    assert [definition.name for definition in definitions()] == [
        "tasks.task.priority",
        "tasks.task.workspace",
    ]
    assert (WORKSPACE.model, WORKSPACE.field, WORKSPACE.pending) == (
        "tasks.Task",
        "workspace",
        Q(workspace__isnull=True),
    )
    assert WORKSPACE.model_class() is Task


def test_a_name_is_registered_once():
    with pytest.raises(DuplicateBackfill, match="'tasks.task.priority' is already registered"):
        register(BackfillDefinition(name=PRIORITY.name, model=Task, field="title", value=None))

    assert get_definition(PRIORITY.name) is PRIORITY


def test_an_unknown_name_is_a_clear_error_naming_the_known_ones():
    with pytest.raises(UnknownBackfill) as error:
        get_definition("tasks.task.colour")

    assert str(error.value) == (
        "No backfill named 'tasks.task.colour' is registered (registered: tasks.task.priority, "
        "tasks.task.workspace). See manage.py backfill --list."
    )


@pytest.fixture
def archived_descriptions():
    """A third backfill, declared by a test as a team would declare its own column's."""
    definition = register(
        BackfillDefinition(
            name="tests.task.description",
            model=Task,
            field="description",
            pending=Q(status="done") & ~Q(description="archived"),
            pending_description="a done status and no archive note",
            value=lambda model, parameters: Value(parameters["note"]),
            parameters=lambda model, using: {"note": "archived"},
        )
    )
    yield definition
    unregister(definition.name)


@pytest.mark.django_db
def test_a_definition_is_all_the_command_needs(archived_descriptions):
    # given: four tasks, two of them done
    for status in ("done", "todo", "done", "blocked"):
        Task.objects.create(title=status, status=status)

    # when
    output = backfill("tests.task.description", batch_size="1")

    # then: the done ones are filled with the run's parameter, the rest untouched
    assert "Starting run #" in output and "(note archived): 2 rows with a done status" in output
    assert "pending rows left: 0" in output
    assert sorted(Task.objects.values_list("status", "description")) == [
        ("blocked", ""),
        ("done", "archived"),
        ("done", "archived"),
        ("todo", ""),
    ]
    run = BackfillRun.objects.get()
    assert (run.name, run.parameters, run.status) == (
        "tests.task.description",
        {"note": "archived"},
        "succeeded",
    )


@pytest.mark.django_db
def test_a_not_null_column_with_pending_rows_of_its_own_is_listed_and_started(
    archived_descriptions,
):
    # given: description is NOT NULL, but one row matches the definition's own filter
    Task.objects.create(title="done", status="done")

    listed = backfill("--list")
    started = backfill(archived_descriptions.name, background=True)

    row = next(line for line in listed.splitlines() if line.startswith("tests.task.description"))
    assert row.split()[2] == "1"
    assert "Started run #" in started
    assert BackfillRun.objects.get().name == archived_descriptions.name


def test_list_shows_each_backfill_with_its_column_pending_rows_and_open_run(
    workspace_expand_step,
):
    # given: rows without a workspace, and a run stopped after one batch
    create_legacy_tasks([Task(title=f"legacy {i}") for i in range(6)])
    backfill(WORKSPACE.name, batch_size="2", max_batches="1")
    run = BackfillRun.objects.get()

    # when
    listing = backfill(list=True).splitlines()

    # then
    assert listing[0].split() == ["backfill", "table.column", "pending", "rows", "open", "run"]
    assert listing[1].split() == [
        "tasks.task.priority",
        "tasks_task.priority",
        "0",
        "(NOT",
        "NULL)",
        "-",
    ]
    assert listing[3].split()[:4] == [
        "tasks.task.workspace",
        "tasks_task.workspace_id",
        "4",
        f"#{run.pk}",
    ]


def test_list_says_when_a_column_is_not_there_yet(expand_step):
    listing = backfill(list=True)

    assert "tasks_task.workspace_id" in listing and "no column yet" in listing


@pytest.mark.django_db
def test_the_command_needs_a_registered_name():
    with pytest.raises(CommandError, match="Name the backfill: manage.py backfill NAME"):
        backfill()
    with pytest.raises(CommandError, match="No backfill named 'tasks.task.colour'"):
        backfill("tasks.task.colour")


def test_an_unknown_name_exits_with_code_1_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "manage.py", "backfill", "tasks.task.colour"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert "CommandError: No backfill named 'tasks.task.colour' is registered" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # The priority spelling of each is tested at its expand step (test_backfill.py).
        *BAD_ARGUMENTS,
        ({"pause": True, "cancel": True}, "Use only one of --pause, --resume, --cancel"),
        ({"status": True, "restart": True}, "cannot be combined with --restart"),
        ({"pause": True}, "There is no open tasks.task.workspace run to pause"),
    ],
)
def test_bad_arguments_for_the_workspace_backfill_fail_clearly_and_write_nothing(
    workspace_expand_step, options, message
):
    # given: rows the backfill would fill
    create_legacy_tasks([Task(title=f"task {i}") for i in range(5)])
    before = list(Task.objects.values_list("pk", "workspace", "updated_at"))

    with pytest.raises(CommandError, match=message):
        backfill(WORKSPACE.name, **options)

    assert list(Task.objects.values_list("pk", "workspace", "updated_at")) == before
    assert Task.objects.filter(workspace__isnull=True).count() == 5
    assert not BackfillRun.objects.exists()


def test_backfill_priority_is_the_generic_command_for_tasks_task_priority(expand_step):
    # given: rows of each priority to come, previewed by each spelling
    PriorityStepTask.objects.bulk_create(
        PriorityStepTask(title=f"task {i}", status=status, due_date=due)
        for i, (status, due) in enumerate(
            [("done", None), ("todo", None), ("todo", timezone.localdate()), ("blocked", None)]
        )
    )
    alias, generic = StringIO(), StringIO()
    call_command("backfill_priority", dry_run=True, stdout=alias)
    call_command("backfill", PRIORITY.name, dry_run=True, stdout=generic)

    assert alias.getvalue() == generic.getvalue()
    counts = [line.split() for line in alias.getvalue().splitlines()[1:-1]]
    assert counts == [["Urgent", "1"], ["High", "0"], ["Medium", "2"], ["Low", "1"], ["Total", "4"]]
    assert "Dry run (reference date " in alias.getvalue()
    with pytest.raises(CommandError, match="unrecognized arguments: tasks.task.workspace"):
        call_command("backfill_priority", WORKSPACE.name)
