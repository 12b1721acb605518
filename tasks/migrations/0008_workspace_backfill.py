"""Step 4 of the workspace rollout: finish the backfill for databases where the command was not
run (``manage.py backfill tasks.task.workspace``): its open run, or a new one, batch by batch.
A quick no-op where the command finished. Reversing keeps the filled values."""

from django.db import migrations

from backfills.operations import RunBackfill


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0007_workspace_expand"),
    ]

    operations = [
        RunBackfill("tasks.task.workspace"),
    ]
