"""Backfilling ``Task.priority``: the priority rule plugged into the generic engine.

Shared by ``manage.py backfill_priority``, the data migration (0003) and the contract
migration's catch-up (0004), which pass historical models.
"""

import datetime
from collections.abc import Callable

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tasks.backfill import (
    Backfill,
    BackfillResult,
    BatchPolicy,
    BatchReport,
    RunCheckpoint,
    exclusive_run,
    find_open_run,
    open_run,
    preview,
    run_backfill,
)
from tasks.migration_safety import without_statement_timeout
from tasks.priority import PriorityRule

PRIORITY_BACKFILL = "tasks.task.priority"
# The rows the backfill is for: written before the column existed, or by code that predates it.
PENDING = Q(priority__isnull=True)


def priority_backfill(task_model: type[models.Model], today: datetime.date) -> Backfill:
    """The backfill of NULL priorities by the rule, for reference date ``today``."""
    return Backfill(
        model=task_model,
        field="priority",
        value=PriorityRule(today).expression(),
        pending=PENDING,
    )


def dry_run_priority_backfill(
    *, task_model: type[models.Model], run_model: type[models.Model], using: str, restart: bool
) -> tuple[datetime.date, dict[str, int]]:
    """The reference date a run would use now, and how many NULL rows would get each priority.

    Reads only: the open run's date unless ``restart``, else today.
    """
    current = None if restart else find_open_run(run_model, name=PRIORITY_BACKFILL, using=using)
    today = current.reference_date if current is not None else timezone.localdate()
    return today, preview(priority_backfill(task_model, today), using=using)


def backfill_priority(
    *,
    task_model: type[models.Model],
    run_model: type[models.Model],
    using: str,
    policy: BatchPolicy,
    restart: bool = False,
    on_start: Callable[[models.Model, bool, int], None] | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> tuple[models.Model | None, BackfillResult]:
    """Fill NULL priorities batch by batch, resuming the open run unless ``restart``.

    Returns the run (None when there was nothing to do and no run to resume) and what this
    call did. ``on_start`` is told the run, whether it resumed, and the rows pending. Raises
    :class:`~tasks.backfill.BackfillBusy` if another process is running it.
    """
    with exclusive_run(PRIORITY_BACKFILL, using=using):
        pending = task_model._default_manager.using(using).filter(PENDING).count()
        if pending == 0 and find_open_run(run_model, name=PRIORITY_BACKFILL, using=using) is None:
            return None, BackfillResult(finished=True)
        run, resumed = open_run(run_model, name=PRIORITY_BACKFILL, using=using, restart=restart)
        if on_start is not None:
            on_start(run, resumed, pending)
        # The run's own date: a resumed run computes every row against the day it started.
        backfill = priority_backfill(task_model, run.reference_date)
        result = run_backfill(
            backfill, policy, RunCheckpoint(run, using=using), using=using, on_batch=on_batch
        )
        return run, result


def backfill_priority_in_migration(apps, schema_editor) -> None:
    """RunPython entry point for the data (0003) and contract (0004) migrations.

    Uses the historical models, so it keeps working when the current models move on. The
    migration's short statement_timeout is for DDL: the backfill's reads scan, and each of its
    batches sets its own timeouts.
    """
    with without_statement_timeout(schema_editor.connection):
        backfill_priority(
            task_model=apps.get_model("tasks", "Task"),
            run_model=apps.get_model("tasks", "BackfillRun"),
            using=schema_editor.connection.alias,
            policy=BatchPolicy(),
        )
