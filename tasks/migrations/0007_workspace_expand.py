"""Step 1 of the workspace rollout: expand.

``workspace_id`` arrives as a nullable column. Django's AddField of a ForeignKey would validate
the constraint with a scan of the whole table and build its index with a plain CREATE INDEX,
both blocking writes; on PostgreSQL this adds the column (metadata only), builds the index
CONCURRENTLY and adds the foreign key NOT VALID (checked for new rows, validated in the contract
step). Not atomic: CONCURRENTLY cannot run in a transaction, and each statement commits alone.
"""

import django.db.models.deletion
from django.db import migrations, models

from migration_safety.operations import AddForeignKeyNotValid

HELP_TEXT = "The workspace of the task's category (the default one without a category)."


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0006_workspaces"),
    ]

    operations = [
        AddForeignKeyNotValid(
            model_name="task",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                help_text=HELP_TEXT,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="tasks",
                to="tasks.workspace",
            ),
        ),
    ]
