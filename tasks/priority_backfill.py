"""Backfilling ``Task.priority``: the priority rule plugged into the generic engine.

Shared by ``manage.py backfill_priority`` (in the foreground, or on task workers), the admin,
the data migration (0003) and the contract migration's catch-up (0004), which pass historical
models.
"""

import datetime
import time
from collections.abc import Callable

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from tasks.backfill import (
    Backfill,
    BackfillBusy,
    BackfillResult,
    BatchPolicy,
    BatchReport,
    HealthCheck,
    RunCheckpoint,
    check_workers,
    estimate_pending,
    exclusive_run,
    find_open_run,
    open_run,
    preview,
    run_backfill,
)
from tasks.backfill_control import RunStateError, process_name, process_run, record_event
from tasks.migration_safety import without_statement_timeout
from tasks.models import BackfillRun, Task
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
    using: str,
    policy: BatchPolicy,
    restart: bool = False,
    origin: str = "command",
    started_by: str = "",
    health: HealthCheck | None = None,
    lease_seconds: float | None = None,
    on_start: Callable[[models.Model, bool, int], None] | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = 1,
) -> tuple[models.Model | None, BackfillResult]:
    """Fill NULL priorities in this process, resuming the open run unless ``restart``; with
    ``workers`` connections in parallel lanes (PostgreSQL).

    Returns the run (None when there was nothing to do and no run to resume) and what this
    call did. ``on_start`` is told the run, whether it resumed, and the rows pending. While
    paused it waits for resume or cancel. Raises :class:`~tasks.backfill.BackfillBusy` if
    another process holds the run, :class:`~tasks.backfill_control.RunStateError` if it is
    paused (resume it first), ValueError if ``workers`` cannot work on this database.
    """
    check_workers(workers, using=using)
    # Held across the checks, so that a refused start writes nothing.
    with exclusive_run(PRIORITY_BACKFILL, using=using) as exclusive:
        pending = Task.objects.using(using).filter(PENDING).count()
        current = find_open_run(BackfillRun, name=PRIORITY_BACKFILL, using=using)
        if current is not None and current.status == BackfillRun.Status.PAUSED and not restart:
            raise RunStateError(
                f"Run #{current.pk} is paused. Resume it (manage.py backfill_priority --resume "
                f"--database {using}) or start over with --restart."
            )
        if current is not None and current.lease_is_live and not exclusive:
            raise BackfillBusy(
                f"run #{current.pk} is being processed by {current.lease_owner} (lease until "
                f"{current.lease_expires_at:%H:%M:%S}); pause or cancel it there, or wait"
            )
        if pending == 0 and current is None:
            return None, BackfillResult(finished=True, stopped="finished")
        run, resumed = _open_priority_run(
            using=using,
            restart=restart,
            origin=origin,
            started_by=started_by,
            batch_size=policy.batch_size,
            workers=workers,
        )
        backfill = priority_backfill(Task, run.reference_date)
        if on_start is not None:
            on_start(run, resumed, pending)
        result = process_run(
            run,
            backfill,
            policy,
            owner=process_name(origin),
            origin=origin,
            using=using,
            lease_seconds=lease_seconds or settings.BACKFILL_LEASE_SECONDS,
            health=health,
            on_batch=on_batch,
            sleep=sleep,
            workers=workers,
        )
        run.refresh_from_db(using=using)
        return run, result


def start_priority_backfill(
    *, using: str, origin: str, started_by: str, restart: bool = False, workers: int = 1
) -> tuple[models.Model, bool]:
    """Start (or carry on) the priority backfill on task workers; return the run and whether
    it was already open. The run and its first task are written together, or not at all.
    Each of the run's worker tasks fills it with ``workers`` connections in parallel lanes.
    Raises RunStateError when there is nothing to start, ValueError when ``workers`` cannot
    work on this database."""
    from tasks.background import enqueue_slice  # it imports this module

    check_workers(workers, using=using)
    with transaction.atomic(using=using):
        current = find_open_run(BackfillRun, name=PRIORITY_BACKFILL, using=using, for_update=True)
        if current is not None and (current.lease_is_live or current.status == "cancelling"):
            raise RunStateError(
                f"Run #{current.pk} is {current.status} "
                f"({current.lease_owner or 'being cancelled'}). Pause or cancel it first; "
                "nothing was changed."
            )
        if current is not None and current.status == "paused" and not restart:
            raise RunStateError(f"Run #{current.pk} is paused: resume it instead.")
        if current is None and not Task.objects.using(using).filter(PENDING).exists():
            raise RunStateError("Nothing to backfill: no task has a NULL priority.")
        run, resumed = _open_priority_run(
            using=using,
            restart=restart,
            origin=origin,
            started_by=started_by,
            batch_size=settings.BACKFILL_WORKER_BATCH_SIZE,
            background=True,
            workers=workers,
        )
        enqueue_slice(run, using=using)
    return run, resumed


def _open_priority_run(
    *,
    using: str,
    restart: bool,
    origin: str,
    started_by: str,
    batch_size: int,
    workers: int,
    background: bool = False,
) -> tuple[models.Model, bool]:
    """The open run to carry on, or a new one; with its estimate of the rows left, and its
    creation recorded. ``background`` runs are left pending for task workers. ``workers`` is
    how many connections fill it from now on (a resumed run keeps its lanes, if it has some)."""
    run, resumed = open_run(
        BackfillRun,
        name=PRIORITY_BACKFILL,
        using=using,
        restart=restart,
        status="pending",
        origin=origin,
        started_by=started_by,
        background=background,
        batch_size=batch_size,
    )
    estimate = estimate_pending(priority_backfill(Task, run.reference_date), using=using)
    carry_on = {"status": "pending", "background": True} if background else {}
    BackfillRun.objects.using(using).filter(pk=run.pk).update(
        rows_estimated=run.rows_done + estimate, workers=workers, **carry_on
    )
    run.refresh_from_db(using=using)
    if not resumed:
        record_event(run, "created", using=using, actor=started_by, origin=origin)
    return run, resumed


def _backfill_with_historical_models(
    *,
    task_model: type[models.Model],
    run_model: type[models.Model],
    event_model: type[models.Model],
    using: str,
) -> None:
    """The data and contract migrations' backfill: with their historical models, so a plain
    checkpoint (no lease: the advisory lock keeps it to one process at a time)."""
    with exclusive_run(PRIORITY_BACKFILL, using=using):
        pending = task_model._default_manager.using(using).filter(PENDING).count()
        current = find_open_run(run_model, name=PRIORITY_BACKFILL, using=using)
        if pending == 0 and current is None:
            return
        if current is not None and current.status in ("paused", "cancelling"):
            # The schema change needs every row filled: the migration carries on a run an
            # operator paused or is cancelling, and says so in its history.
            event_model._default_manager.using(using).create(
                run_id=current.pk,
                kind="resumed",
                actor="migrate (0003/0004)",
                message=f"was {current.status}; a migration finishes the backfill",
            )
        run, _ = open_run(run_model, name=PRIORITY_BACKFILL, using=using)
        run_backfill(
            priority_backfill(task_model, run.reference_date),
            BatchPolicy(target_batch_ms=settings.BACKFILL_TARGET_BATCH_MS or None),
            RunCheckpoint(run, using=using),
            using=using,
        )


def backfill_priority_in_migration(apps, schema_editor) -> None:
    """RunPython entry point for the data (0003) and contract (0004) migrations.

    Uses the historical models, so it keeps working when the current models move on. The
    migration's short statement_timeout is for DDL: the backfill's reads scan, and each of its
    batches sets its own timeouts.
    """
    with without_statement_timeout(schema_editor.connection):
        _backfill_with_historical_models(
            task_model=apps.get_model("tasks", "Task"),
            run_model=apps.get_model("tasks", "BackfillRun"),
            event_model=apps.get_model("tasks", "BackfillRunEvent"),
            using=schema_editor.connection.alias,
        )
