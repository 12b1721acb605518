"""Operators' controls of a run: pause, resume, cancel and retry.

Each changes the run's status in a transaction that locks the run's row; the process working on
the run reads the status before its first batch and then with each batch's checkpoint, so it
obeys within one batch. An action that does not apply to the run's status changes nothing and
says why (:class:`RunStateError`). Starting a fresh chain of worker tasks after a resume or a
retry is the orchestration's part (:mod:`backfills.orchestration`).
"""

from collections.abc import Callable

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from backfills.ledger import record_event
from backfills.models import BackfillRun, BackfillRunEvent

Status = BackfillRun.Status
Kind = BackfillRunEvent.Kind
# Which action applies to a run in which status.
CONTROL_STATUSES = {
    "pause": (Status.PENDING, Status.RUNNING, Status.INTERRUPTED),
    "resume": (Status.PAUSED,),
    "cancel": (Status.PENDING, Status.RUNNING, Status.PAUSED, Status.FAILED, Status.INTERRUPTED),
    "retry": (Status.FAILED,),
}
# Statuses in which the action has, in effect, already been taken.
ALREADY = {
    "pause": (Status.PAUSED,),
    "resume": (Status.PENDING, Status.RUNNING),
    "cancel": (Status.CANCELLING, Status.CANCELLED),
}


class RunStateError(Exception):
    """The action does not apply to the run in its current status; nothing was changed."""


def _change_status(
    run: BackfillRun,
    *,
    action: str,
    using: str,
    actor: str,
    origin: str,
    decide: Callable[[BackfillRun], tuple[str, dict, str]],
) -> BackfillRun:
    """Lock the run row, check its status allows ``action``, apply ``decide``'s change."""
    allowed = CONTROL_STATUSES[action]
    with transaction.atomic(using=using):
        current = BackfillRun.objects.using(using).select_for_update().get(pk=run.pk)
        if current.status not in allowed:
            state = current.get_status_display().lower()
            if current.status in ALREADY.get(action, ()):
                raise RunStateError(f"Run #{current.pk} is already {state}. Nothing was changed.")
            names = ", ".join(allowed)
            raise RunStateError(
                f"Run #{current.pk} is {state}: {action} applies only to a run that is "
                f"{names}. Nothing was changed."
            )
        status, extra, kind = decide(current)
        BackfillRun.objects.using(using).filter(pk=current.pk).update(
            status=status, updated_at=timezone.now(), **extra
        )
        record_event(current, kind, using=using, actor=actor, origin=origin)
    run.refresh_from_db(using=using)
    return run


def pause_run(run: BackfillRun, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Pause a pending or running run; its process stops before its next batch."""
    return _change_status(
        run,
        action="pause",
        using=using,
        actor=actor,
        origin=origin,
        decide=lambda current: (Status.PAUSED, {}, Kind.PAUSED),
    )


def resume_run(run: BackfillRun, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Resume a paused run: its waiting process carries on, or (nobody holding it) it is left
    pending — for the next command, or for a worker."""
    run = _change_status(
        run,
        action="resume",
        using=using,
        actor=actor,
        origin=origin,
        decide=lambda current: (
            Status.RUNNING if current.lease_is_live else Status.PENDING,
            {},
            Kind.RESUMED,
        ),
    )
    return run


def cancel_run(run: BackfillRun, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Cancel an unfinished run. A process working on it finishes the cancel before its next
    batch (status "cancelling" until then); otherwise it is cancelled at once."""

    def decide(current: BackfillRun) -> tuple[str, dict, str]:
        if current.lease_is_live:
            return Status.CANCELLING, {}, Kind.CANCEL_REQUESTED
        # Cancelled at once. A process whose lease merely expired (a long pause between
        # batches, a slow scan) may still be alive: the new generation stops its next write.
        return (
            Status.CANCELLED,
            {"finished_at": timezone.now(), "generation": F("generation") + 1},
            Kind.CANCELLED,
        )

    return _change_status(
        run,
        action="cancel",
        using=using,
        actor=actor,
        origin=origin,
        decide=decide,
    )


def retry_run(run: BackfillRun, *, using: str, actor: str, origin: str) -> BackfillRun:
    """Make a failed run pending again, from its checkpoint (for the next command, or a
    worker)."""
    run = _change_status(
        run,
        action="retry",
        using=using,
        actor=actor,
        origin=origin,
        decide=lambda current: (Status.PENDING, {}, Kind.RETRIED),
    )
    return run


# The operators' actions, by name (the command's flags and the admin's buttons).
CONTROLS = {"pause": pause_run, "resume": resume_run, "cancel": cancel_run, "retry": retry_run}
