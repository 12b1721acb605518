"""A run stopped by its operator (Ctrl-C) is "interrupted": still open, so the next command
carries it on, and the one open run per backfill that the partial unique index allows.

The index's condition names the open statuses, so it is built again with the new one: dropped
and created in this migration's transaction, so that no moment is without it. The run ledger
holds a few rows per backfill, which the index builds on in milliseconds; the choices change
nothing in the database.
"""

from django.db import migrations, models

from migration_safety.operations import IgnoreLint

OPEN_STATUSES = ("pending", "running", "paused", "cancelling", "failed", "interrupted")


class Migration(migrations.Migration):
    dependencies = [
        ("backfills", "0001_initial"),
    ]

    operations = [
        IgnoreLint(
            rules=["require-concurrent-index-creation", "require-concurrent-index-deletion"],
            because=(
                "backfills_backfillrun holds a few rows per backfill: its partial unique index "
                "is rebuilt in milliseconds, in one transaction"
            ),
        ),
        migrations.RemoveConstraint(
            model_name="backfillrun",
            name="backfillrun_one_open",
        ),
        migrations.AlterField(
            model_name="backfillrun",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("running", "Running"),
                    ("paused", "Paused"),
                    ("cancelling", "Cancelling"),
                    ("cancelled", "Cancelled"),
                    ("failed", "Failed"),
                    ("succeeded", "Succeeded"),
                    ("interrupted", "Interrupted"),
                ],
                default="running",
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="backfillrunevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("created", "Created"),
                    ("processing", "Processing started"),
                    ("enqueued", "Enqueued for workers"),
                    ("paused", "Paused"),
                    ("resumed", "Resumed"),
                    ("cancel requested", "Cancel requested"),
                    ("cancelled", "Cancelled"),
                    ("retried", "Retried"),
                    ("failed", "Failed"),
                    ("succeeded", "Succeeded"),
                    ("throttled", "Throttled"),
                    ("taken over", "Taken over"),
                    ("interrupted", "Interrupted"),
                ],
                max_length=30,
            ),
        ),
        migrations.AddConstraint(
            model_name="backfillrun",
            constraint=models.UniqueConstraint(
                condition=models.Q(status__in=OPEN_STATUSES),
                fields=("name",),
                name="backfillrun_one_open",
            ),
        ),
    ]
