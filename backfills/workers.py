"""Backfills carried out by workers of Django's task framework (``manage.py db_worker``).

Starting a run in the background (``manage.py backfill NAME --background``, or Start in the
admin) enqueues :func:`continue_backfill` for it. Each task is one *slice*: it works on the run
for up to BACKFILL_SLICE_SECONDS under the run's lease, checkpointing every batch, then stops.
Before it starts working it enqueues its successor, due when the slice ends, and records the
successor's id on the run:

- the successor carries the run on (any worker, any host);
- if this worker is killed, the successor still runs; it takes the run over once the dead
  worker's lease has expired, and the generation check rolls back anything the dead worker
  had in flight — no batch applied twice, none skipped;
- a task whose id is not the run's ``worker_task_id`` has been superseded (by a resume or a
  retry that enqueued a fresh one) and does nothing, so a run never has two chains.

A paused, cancelled, failed or finished run ends the chain; resume and retry start a new one.
The worker finds what to fill from the run's name in the registry, with the run's parameters.
The task framework is the django-tasks backport on Django 5.2 and ``django.tasks`` from
Django 6 on, with the database backend of django-tasks-db; no queue of our own.
"""

import datetime
import time

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


def enqueue_slice(run: BackfillRun, *, using: str, delay: float = 0.0) -> str:
    """Enqueue the next slice of ``run`` (due in ``delay`` seconds) and make it the only one."""
    run_after = timezone.now() + datetime.timedelta(seconds=delay) if delay else None
    with transaction.atomic(using=using):
        result = continue_backfill.using(run_after=run_after).enqueue(run_id=run.pk, database=using)
        BackfillRun.objects.using(using).filter(pk=run.pk).update(worker_task_id=result.id)
        if not delay:
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
    enqueue_slice(run, using=using, delay=settings.BACKFILL_SLICE_SECONDS)
    owner = process_name(f"worker task {task_id[:8]}")
    backfill = definition.backfill(model, run.parameters)
    deadline = time.monotonic() + settings.BACKFILL_LEASE_SECONDS + 1
    while True:
        try:
            result = process_run(
                run,
                backfill,
                slice_policy(run),
                owner=owner,
                origin=BackfillRun.Origin.WORKER,
                using=using,
                lease_seconds=settings.BACKFILL_LEASE_SECONDS,
                health=health,
                wait_while_paused=False,
                workers=run.workers,
            )
            break
        except BackfillBusy as exc:
            # The previous slice may be finishing its last batch, or have died with its lease:
            # wait for the lease to be released or to expire, then leave it to the successor.
            if time.monotonic() > deadline:
                return f"busy: {exc}"
            time.sleep(1.0)
            run.refresh_from_db(using=using)
            if run.status not in WORKABLE:
                return f"nothing to do: run #{run.pk} is {run.status}"
        except LeaseLost as exc:
            return f"stopped: {exc}"
        except BackfillFailed as exc:
            return f"failed: {exc}"
    return (
        f"run #{run.pk}: {result.rows:,} rows in {result.batches:,} batches, "
        f"{result.seconds:.1f} s; {result.stopped}"
    )


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
