"""The run ledger: runs of registered backfills, their lanes and their history."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="BackfillRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "name",
                    models.CharField(
                        help_text="The backfill's registered name, e.g. tasks.task.priority.",
                        max_length=100,
                    ),
                ),
                (
                    "parameters",
                    models.JSONField(
                        blank=True, default=dict, help_text="What the run computes its values with."
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("running", "Running"),
                            ("paused", "Paused"),
                            ("cancelling", "Cancelling"),
                            ("cancelled", "Cancelled"),
                            ("failed", "Failed"),
                            ("succeeded", "Succeeded"),
                        ],
                        default="running",
                        max_length=20,
                    ),
                ),
                ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "last_key",
                    models.JSONField(blank=True, help_text="Key of the last row done.", null=True),
                ),
                ("rows_done", models.BigIntegerField(default=0)),
                ("batches", models.IntegerField(default=0)),
                ("last_error", models.TextField(blank=True)),
                ("last_error_at", models.DateTimeField(blank=True, null=True)),
                (
                    "rows_estimated",
                    models.BigIntegerField(
                        blank=True,
                        help_text="Rows to fill when the run started (estimated).",
                        null=True,
                    ),
                ),
                (
                    "batch_size",
                    models.IntegerField(blank=True, help_text="Current batch size.", null=True),
                ),
                (
                    "rows_per_second",
                    models.FloatField(blank=True, help_text="Smoothed rate.", null=True),
                ),
                (
                    "origin",
                    models.CharField(
                        choices=[
                            ("command", "Command"),
                            ("admin", "Admin"),
                            ("worker", "Worker"),
                            ("migration", "Migration"),
                        ],
                        default="command",
                        max_length=20,
                    ),
                ),
                ("started_by", models.CharField(blank=True, default="", max_length=150)),
                (
                    "background",
                    models.BooleanField(
                        default=False, help_text="Carried out by task workers (db_worker)."
                    ),
                ),
                ("heartbeat_at", models.DateTimeField(blank=True, null=True)),
                ("lease_owner", models.CharField(blank=True, default="", max_length=200)),
                ("lease_expires_at", models.DateTimeField(blank=True, null=True)),
                ("generation", models.IntegerField(default=0)),
                ("worker_task_id", models.CharField(blank=True, default="", max_length=64)),
                ("throttle_reason", models.CharField(blank=True, default="", max_length=300)),
                ("throttled_at", models.DateTimeField(blank=True, null=True)),
                (
                    "workers",
                    models.PositiveIntegerField(
                        default=1,
                        help_text="Connections that fill the rows in parallel, each walking its own lane of keys.",
                    ),
                ),
            ],
            options={
                "ordering": ["-started_at", "-id"],
                "permissions": [
                    ("control_backfillrun", "Can start, pause, resume and cancel backfills")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(
                            ("status__in", ("pending", "running", "paused", "cancelling", "failed"))
                        ),
                        fields=("name",),
                        name="backfillrun_one_open",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="BackfillRunEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "kind",
                    models.CharField(
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
                        ],
                        max_length=30,
                    ),
                ),
                (
                    "actor",
                    models.CharField(
                        blank=True, help_text="User, or process and host.", max_length=150
                    ),
                ),
                (
                    "origin",
                    models.CharField(
                        blank=True,
                        choices=[
                            ("command", "Command"),
                            ("admin", "Admin"),
                            ("worker", "Worker"),
                            ("migration", "Migration"),
                        ],
                        max_length=20,
                    ),
                ),
                ("message", models.TextField(blank=True)),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="backfills.backfillrun",
                    ),
                ),
            ],
            options={
                "ordering": ["-at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="BackfillLane",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("number", models.PositiveIntegerField()),
                (
                    "after_key",
                    models.JSONField(blank=True, help_text="Starts after this key.", null=True),
                ),
                (
                    "upto_key",
                    models.JSONField(
                        blank=True,
                        help_text="Ends at this key; empty: the end of the table.",
                        null=True,
                    ),
                ),
                (
                    "last_key",
                    models.JSONField(blank=True, help_text="Key of the last row done.", null=True),
                ),
                ("rows_done", models.BigIntegerField(default=0)),
                ("batches", models.IntegerField(default=0)),
                ("finished", models.BooleanField(default=False)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lanes",
                        to="backfills.backfillrun",
                    ),
                ),
            ],
            options={
                "ordering": ["run", "number"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("run", "number"), name="backfilllane_unique_number"
                    )
                ],
            },
        ),
    ]
