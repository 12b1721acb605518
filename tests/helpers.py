"""Helpers shared by several test modules."""

from tasks.models import Task


def create_legacy_tasks(tasks: list[Task]) -> list[Task]:
    """Save ``tasks`` as code that predates the priority column would: priority NULL.

    (The current code's bulk_create derives a priority, so it is cleared afterwards.)
    """
    created = Task.objects.bulk_create(tasks)
    Task.objects.filter(pk__in=[task.pk for task in created]).update(priority=None)
    return created
