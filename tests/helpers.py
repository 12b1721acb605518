"""Helpers shared by several test modules."""

import datetime
import functools
import os
import threading
import time
from contextlib import contextmanager
from io import StringIO
from typing import NoReturn

import pytest
from django.core.management import call_command
from django.db import connection, connections, models
from django.db.migrations.loader import MigrationLoader

from backfills.engine import BatchPolicy
from backfills.orchestration import fill
from backfills.registry import get_definition
from tasks.models import Task
from tasks.reference_fixtures import REFERENCE_FIXTURES


@functools.cache
def model_at(label: str, migration: str) -> type[models.Model]:
    """The model ``label`` ("app.Model") as it was after ``migration`` of its app: what the code
    of that time read and wrote (no custom save(), no managers of today)."""
    app_label, model_name = label.split(".")
    state = MigrationLoader(None, ignore_no_migrations=True).project_state((app_label, migration))
    return state.apps.get_model(app_label, model_name)


@contextmanager
def rewind_to(step: str, *fixtures: str):
    """Production at ``step`` of tasks' migrations, with its reference data (and
    ``fixtures``), for one test.

    The fixtures are written for today's models, so they are loaded on the fully migrated
    schema, then tasks is migrated back to ``step`` (the rows stay, without the columns that
    came later); forward again afterwards, even when the test fails. At an earlier step,
    today's Task model does not match the table: tests there use the model of that step
    (``model_at``).
    """
    call_command("migrate", "tasks", verbosity=0)
    call_command("loaddata", *REFERENCE_FIXTURES, "operators", *fixtures, verbosity=0)
    call_command("migrate", "tasks", step, verbosity=0)
    try:
        yield
    finally:
        call_command("migrate", "tasks", verbosity=0)


# Task as the code of the priority rollout knew it: priority nullable, no workspace yet.
PriorityStepTask = model_at("tasks.Task", "0002_priority_expand")


def create_legacy_tasks(tasks: list[Task]) -> list[Task]:
    """Save ``tasks`` (of today's model) as code that predates the workspace column would:
    workspace NULL. (Today's bulk_create derives a workspace, so it is cleared afterwards.)"""
    created = Task.objects.bulk_create(tasks)
    Task.objects.filter(pk__in=[task.pk for task in created]).update(workspace=None)
    return created


def backfill_output(command: str, *args, **options) -> str:
    """Run a backfill command (``backfill`` or its ``backfill_priority`` alias); return its
    stdout. Batches keep their --batch-size unless a target is given, so that batch counts are
    predictable (adaptive sizing has tests of its own)."""
    out = StringIO()
    options.setdefault("target_batch_ms", "0")
    call_command(command, *args, no_progress=True, stdout=out, **options)
    return out.getvalue()


def wait_until(predicate, *, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Terminal(StringIO):
    """A stream that says it is a terminal, as a command's stderr on a console does."""

    def isatty(self) -> bool:
        return True


# The two registered backfills, as the command, admin and migrations find them.
PRIORITY = get_definition("tasks.task.priority")
WORKSPACE = get_definition("tasks.task.workspace")


def priority_run_parameters(today) -> dict[str, str]:
    """The parameters of a priority run with reference date ``today``."""
    return {"reference_date": today.isoformat()}


def reference_date(run) -> datetime.date:
    """The reference date a priority run computes its values against."""
    return datetime.date.fromisoformat(run.parameters["reference_date"])


def fill_while_the_application_writes(definition, writers, *, workers: int, stop_after: int = 20):
    """Run ``definition``'s backfill (batches of 400) while each of ``writers`` — a function
    that writes until the event it is given is set — writes from a thread with its own
    connection. The writers stop after ``stop_after`` batches; the run goes on past their last
    rows. Returns the run, what the call did, how many batches it took and the writers' errors."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(writer) -> None:
        try:
            writer(stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    batches = 0

    def on_batch(report) -> None:
        nonlocal batches
        batches += 1
        if batches == stop_after:
            stop.set()
            for thread in threads:
                thread.join()

    try:
        run, result = fill(
            definition,
            using="default",
            policy=BatchPolicy(batch_size=400, sleep=0.01),
            on_batch=on_batch,
            workers=workers,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return run, result, batches, errors


def statements_sent(action) -> list[str]:
    """The SQL statements ``action()`` sends on the default connection, white space folded."""
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(" ".join(sql.split()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        action()
    return statements


def unavailable_here(reason: str, tests: str) -> NoReturn:
    """Skip ``tests`` whose tool is missing here, with the reason; under CI=true fail: CI must
    run them."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: {tests} must run)")
    pytest.skip(reason)


def workspace_expand_step(rows: int) -> list[list[str]]:
    """The ``manage.py`` commands that bring an empty database to the workspace rollout's
    expand step, seeded with ``rows`` tasks whose workspace is still to be backfilled."""
    return [
        # Every app but tasks, whose columns stop before the workspace backfill.
        ["migrate", "auth", "--verbosity", "0"],
        ["migrate", "backfills", "--verbosity", "0"],
        ["migrate", "tasks", "0007_workspace_expand", "--verbosity", "0"],
        ["seed", "--tasks", str(rows), "--users", "3", "--seed", "7"]
        + ["--without-workspace", "--no-progress", "--verbosity", "0"],
    ]
