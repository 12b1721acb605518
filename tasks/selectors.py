"""Reads about tasks that more than one caller needs."""

from django.db.models import Count

from tasks.models import Task


def task_counts_by_status(*, using: str) -> dict[str, int]:
    """Number of tasks per status, every status present (zero when none)."""
    counts = dict(
        Task.objects.using(using)
        .order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return {status: counts.get(status, 0) for status in Task.Status.values}
