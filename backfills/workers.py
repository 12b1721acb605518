"""Backfills carried out by workers of Django's task framework (``manage.py db_worker``).

Starting a run in the background (``manage.py backfill NAME --background``, or Start in the
admin) enqueues :func:`continue_backfill` for it. Each task is one *slice*: it works on the run
for up to BACKFILL_SLICE_SECONDS under the run's lease, checkpointing every batch, then hands
over to the next slice, enqueued at once. Before it starts working it enqueues a successor due
just after its lease would run out if it stopped renewing it, and records the successor's id on
the run:

- if this worker dies or is stopped (SIGSTOP, a paused VM), the successor takes the run over
  once its lease has expired: BACKFILL_LEASE_SECONDS after its last batch, plus
  TAKEOVER_MARGIN_SECONDS, whenever the slice was due to end. The generation check rolls back
  anything the old worker had in flight, or writes when it wakes: no batch applied twice, none
  skipped;
- a task that finds the lease held by a live process (a slice still at work) does not wait in
  the worker: it enqueues its successor due just after that lease's expiry, and ends;
- a task whose id is not the run's ``worker_task_id`` has been superseded (by the hand-over, a
  resume or a retry that enqueued a fresh one) and does nothing, so a run never has two chains.

A paused, cancelled, failed or finished run ends the chain; resume and retry start a new one.
The worker finds what to fill from the run's name in the registry, with the run's parameters.
The task framework is the django-tasks backport on Django 5.2 and ``django.tasks`` from
Django 6 on, with the database backend of django-tasks-db; no queue of our own.
"""

import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

try:  # Django 6
    from django.tasks import TaskContext, task
except ImportError:  # Django 5.2: the backport
    from django_tasks import TaskContext, task

from backfills.engine import BackfillBusy, BackfillFailed, BatchPolicy, LeaseLost
from backfills.health import DatabaseHealth
from backfills.leases import process_run
from backfills.ledger import failure_fields, process_name, record_event
from backfills.models import BackfillRun, BackfillRunEvent
from backfills.registry import UnknownBackfill, get_definition

QUEUE = "backfill"
WORKABLE = (BackfillRun.Status.PENDING, BackfillRun.Status.RUNNING, BackfillRun.Status.CANCELLING)
# A task due to take a run over runs this long after the lease's expiry: room for the clocks of
# two hosts to differ, so that it does not find the lease a moment short of expired.
TAKEOVER_MARGIN_SECONDS = 1.0


def enqueue_slice(
    run: BackfillRun, *, using: str, delay: float = 0.0, handover: bool = False
) -> str:
    """Enqueue the next slice of ``run`` (due in ``delay`` seconds) and make it the only one.

    Starting a chain (no ``delay``, not a ``handover`` between slices) is an event of the run.
    """
    run_after = timezone.now() + datetime.timedelta(seconds=delay) if delay else None
    with transaction.atomic(using=using):
        result = continue_backfill.using(run_after=run_after).enqueue(run_id=run.pk, database=using)
        BackfillRun.objects.using(using).filter(pk=run.pk).update(worker_task_id=result.id)
        if not delay and not handover:
            record_event(
                run,
                BackfillRunEvent.Kind.ENQUEUED,
                using=using,
                actor=process_name("enqueuer"),
                origin=BackfillRun.Origin.WORKER,
                message=f"task {result.id}",
            )
    return result.id


def slice_policy(run: BackfillRun) -> BatchPolicy:
    """One slice: adaptive batches from the run's current size, for BACKFILL_SLICE_SECONDS."""
    return BatchPolicy(
        batch_size=run.batch_size or settings.BACKFILL_WORKER_BATCH_SIZE,
        sleep=settings.BACKFILL_WORKER_SLEEP_SECONDS,
        target_batch_ms=settings.BACKFILL_TARGET_BATCH_MS or None,
        max_seconds=settings.BACKFILL_SLICE_SECONDS,
    )


@task(queue_name=QUEUE, takes_context=True)
def continue_backfill(context: TaskContext, run_id: int, database: str = "default") -> str:
    """One slice of a background backfill run; returns what it did."""
    return run_slice(run_id, task_id=context.task_result.id, using=database)


def run_slice(run_id: int, *, task_id: str, using: str) -> str:
    """The body of :func:`continue_backfill` (see the module docstring)."""
    run = BackfillRun.objects.using(using).filter(pk=run_id).first()
    if run is None:
        return f"run #{run_id} does not exist"
    if run.worker_task_id and run.worker_task_id != task_id:
        return f"superseded by task {run.worker_task_id}"
    if run.status not in WORKABLE:
        return f"nothing to do: run #{run.pk} is {run.status}"
    try:
        definition = get_definition(run.name)
        model = definition.model_class()
        health = DatabaseHealth.from_settings(model)
    except (UnknownBackfill, ImproperlyConfigured) as exc:
        fail_before_work(run, str(exc), using=using)
        return f"failed: {exc}"
    if run.lease_is_live:
        # Another process is at work on the run (the previous slice, most likely): come back
        # once its lease would have expired, rather than wait here and hold up a worker.
        successor = enqueue_slice(run, using=using, delay=seconds_to_takeover(run))
        return (
            f"waiting: run #{run.pk} is held by {run.lease_owner} until "
            f"{run.lease_expires_at:%H:%M:%S}; task {successor} comes back then"
        )
    # If this worker dies or stops, this successor takes the run over as soon as it may.
    enqueue_slice(run, using=using, delay=settings.BACKFILL_LEASE_SECONDS + TAKEOVER_MARGIN_SECONDS)
    try:
        result = process_run(
            run,
            definition.backfill(model, run.parameters),
            slice_policy(run),
            owner=process_name(f"worker task {task_id[:8]}"),
            origin=BackfillRun.Origin.WORKER,
            using=using,
            lease_seconds=settings.BACKFILL_LEASE_SECONDS,
            health=health,
            wait_while_paused=False,
            workers=run.workers,
        )
    except BackfillBusy as exc:  # claimed since the check above: the successor comes back
        return f"busy: {exc}"
    except LeaseLost as exc:
        return f"stopped: {exc}"
    except BackfillFailed as exc:
        return f"failed: {exc}"
    if result.stopped in ("time budget", "rows keep arriving"):  # the run goes on
        enqueue_slice(run, using=using, handover=True)
    return (
        f"run #{run.pk}: {result.rows:,} rows in {result.batches:,} batches, "
        f"{result.seconds:.1f} s; {result.stopped}"
    )


def seconds_to_takeover(run: BackfillRun) -> float:
    """Seconds until a task may take ``run`` over, if its lease is not renewed meanwhile."""
    left = (run.lease_expires_at - timezone.now()).total_seconds() if run.lease_expires_at else 0
    return max(left, 0.0) + TAKEOVER_MARGIN_SECONDS


def fail_before_work(run: BackfillRun, error: str, *, using: str) -> None:
    """Mark a run failed before any work (its settings or definition are wrong), saying why."""
    BackfillRun.objects.using(using).filter(pk=run.pk).update(
        updated_at=timezone.now(), **failure_fields(error)
    )
    record_event(
        run,
        BackfillRunEvent.Kind.FAILED,
        using=using,
        actor=process_name("worker"),
        origin=BackfillRun.Origin.WORKER,
        message=error,
    )
