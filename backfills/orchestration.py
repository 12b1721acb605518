"""The one orchestration of backfill runs, used by the command, the admin, the workers' callers
and the migration operations: open or resume a run, estimate it, fill it here or start it on
task workers, steer it, and finish it inside a migration.

Every function takes a registered :class:`~backfills.registry.BackfillDefinition` and knows
nothing else about the column.
"""

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DatabaseError, connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from backfills.controls import CONTROLS, RunStateError
from backfills.engine import (
    Backfill,
    BackfillResult,
    BatchPolicy,
    BatchReport,
    HealthCheck,
    Pending,
    find_pending,
    key_before,
    refresh_statistics,
    run_backfill,
)
from backfills.health import DatabaseHealth
from backfills.inspection import (
    column_state,
    estimate_pending,
    migration_adding,
    planned_rows,
    preview,
)
from backfills.lanes import check_workers
from backfills.leases import claim, process_run, refuse_busy
from backfills.ledger import find_open_run, open_run, process_name, record_event
from backfills.models import BackfillLane, BackfillRun, BackfillRunEvent, lease_is_live
from backfills.registry import BackfillDefinition
from backfills.workers import enqueue_slice

Status = BackfillRun.Status
# Below this many pending rows (by PostgreSQL's estimate) they are counted exactly: a cheap
# count, and the planner's estimate of a small or barely analysed table is rough. Above it the
# estimate stands: a count would read the whole table once more before the first batch.
EXACT_COUNT_BELOW = 10_000


class Opened(NamedTuple):
    """A run opened to be filled: whether it resumed, and the rows it has left (exactly or by
    the planner's estimate)."""

    run: BackfillRun
    resumed: bool
    pending: int
    exact: bool


def pending_rows(definition: BackfillDefinition, *, using: str) -> models.QuerySet:
    """The rows that still need the value, of the current model."""
    return definition.pending_rows(definition.model_class(), using=using)


def look_for_pending(
    definition: BackfillDefinition, model: type[models.Model], *, using: str, workers: int = 1
) -> Pending:
    """The one look at the table before a new run: its first pending key (None: nothing to do)
    and the rows pending: where the planner estimates few (always, off PostgreSQL), their
    exact count from the same scan, else that estimate. Made before any lock is taken: the scan
    may read the whole table, and a new run starts from its answer instead of looking again."""
    walk = definition.walk(model)
    postgresql = connections[using].vendor == "postgresql"
    estimate = estimate_pending(walk, using=using) if postgresql else None
    few = estimate is None or estimate < EXACT_COUNT_BELOW
    look = find_pending(walk, using=using, workers=workers, count=few)
    return look if look.exact else replace(look, rows=estimate)


def column_of(definition: BackfillDefinition, *, using: str) -> str:
    """``"missing"``, ``"nullable"`` or ``"not null"``: the definition's column now."""
    return column_state(definition.model_class(), definition.field, using=using)


def column_is_filled(definition: BackfillDefinition, state: str) -> bool:
    """Whether the column's ``state`` alone proves no row is pending: NOT NULL, for a backfill
    of NULLs. (A backfill with a filter of its own may have pending rows in any column.)"""
    return state == "not null" and definition.pending_is_null


class NotEnqueued(Exception):
    """A control was applied to a background run, but no worker task could be enqueued for it
    (the task tables are missing, say): the run waits for the next enqueue."""

    def __init__(self, run: BackfillRun, error: DatabaseError) -> None:
        super().__init__(str(error))
        self.run = run


def missing_column_message(definition: BackfillDefinition, *, using: str) -> str:
    """What to do when the column does not exist yet: apply the migration that adds it."""
    model = definition.model_class()
    migration = migration_adding(model, definition.field, using=using)
    target = f"migrate {migration}" if migration else "migrate"
    return (
        f"{model._meta.db_table}.{definition.field} does not exist in database {using!r} yet. "
        f"Apply the expand step first: manage.py {target} --database {using}"
    )


def nothing_pending_message(definition: BackfillDefinition) -> str:
    """What to say when no row needs the value: "no task has a NULL priority"."""
    model = definition.model_class()
    return f"Nothing to backfill: no {model._meta.verbose_name} has {definition.pending_label}."


def dry_run(
    definition: BackfillDefinition, *, using: str, restart: bool
) -> tuple[dict[str, Any], dict[Any, int]]:
    """The parameters a run would use now, and how many pending rows would get each value.

    Reads only: the open run's parameters unless ``restart``, else a new run's.
    """
    model = definition.model_class()
    current = None if restart else find_open_run(BackfillRun, name=definition.name, using=using)
    parameters = (
        current.parameters if current is not None else definition.new_parameters(model, using=using)
    )
    return parameters, preview(definition.backfill(model, parameters), using=using)


def fill(
    definition: BackfillDefinition,
    *,
    using: str,
    policy: BatchPolicy,
    restart: bool = False,
    origin: str = BackfillRun.Origin.COMMAND,
    started_by: str = "",
    health: HealthCheck | None = None,
    lease_seconds: float | None = None,
    on_start: Callable[[Opened], None] | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = 1,
) -> tuple[BackfillRun | None, BackfillResult]:
    """Fill the pending rows in this process, resuming the open run unless ``restart``; with
    ``workers`` connections in parallel lanes (PostgreSQL).

    Returns the run (None when there was nothing to do and no run to resume) and what this
    call did. ``on_start`` is told the run, whether it resumed and the rows pending. While
    paused it waits for resume or cancel. Raises :class:`~backfills.engine.BackfillBusy` if
    another process holds the run, :class:`~backfills.controls.RunStateError` if it is paused
    (resume it first), ValueError if ``workers`` cannot work on this database,
    :class:`~backfills.registry.BackfillNotReady` if a new run's parameters cannot be fixed.
    """
    model = definition.model_class()
    check_workers(workers, using=using, model=model, key=definition.key)
    current = find_open_run(BackfillRun, name=definition.name, using=using)
    if current is not None and current.status == Status.PAUSED and not restart:
        raise RunStateError(
            f"Run #{current.pk} is paused. Resume it (manage.py backfill {definition.name} "
            f"--resume --database {using}) or start over with --restart."
        )
    if current is not None and current.lease_is_live:
        raise refuse_busy(current)  # before anything is written
    look = None
    if current is None or restart:
        look = look_for_pending(definition, model, using=using, workers=workers)
        if look.first is None and current is None:
            return None, BackfillResult(stopped="finished")
    opened = _open(
        definition,
        using=using,
        restart=restart,
        origin=origin,
        started_by=started_by,
        batch_size=policy.batch_size,
        workers=workers,
        look=look,
    )
    run = opened.run
    if on_start is not None:
        on_start(opened)
    result = process_run(
        run,
        definition.backfill(model, run.parameters),
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


def start_on_workers(
    definition: BackfillDefinition,
    *,
    using: str,
    origin: str,
    started_by: str,
    restart: bool = False,
    workers: int = 1,
) -> tuple[BackfillRun, bool]:
    """Start (or carry on) the backfill on task workers; return the run and whether it was
    already open. The run and its first task are written together, or not at all. Each of the
    run's worker tasks fills it with ``workers`` connections in parallel lanes.

    Raises RunStateError when there is nothing to start (or the column is not there yet),
    ValueError when ``workers`` cannot work on this database, BackfillNotReady when a new run's
    parameters cannot be fixed, ImproperlyConfigured when the workers' health settings are bad
    (:class:`~backfills.health.LagUnmeasurable` when the standbys' lag cannot be read).
    """
    model = definition.model_class()
    check_workers(workers, using=using, model=model, key=definition.key)
    # The workers read the same settings; they must be able to measure the standbys' lag.
    DatabaseHealth.from_settings(model).check_standbys(using=using)
    state = column_of(definition, using=using)
    if state == "missing":
        raise RunStateError(missing_column_message(definition, using=using))
    look = None
    if not column_is_filled(definition, state) and (
        restart or find_open_run(BackfillRun, name=definition.name, using=using) is None
    ):
        # Before the run's row is locked: the look may read the whole table.
        look = look_for_pending(definition, model, using=using, workers=workers)
    with transaction.atomic(using=using):
        current = find_open_run(BackfillRun, name=definition.name, using=using, for_update=True)
        if current is not None and (current.lease_is_live or current.status == Status.CANCELLING):
            raise RunStateError(
                f"Run #{current.pk} is {current.status} "
                f"({current.lease_owner or 'being cancelled'}). Pause or cancel it first; "
                "nothing was changed."
            )
        if current is not None and current.status == Status.PAUSED and not restart:
            raise RunStateError(f"Run #{current.pk} is paused: resume it instead.")
        if current is None and (look is None or look.first is None):
            # (No look: the column is NOT NULL, or the run seen a moment ago has ended.)
            raise RunStateError(nothing_pending_message(definition))
        opened = _open(
            definition,
            using=using,
            restart=restart,
            origin=origin,
            started_by=started_by,
            batch_size=settings.BACKFILL_WORKER_BATCH_SIZE,
            background=True,
            workers=workers,
            look=look,
        )
        enqueue_slice(opened.run, using=using)
    return opened.run, opened.resumed


def _open(
    definition: BackfillDefinition,
    *,
    using: str,
    restart: bool,
    origin: str,
    started_by: str,
    batch_size: int,
    workers: int,
    background: bool = False,
    look: Pending | None = None,
) -> Opened:
    """The open run to carry on, or a new one; with its estimate of the rows left, and its
    creation recorded. ``background`` runs are left pending for task workers. ``workers`` is
    how many connections fill it from now on (a resumed run keeps its lanes, if it has some).

    A new run starts from ``look`` (:func:`look_for_pending`): just before its first pending
    key, with its count if it has one. Nothing here reads the whole table: this may run with the
    run's row locked (:func:`start_on_workers`)."""
    model = definition.model_class()
    first = None if look is None else look.first
    run, resumed = open_run(
        BackfillRun,
        name=definition.name,
        using=using,
        parameters=lambda: definition.new_parameters(model, using=using),
        restart=restart,
        status=Status.PENDING,
        origin=origin,
        started_by=started_by,
        background=background,
        batch_size=batch_size,
        last_key=None if first is None else key_before(definition.walk(model), first, using=using),
    )
    backfill = definition.backfill(model, run.parameters)
    if resumed or look is None:
        pending, exact = _left_of(backfill, run, using=using)
    else:
        pending, exact = look.rows, look.exact
    carry_on = {"status": Status.PENDING, "background": True} if background else {}
    if run.status == Status.INTERRUPTED:
        carry_on.setdefault("status", Status.PENDING)  # to be claimed, and running, at once
    BackfillRun.objects.using(using).filter(pk=run.pk).update(
        rows_estimated=run.rows_done + pending, workers=workers, **carry_on
    )
    run.refresh_from_db(using=using)
    if not resumed:
        record_event(run, "created", using=using, actor=started_by, origin=origin)
    return Opened(run, resumed, pending, exact)


def _left_of(backfill: Backfill, run: BackfillRun, *, using: str) -> tuple[int, bool]:
    """The rows a resumed run has left, and whether that is an exact count: counted off
    PostgreSQL; on it, the planner's estimate, counted within the keys still to walk if that
    says few.

    The planner's share of pending rows is as of the last ANALYZE: a run resumed before the next
    one would be estimated its whole table again, and rows_done + pending would climb past the
    table with every resume. The rows left are (nearly all) ahead of the run's checkpoints,
    whatever the statistics say about them."""
    if connections[using].vendor != "postgresql":
        return backfill.queryset(using).count(), True
    ranges = _ranges_ahead(run, using=using)
    every_row = replace(backfill, pending=Q())  # within each range's bounds
    estimate = min(
        estimate_pending(backfill, using=using),
        sum(
            planned_rows(every_row.within(after, upto).queryset(using), key=backfill.key)
            for after, upto in ranges
        ),
    )
    if estimate >= EXACT_COUNT_BELOW:
        return estimate, False
    return sum(backfill.within(after, upto).queryset(using).count() for after, upto in ranges), True


def _ranges_ahead(run: BackfillRun, *, using: str) -> list[tuple[Any, Any]]:
    """The key ranges ``(after, upto]`` a run has still to walk: after each open lane's
    checkpoint, up to its end; without lanes, after the run's checkpoint."""
    lanes = BackfillLane.objects.using(using).filter(run=run, finished=False)
    return [
        (lane.after_key if lane.last_key is None else lane.last_key, lane.upto_key)
        for lane in lanes
    ] or [(run.last_key, None)]


def interrupt(run: BackfillRun, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Record at once that this process's operator stopped ``run`` (Ctrl-C): a run it had opened
    or was filling becomes interrupted, for the next command to carry on; its history says
    where it stopped. A run in any other state (paused, cancelling, taken over by another
    process meanwhile) is left as it is. Returns the run as it is now."""
    with transaction.atomic(using=using):
        current = BackfillRun.objects.using(using).select_for_update().get(pk=run.pk)
        ours = not current.lease_is_live or current.lease_owner == actor
        if current.status in (Status.PENDING, Status.RUNNING) and ours:
            BackfillRun.objects.using(using).filter(pk=run.pk).update(
                status=Status.INTERRUPTED,
                lease_owner="",
                lease_expires_at=None,
                throttle_reason="",
                updated_at=timezone.now(),
            )
            record_event(
                current,
                BackfillRunEvent.Kind.INTERRUPTED,
                using=using,
                actor=actor,
                origin=origin,
                message=f"{current.rows_done:,} rows done, {stopped_at(current, using=using)}",
            )
    run.refresh_from_db(using=using)
    return run


def stopped_at(run: BackfillRun, *, using: str) -> str:
    """Where the run's checkpoint stands, as words: "after key 4200", or "after keys 1200,
    11300 (one per lane)" for the lanes still open of a parallel run."""
    lanes = list(BackfillLane.objects.using(using).filter(run=run, finished=False))
    if not lanes:
        return "at the start" if run.last_key is None else f"after key {run.last_key}"
    keys = ", ".join(
        str(lane.after_key if lane.last_key is None else lane.last_key) for lane in lanes
    )
    return f"after keys {keys} (one per lane)"


def steer(run: BackfillRun, action: str, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Pause, resume, cancel or retry ``run`` (see :mod:`backfills.controls`). Raises
    :class:`NotEnqueued` when the control is applied but its worker task could not be enqueued.

    A resumed or retried background run gets a fresh chain of worker tasks (it supersedes any
    other): even when a worker still holds the lease, finishing its slice after the pause, that
    worker's own successor may have seen the pause and ended its chain.
    """
    run = CONTROLS[action](run, using=using, actor=actor, origin=origin)
    if (
        action in ("resume", "retry")
        and run.background
        and run.status in (Status.PENDING, Status.RUNNING)
    ):
        try:
            enqueue_slice(run, using=using)
        except DatabaseError as exc:
            raise NotEnqueued(run, exc) from exc
        run.refresh_from_db(using=using)
    return run


def finish_in_migration(definition: BackfillDefinition, *, apps, using: str) -> BackfillResult:
    """Fill every pending row with a migration's historical models (``apps``), batch by batch;
    return what it did (not finished: an operator paused or cancelled the run meanwhile, or rows
    kept arriving).

    Carries on the backfill's open run (with its parameters), or starts one, in the same ledger
    as the command and the workers, under the run's lease like them, so that one process at a
    time works on it. Nothing pending and no run open: a quick no-op.
    Raises :class:`~backfills.engine.BackfillBusy` while another process holds the run.
    """
    model = definition.model_class(apps)
    run_model = apps.get_model("backfills", "BackfillRun")
    event_model = apps.get_model("backfills", "BackfillRunEvent")
    current = find_open_run(run_model, name=definition.name, using=using)
    first = None
    if current is None:
        walk = definition.walk(model)
        first = find_pending(walk, using=using).first
        if first is None:
            # The command filled it; migrate runs as the table's owner, who may ANALYZE it
            # where the backfill's own role may not (docs/zero-downtime.md, roles).
            refresh_statistics(walk, BatchPolicy(), using=using)
            return BackfillResult(stopped="finished")
    if current is not None and lease_is_live(current):
        raise refuse_busy(current)
    if current is not None and current.status in (Status.PAUSED, Status.CANCELLING):
        # The schema change needs every row filled: the migration carries on a run an
        # operator paused or is cancelling, and says so in its history.
        record_event(
            current,
            "resumed",
            using=using,
            actor=process_name("migrate"),
            origin=BackfillRun.Origin.MIGRATION,
            message=f"was {current.status}; a migration finishes the backfill",
            event_model=event_model,
        )
    run, _ = open_run(
        run_model,
        name=definition.name,
        using=using,
        parameters=lambda: definition.new_parameters(model, using=using),
        origin=BackfillRun.Origin.MIGRATION,
        started_by=process_name("migrate"),
        # A new run starts where the look found its first row, without looking again.
        last_key=None if first is None else key_before(walk, first, using=using),
    )
    checkpoint = claim(
        run,
        owner=process_name("migrate"),
        origin=BackfillRun.Origin.MIGRATION,
        using=using,
        lease_seconds=settings.BACKFILL_LEASE_SECONDS,
    )
    if checkpoint is None:  # claimed since the check above
        run.refresh_from_db(using=using)
        raise refuse_busy(run)
    try:
        return run_backfill(
            definition.backfill(model, run.parameters),
            BatchPolicy(target_batch_ms=settings.BACKFILL_TARGET_BATCH_MS or None),
            checkpoint,
            using=using,
        )
    finally:
        checkpoint.release()
