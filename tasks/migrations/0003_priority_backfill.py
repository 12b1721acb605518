"""Step 4 of the priority rollout: finish the backfill for databases where the command was not run.

The same backfill as ``manage.py backfill tasks.task.priority``, named by its registered name
(resuming its open run, with the same reference date), in batches that each commit on their own:
the migration is not atomic, so it never holds row locks on the whole table. Where the command
already finished, only the check that no NULL is left runs. Reversing keeps the filled values:
they are valid in the expand state, and erasing them would only force the backfill to be redone.
"""

from django.db import migrations

from backfills.operations import RunBackfill


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0002_priority_expand"),
    ]

    operations = [
        RunBackfill("tasks.task.priority"),
    ]
