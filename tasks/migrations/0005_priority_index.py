"""Step 6 of the priority rollout: the index that serves filtering by priority.

Built with CREATE INDEX CONCURRENTLY on PostgreSQL, so writes to tasks_task go on during the
build; hence not atomic (CONCURRENTLY cannot run in a transaction). An ordinary index elsewhere.
"""

from django.db import migrations, models

from migration_safety.operations import AddIndexSafely


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0004_priority_contract"),
    ]

    operations = [
        AddIndexSafely(
            model_name="task",
            index=models.Index(fields=["priority", "due_date"], name="tasks_task_priority_due_idx"),
        ),
    ]
