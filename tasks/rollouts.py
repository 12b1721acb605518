"""The rollouts of tasks' columns, as plans for ``manage.py rehearse --rollout NAME``.

Each plan is data: how a scratch database is made to look like production before the rollout,
the steps in the order an operator runs them, and the code running meanwhile
(tasks/traffic.py). The set-up loads the reference fixtures on the fully migrated schema (they
are written for today's models), then migrates back to where the rollout starts.
"""

from django.db.models import Sum

from backfills.models import BackfillRun
from migration_safety.rollouts import Rollout, Step, register
from tasks.traffic import TasksApplication

MIGRATE_APPS = tuple(
    ("migrate", app) for app in ("contenttypes", "auth", "admin", "sessions", "backfills", "tasks")
)
# Not django_tasks_db: its data migrations query the default database instead of the one
# being migrated, and the rehearsal runs no workers.
REFERENCE_DATA = ("loaddata", "workspaces", "categories", "roles")
LEGACY_ROWS = ("seed", "--tasks", "{tasks}", "--seed", "{seed}", "--no-progress")


def rows_filled_by(name: str):
    """Rows every run of backfill ``name`` has filled so far, on a database."""

    def progress(using: str) -> int:
        runs = BackfillRun.objects.using(using).filter(name=name)
        return runs.aggregate(total=Sum("rows_done"))["total"] or 0

    return progress


register(
    Rollout(
        name="priority",
        description="Task.priority, a column with a database default",
        table="tasks_task",
        column="priority",
        set_up=(
            *MIGRATE_APPS,
            REFERENCE_DATA,
            ("migrate", "tasks", "0001_initial"),
            (*LEGACY_ROWS, "--without-priority", "--without-workspace"),
        ),
        steps=(
            Step(
                "expand",
                ("migrate", "tasks", "0002_priority_expand"),
                blocked=True,
                ships_new_code=True,
            ),
            Step("backfill", ("backfill", "tasks.task.priority", "--no-progress")),
            Step("data migration", ("migrate", "tasks", "0003_priority_backfill")),
            # Old code may go on inserting: the contract's database default fills its rows.
            Step("contract", ("migrate", "tasks", "0004_priority_contract")),
            Step("index", ("migrate", "tasks", "0005_priority_index")),
        ),
        application=lambda: TasksApplication("priority"),
        indexes=("tasks_task_priority_due_idx",),
        progress=rows_filled_by("tasks.task.priority"),
    )
)

register(
    Rollout(
        name="workspace",
        description="Task.workspace, a foreign key without a default",
        table="tasks_task",
        column="workspace_id",
        set_up=(
            *MIGRATE_APPS,
            REFERENCE_DATA,
            ("migrate", "tasks", "0005_priority_index"),
            (*LEGACY_ROWS, "--without-workspace"),
        ),
        steps=(
            # The reference table first: an ordinary migration on a few rows, then the
            # categories' workspaces as the fixture has them.
            Step("workspaces", ("migrate", "tasks", "0006_workspaces")),
            Step("reference data", ("loaddata", "workspaces", "categories")),
            Step(
                "expand",
                ("migrate", "tasks", "0007_workspace_expand"),
                blocked=True,
                ships_new_code=True,
            ),
            Step("backfill", ("backfill", "tasks.task.workspace", "--no-progress")),
            # By now every app server runs the code that writes the workspace: no row without
            # one arrives any more, and the contract (no default to fall back on) can follow.
            Step(
                "data migration",
                ("migrate", "tasks", "0008_workspace_backfill"),
                retires_old_code=True,
            ),
            Step("contract", ("migrate", "tasks", "0009_workspace_contract")),
        ),
        application=lambda: TasksApplication("workspace", known=("priority",)),
        indexes=("tasks_task_workspace_id_idx",),
        progress=rows_filled_by("tasks.task.workspace"),
    )
)
