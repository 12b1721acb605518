"""Reads about tasks that more than one caller needs."""

from django.db.models import Count

from tasks.models import Task, Workspace
from tasks.priority import Priority


def _counts_by(field: str, *, using: str) -> dict:
    """Number of tasks per value of ``field`` (one GROUP BY)."""
    rows = Task.objects.using(using).order_by().values_list(field).annotate(n=Count("pk"))
    return dict(rows.values_list(field, "n"))


def task_counts_by_status(*, using: str) -> dict[str, int]:
    """Number of tasks per status, every known status present (zero when none), then any other
    value the column holds (written by other code, or before a status was retired), by value:
    every row is counted once."""
    counts = _counts_by("status", using=using)
    known = {status: counts.pop(status, 0) for status in Task.Status.values}
    return {**known, **dict(sorted(counts.items(), key=lambda item: str(item[0])))}


def task_counts_by_priority(*, using: str) -> dict[str | None, int]:
    """Number of tasks per priority, most pressing first; None counts rows not backfilled yet."""
    counts = _counts_by("priority", using=using)
    ordered = {value: counts.get(value, 0) for value in reversed(Priority.values)}
    ordered[None] = counts.get(None, 0)
    return ordered


def task_counts_by_workspace(*, using: str) -> dict[str | None, int]:
    """Number of tasks per workspace name, by name; None counts rows not backfilled yet.

    Grouped by the column, not through a join: the model says NOT NULL, so Django would join
    the workspaces with an INNER JOIN and drop the rows the backfill has not reached yet.
    """
    counts = _counts_by("workspace", using=using)
    names = dict(Workspace.objects.using(using).values_list("pk", "name"))
    ordered = dict(
        sorted((names.get(pk, str(pk)), n) for pk, n in counts.items() if pk is not None)
    )
    if None in counts:
        ordered[None] = counts[None]
    return ordered
