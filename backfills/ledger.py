"""The run ledger's rows as the engine and the operators see them: finding and opening a
backfill's run, its plain checkpoint, its history.

These work on the current models and on a migration's historical ones (``run_model``), so the
data migrations keep one ledger with the command and the workers.
"""

import getpass
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from backfills.models import OPEN_STATUSES, BackfillRunEvent

logger = logging.getLogger(__name__)
# What a process working on a run is told to do by the run's status (Checkpoint.control()).
CONTROL_BY_STATUS = {"paused": "pause", "cancelling": "cancel", "cancelled": "cancel"}


def failure_fields(error: str) -> dict[str, Any]:
    """What a run's row records when it fails: the status and the error, with its time."""
    now = timezone.now()
    return {
        "status": "failed",
        "last_error": f"{now:%Y-%m-%d %H:%M:%S} {error}",
        "last_error_at": now,
    }


def success_fields() -> dict[str, Any]:
    """What a run's row records when it succeeds: the status and its time; the error of an
    earlier failed attempt is cleared (its event stays in the history)."""
    return {
        "status": "succeeded",
        "finished_at": timezone.now(),
        "last_error": "",
        "last_error_at": None,
    }


def find_open_run(
    run_model: type[models.Model], *, name: str, using: str, for_update: bool = False
) -> models.Model | None:
    """The open (running or failed) run of backfill ``name``, if any."""
    runs = run_model._default_manager.using(using)
    if for_update:
        runs = runs.select_for_update()
    return runs.filter(name=name, status__in=OPEN_STATUSES).order_by("-pk").first()


def open_run(
    run_model: type[models.Model],
    *,
    name: str,
    using: str,
    parameters: Callable[[], dict[str, Any]],
    restart: bool = False,
    status: str = "running",
    **fields: Any,
) -> tuple[models.Model, bool]:
    """Return the open run of backfill ``name`` to resume, or a new one; and whether it resumed.

    A resumed run keeps its parameters; a new one gets ``parameters()``. ``restart`` cancels the
    open run and starts anew. A new run gets ``status`` and ``fields``; a resumed one becomes
    "running" unless ``status`` is "pending" (a run left for a worker to pick up).
    """
    manager = run_model._default_manager.db_manager(using)
    with transaction.atomic(using=using):
        current = find_open_run(run_model, name=name, using=using, for_update=True)
        if current is not None and not restart:
            if status == "running":
                manager.filter(pk=current.pk).update(status="running", updated_at=timezone.now())
                current.refresh_from_db(using=using)
            return current, True
        if current is not None:
            # A new generation: a process still writing to the cancelled run is stopped by its
            # next checkpoint (backfills/leases.py).
            manager.filter(pk=current.pk).update(
                status="cancelled",
                finished_at=timezone.now(),
                updated_at=timezone.now(),
                generation=F("generation") + 1,
            )
        run = manager.create(name=name, status=status, parameters=parameters(), **fields)
        return run, False


class RunCheckpoint:
    """A :class:`~backfills.engine.Checkpoint` kept in a run's row (``BackfillRun``, or its
    historical model in a migration), written in the same transaction as each batch."""

    def __init__(self, run: models.Model, *, using: str) -> None:
        self.run = run
        self.using = using
        self.last_key = run.last_key
        # Whether the last batch's checkpoint found the run plainly running (see _checkpoint).
        self.running_at_checkpoint = False

    def _rows(self) -> models.QuerySet:
        """The run's row, as this checkpoint may write it."""
        return type(self.run)._default_manager.using(self.using).filter(pk=self.run.pk)

    def _write(self, rows: models.QuerySet, values: dict[str, Any]) -> int:
        return rows.update(updated_at=timezone.now(), **values)

    def _update(self, **values: Any) -> None:
        self.running_at_checkpoint = False
        self._write(self._rows(), values)

    def _checkpoint(self, **values: Any) -> None:
        """Write a batch's checkpoint, reading the operators' wish with it.

        The write matches the run only while no pause or cancel is pending, so the next
        :meth:`control` can answer "run" without a query of its own: one round trip less per
        batch. A pause that commits after this write is seen by the next batch's checkpoint,
        so operators are still obeyed within one batch.
        """
        if self._write(self._rows().exclude(status__in=list(CONTROL_BY_STATUS)), values):
            self.running_at_checkpoint = True
        else:
            self._update(**values)  # paused or cancelling meanwhile

    def record_batch(self, *, last_key: Any, rows: int, batch_size: int) -> None:
        self._checkpoint(
            last_key=last_key, rows_done=F("rows_done") + rows, batches=F("batches") + 1
        )
        self.last_key = last_key

    def record_failure(self, error: str) -> None:
        self._update(**failure_fields(error))

    def record_success(self) -> None:
        self._update(**success_fields())

    def record_cancelled(self) -> None:
        self._update(status="cancelled", finished_at=timezone.now())

    def record_throttle(self, reason: str) -> None:
        logger.info("backfill %s backs off: %s", self.run.name, reason)

    def rewind(self, last_key: Any) -> None:
        self._update(last_key=last_key)
        self.last_key = last_key

    def control(self) -> str:
        """What operators asked for, from the run's status."""
        if self.running_at_checkpoint:
            self.running_at_checkpoint = False
            return "run"
        status = (
            type(self.run)
            ._default_manager.using(self.using)
            .filter(pk=self.run.pk)
            .values_list("status", flat=True)
            .first()
        )
        return CONTROL_BY_STATUS.get(status, "run")

    def heartbeat(self) -> None:
        self._update()

    def reload(self) -> None:
        """Read ``last_key`` back from the run's row (after a batch lost its connection)."""
        self.running_at_checkpoint = False
        self.last_key = self._rows().values_list("last_key", flat=True).get()


def record_event(
    run: models.Model,
    kind: str,
    *,
    using: str,
    actor: str = "",
    origin: str = "",
    message: str = "",
    event_model: type[models.Model] = BackfillRunEvent,
) -> models.Model:
    """Add one line to the run's history (``event_model``: a migration's historical model)."""
    return event_model._default_manager.using(using).create(
        run_id=run.pk, kind=kind, actor=actor[:150], origin=origin, message=message
    )


def process_name(role: str) -> str:
    """Who is acting, for leases and events: the role, the OS user, the host and the pid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{role} {user}@{socket.gethostname()} pid {os.getpid()}"
