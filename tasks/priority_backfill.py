"""Backfilling ``Task.priority``: the priority rule plugged into the generic engine.

Shared by ``manage.py backfill_priority``, the data migration (0003) and the contract
migration's catch-up (0004), which pass historical models.
"""

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tasks.backfill import (
    Backfill,
    BackfillResult,
    BatchPolicy,
    BatchReport,
    RunCheckpoint,
    count_pending,
    find_open_run,
    open_run,
    run_backfill,
)
from tasks.priority import PriorityRule

PRIORITY_BACKFILL = "tasks.task.priority"


@dataclass(frozen=True)
class PriorityBackfillPlan:
    """The backfill a run would do now: against the open run's reference date, or today's."""

    backfill: Backfill
    today: datetime.date
    open_run: models.Model | None


def plan_priority_backfill(
    *, task_model: type[models.Model], run_model: type[models.Model], using: str, restart: bool
) -> PriorityBackfillPlan:
    """Plan the priority backfill; reads only."""
    current = find_open_run(run_model, name=PRIORITY_BACKFILL, using=using)
    if restart or current is None:
        today = timezone.localdate()
    else:
        today = current.reference_date
    backfill = Backfill(
        model=task_model,
        field="priority",
        value=PriorityRule(today).expression(),
        pending=Q(priority__isnull=True),
    )
    return PriorityBackfillPlan(backfill=backfill, today=today, open_run=current)


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
    call did. ``on_start`` is told the run, whether it resumed, and the rows pending.
    """
    plan = plan_priority_backfill(
        task_model=task_model, run_model=run_model, using=using, restart=restart
    )
    pending = count_pending(plan.backfill, using=using)
    if pending == 0 and plan.open_run is None:
        return None, BackfillResult(finished=True)
    run, resumed = open_run(
        run_model, name=PRIORITY_BACKFILL, using=using, restart=restart, today=plan.today
    )
    if on_start is not None:
        on_start(run, resumed, pending)
    result = run_backfill(
        plan.backfill, policy, RunCheckpoint(run, using=using), using=using, on_batch=on_batch
    )
    return run, result


def backfill_priority_in_migration(apps, schema_editor) -> None:
    """RunPython entry point for the data (0003) and contract (0004) migrations.

    Uses the historical models, so it keeps working when the current models move on.
    """
    backfill_priority(
        task_model=apps.get_model("tasks", "Task"),
        run_model=apps.get_model("tasks", "BackfillRun"),
        using=schema_editor.connection.alias,
        policy=BatchPolicy(),
    )
