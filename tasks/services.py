"""Writes to tasks go through here: validated, in a transaction, keyword-only."""

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from tasks.models import Category, Task

UPDATABLE_FIELDS = frozenset({"title", "description", "status", "due_date", "category", "assignee"})


@transaction.atomic
def task_create(
    *,
    title: str,
    description: str = "",
    status: str = Task.Status.TODO,
    due_date: datetime.date | None = None,
    category: Category | None = None,
    assignee: AbstractBaseUser | None = None,
) -> Task:
    """Create a task after validating it (raises ValidationError on bad values)."""
    task = Task(
        title=title,
        description=description,
        status=status,
        due_date=due_date,
        category=category,
        assignee=assignee,
    )
    task.full_clean()
    task.save()
    return task


@transaction.atomic
def task_update(*, task: Task, **changes) -> Task:
    """Apply ``changes`` to ``task``, validate, and save only the changed fields."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise TypeError(f"task_update() got unknown fields: {', '.join(sorted(unknown))}")
    for name, value in changes.items():
        setattr(task, name, value)
    task.full_clean()
    task.save(update_fields=[*changes, "updated_at"])
    return task
