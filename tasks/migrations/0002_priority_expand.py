"""Step 1 of the priority rollout: expand.

``priority`` arrives as a nullable column with no default: on PostgreSQL that changes only the
catalogue (no rewrite, no scan). The backfill runs between this step and the contract step, so
this step depends on the backfills app's run ledger (its own migrations).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0001_initial"),
        ("backfills", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="priority",
            field=models.CharField(
                blank=True,
                choices=[
                    ("low", "Low"),
                    ("medium", "Medium"),
                    ("high", "High"),
                    ("urgent", "Urgent"),
                ],
                max_length=20,
                null=True,
            ),
        ),
    ]
