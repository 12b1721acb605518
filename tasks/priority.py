"""The priority rule: one definition, as a database expression and as its Python twin.

Evaluated against a reference date ``today`` that a run fixes once when it starts:

- status ``done``                      -> low
- no due date                          -> medium
- due date <= today (overdue or today) -> urgent
- today < due date <= today + 3 days   -> high
- today + 3 < due date <= today + 14   -> medium
- due date > today + 14 days           -> low

``expression()`` is used by set-based backfills (one UPDATE per batch); ``for_task()`` for single
objects. They are kept side by side so that a change to one is seen next to the other, and a
property test (tests/test_priority.py) proves they agree on SQLite and PostgreSQL.
"""

import datetime
from dataclasses import dataclass

from django.db import models
from django.db.models import Case, Q, Value, When

HIGH_WITHIN_DAYS = 3
MEDIUM_WITHIN_DAYS = 14


class Priority(models.TextChoices):
    """Stored as these strings; ranked urgent > high > medium > low (not alphabetically)."""

    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    URGENT = "urgent", "Urgent"


# Higher is more pressing. Sorting by priority means sorting by this rank.
PRIORITY_RANK = {Priority.LOW: 1, Priority.MEDIUM: 2, Priority.HIGH: 3, Priority.URGENT: 4}


def priority_rank(field: str = "priority") -> Case:
    """A database expression giving ``field``'s rank (NULL, not yet backfilled, ranks 0)."""
    return Case(
        *(When(**{field: value}, then=Value(rank)) for value, rank in PRIORITY_RANK.items()),
        default=Value(0),
        output_field=models.IntegerField(),
    )


@dataclass(frozen=True)
class PriorityRule:
    """The rule for one reference date."""

    today: datetime.date

    @property
    def high_until(self) -> datetime.date:
        return self.today + datetime.timedelta(days=HIGH_WITHIN_DAYS)

    @property
    def medium_until(self) -> datetime.date:
        return self.today + datetime.timedelta(days=MEDIUM_WITHIN_DAYS)

    def for_task(self, *, status: str, due_date: datetime.date | None) -> str:
        """The priority of a task with this status and due date (the Python twin)."""
        if status == "done":
            return Priority.LOW
        if due_date is None:
            return Priority.MEDIUM
        if due_date <= self.today:
            return Priority.URGENT
        if due_date <= self.high_until:
            return Priority.HIGH
        if due_date <= self.medium_until:
            return Priority.MEDIUM
        return Priority.LOW

    def expression(self, *, status: str = "status", due_date: str = "due_date") -> Case:
        """The same rule as a database expression over the named columns.

        Field names are parameters so that migrations can use it on historical models. Dates are
        bound as parameters, never computed by the database, so every batch of a run agrees.
        """
        return Case(
            When(Q(**{status: "done"}), then=Value(Priority.LOW.value)),
            When(Q(**{f"{due_date}__isnull": True}), then=Value(Priority.MEDIUM.value)),
            When(Q(**{f"{due_date}__lte": self.today}), then=Value(Priority.URGENT.value)),
            When(Q(**{f"{due_date}__lte": self.high_until}), then=Value(Priority.HIGH.value)),
            When(Q(**{f"{due_date}__lte": self.medium_until}), then=Value(Priority.MEDIUM.value)),
            default=Value(Priority.LOW.value),
            output_field=models.CharField(max_length=20),
        )
