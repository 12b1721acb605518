"""Step 5 of the priority rollout: contract — priority becomes NOT NULL with a database default.

Order matters while code that predates the column may still be running:

1. the database default first (metadata only), so that INSERTs that never name ``priority``
   get "medium" instead of NULL from now on;
2. a catch-up backfill of the NULL rows written since the backfill ran (same backfill, batches
   committed one by one);
3. NOT NULL, on PostgreSQL via CHECK ... NOT VALID -> VALIDATE -> SET NOT NULL, so the table is
   never scanned under ACCESS EXCLUSIVE (migration_safety.operations.AlterFieldSetNotNull).

Not atomic: each step commits on its own and releases its lock at once.
"""

from django.db import migrations, models

from backfills.operations import RunBackfill
from migration_safety.operations import AlterFieldSetNotNull

PRIORITY_CHOICES = [("low", "Low"), ("medium", "Medium"), ("high", "High"), ("urgent", "Urgent")]
HELP_TEXT = "Leave empty to derive it from the status and due date."


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0003_priority_backfill"),
    ]

    operations = [
        migrations.AlterField(
            model_name="task",
            name="priority",
            field=models.CharField(
                blank=True,
                choices=PRIORITY_CHOICES,
                db_default="medium",
                help_text=HELP_TEXT,
                max_length=20,
                null=True,
            ),
        ),
        # Reversing keeps the filled values (valid in every earlier state).
        RunBackfill("tasks.task.priority"),
        AlterFieldSetNotNull(
            model_name="task",
            name="priority",
            field=models.CharField(
                blank=True,
                choices=PRIORITY_CHOICES,
                db_default="medium",
                help_text=HELP_TEXT,
                max_length=20,
            ),
        ),
    ]
