"""Step 5 of the workspace rollout: contract — the foreign key validated, workspace NOT NULL.

A foreign key has no constant default for INSERTs from code that predates the column, so this
step is safe only once no such code runs (docs/zero-downtime.md, the deploy order). Then:

1. refuse, changing nothing, while any task still has no workspace (rows old code wrote since
   the backfill): finish the backfill, retire that code, migrate again;
2. ``VALIDATE CONSTRAINT`` of the foreign key added NOT VALID by the expand step (a scan under
   SHARE UPDATE EXCLUSIVE: reads and writes go on);
3. NOT NULL via CHECK ... NOT VALID -> VALIDATE -> SET NOT NULL, never scanning under ACCESS
   EXCLUSIVE.

Not atomic: each step commits on its own and releases its lock at once.
"""

import django.db.models.deletion
from django.db import migrations, models

from backfills.operations import EnsureBackfillFinished
from migration_safety.operations import AlterFieldSetNotNull, ValidateForeignKey

HELP_TEXT = "The workspace of the task's category (the default one without a category)."


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0008_workspace_backfill"),
    ]

    operations = [
        EnsureBackfillFinished("tasks.task.workspace"),
        ValidateForeignKey(model_name="task", name="workspace"),
        AlterFieldSetNotNull(
            model_name="task",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                help_text=HELP_TEXT,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="tasks",
                to="tasks.workspace",
            ),
        ),
    ]
