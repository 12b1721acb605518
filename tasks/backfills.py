"""The backfills of tasks' columns, each declared once (see backfills.registry).

``manage.py backfill NAME``, the admin's Backfill runs, the task workers and the migrations'
``RunBackfill(NAME)`` find them here by name. ``model`` is the Task model the caller uses: the
current one, or a migration's historical one, whose relations lead to the other models.
"""

import datetime

from django.utils import timezone

from backfills.registry import BackfillDefinition, BackfillNotReady, register
from tasks.priority import PriorityRule
from tasks.workspace import DEFAULT_WORKSPACE_SLUG, WorkspaceRule

register(
    BackfillDefinition(
        name="tasks.task.priority",
        model="tasks.Task",
        field="priority",
        # A run computes every row against the day it started, however long it takes.
        parameters=lambda model, using: {"reference_date": timezone.localdate().isoformat()},
        value=lambda model, parameters: PriorityRule(
            datetime.date.fromisoformat(parameters["reference_date"])
        ).expression(),
        description="the priority rule (tasks/priority.py) on the run's reference date",
    )
)


def default_workspace(model, using: str) -> dict[str, int]:
    """The id of the default workspace, fixed for the run: where tasks without a category go."""
    workspaces = model._meta.get_field("workspace").related_model._default_manager
    found = workspaces.using(using).filter(slug=DEFAULT_WORKSPACE_SLUG).values_list("pk", flat=True)
    if not found:
        raise BackfillNotReady(
            f"No workspace with slug {DEFAULT_WORKSPACE_SLUG!r} in database {using!r}: load it "
            f"first (manage.py loaddata workspaces --database {using})."
        )
    return {"default_workspace": found[0]}


register(
    BackfillDefinition(
        name="tasks.task.workspace",
        model="tasks.Task",
        field="workspace",
        parameters=default_workspace,
        value=lambda model, parameters: WorkspaceRule(parameters["default_workspace"]).expression(
            model._meta.get_field("category").related_model
        ),
        description="the workspace of the task's category, else the default one",
    )
)
