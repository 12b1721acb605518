"""Helpers shared by several test modules."""

import time
from io import StringIO

from tasks.models import Task


def create_legacy_tasks(tasks: list[Task]) -> list[Task]:
    """Save ``tasks`` as code that predates the priority column would: priority NULL.

    (The current code's bulk_create derives a priority, so it is cleared afterwards.)
    """
    created = Task.objects.bulk_create(tasks)
    Task.objects.filter(pk__in=[task.pk for task in created]).update(priority=None)
    return created


def wait_until(predicate, *, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Terminal(StringIO):
    """A stream that says it is a terminal, as a command's stderr on a console does."""

    def isatty(self) -> bool:
        return True
