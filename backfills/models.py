"""The run ledger: every run of a registered backfill, its lanes and its history."""

import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

# A run in one of these states is not finished: the next invocation resumes it, and a partial
# unique index allows one per backfill.
OPEN_STATUSES = ("pending", "running", "paused", "cancelling", "failed", "interrupted")


def lease_is_live(run: models.Model) -> bool:
    """A process holds ``run`` (a BackfillRun, or a migration's historical one, which has no
    properties) and has renewed its lease in time."""
    return bool(
        run.lease_owner
        and run.lease_expires_at is not None
        and run.lease_expires_at > timezone.now()
    )


class BackfillRun(models.Model):
    """One run of a registered backfill: its checkpoint, its progress and who may work on it.

    ``name`` is the backfill's registered name and ``parameters`` what its value was fixed with
    when the run started (a reference date, a default id): every batch of the run, and a run
    resumed a week later, computes its values with them. The checkpoint (``last_key``,
    ``rows_done``, ``batches``) is written in the same transaction as each batch, so a killed run
    resumes exactly. ``status`` is also how operators steer a run: the process working on it
    reads it with every batch's checkpoint. The lease (``lease_owner``, ``lease_expires_at``,
    ``generation``) says which process that is: another one takes over only once the lease has
    expired, and a batch whose process lost the lease meanwhile is rolled back (its checkpoint
    write names the generation it holds).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        CANCELLING = "cancelling", "Cancelling"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"
        SUCCEEDED = "succeeded", "Succeeded"
        # Stopped by its operator (Ctrl-C) between batches: the next command carries it on.
        INTERRUPTED = "interrupted", "Interrupted"

    class Origin(models.TextChoices):
        COMMAND = "command", "Command"
        ADMIN = "admin", "Admin"
        WORKER = "worker", "Worker"
        MIGRATION = "migration", "Migration"

    name = models.CharField(
        max_length=100, help_text="The backfill's registered name, e.g. tasks.task.priority."
    )
    parameters = models.JSONField(
        default=dict, blank=True, help_text="What the run computes its values with."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_key = models.JSONField(null=True, blank=True, help_text="Key of the last row done.")
    rows_done = models.BigIntegerField(default=0)
    batches = models.IntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    rows_estimated = models.BigIntegerField(
        null=True, blank=True, help_text="Rows to fill when the run started (estimated)."
    )
    batch_size = models.IntegerField(null=True, blank=True, help_text="Current batch size.")
    rows_per_second = models.FloatField(null=True, blank=True, help_text="Smoothed rate.")
    origin = models.CharField(max_length=20, choices=Origin.choices, default=Origin.COMMAND)
    started_by = models.CharField(max_length=150, blank=True, default="")
    background = models.BooleanField(
        default=False, help_text="Carried out by task workers (db_worker)."
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    generation = models.IntegerField(default=0)
    # The worker task due to carry the run on (background runs): any other is superseded.
    worker_task_id = models.CharField(max_length=64, blank=True, default="")
    throttle_reason = models.CharField(max_length=300, blank=True, default="")
    throttled_at = models.DateTimeField(null=True, blank=True)
    workers = models.PositiveIntegerField(
        default=1,
        help_text="Connections that fill the rows in parallel, each walking its own lane of keys.",
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # At most one open run per backfill: the one every process resumes.
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(status__in=OPEN_STATUSES),
                name="backfillrun_one_open",
            )
        ]
        permissions = [("control_backfillrun", "Can start, pause, resume and cancel backfills")]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"

    @property
    def is_open(self) -> bool:
        """Not finished: the run the next invocation (or worker) carries on."""
        return self.status in OPEN_STATUSES

    @property
    def lease_is_live(self) -> bool:
        """A process holds the run and has renewed its lease in time."""
        return lease_is_live(self)

    @property
    def silent_for_a_lease(self) -> bool:
        """No process has shown life on the run for a whole lease period (every heartbeat
        writes ``updated_at`` too)."""
        limit = datetime.timedelta(seconds=settings.BACKFILL_LEASE_SECONDS)
        return self.updated_at < timezone.now() - limit

    @property
    def is_stalled(self) -> bool:
        """Meant to be worked on, but no process has shown life for a whole lease period."""
        if self.status not in (self.Status.RUNNING, self.Status.CANCELLING) or self.lease_is_live:
            return False
        return self.silent_for_a_lease

    @property
    def status_label(self) -> str:
        """The status as operators need it: a running run nobody works on says so."""
        label = self.get_status_display().lower()
        if self.is_stalled:
            return f"{label} (stalled)"
        if self.status == self.Status.PENDING and self.background and self.silent_for_a_lease:
            return f"{label} (no worker has picked it up)"
        if self.status == self.Status.RUNNING and self.throttle_reason:
            return f"{label} (backing off)"
        return label

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the process working on the run last showed life."""
        if self.heartbeat_at is None:
            return None
        return (timezone.now() - self.heartbeat_at).total_seconds()

    @property
    def progress(self) -> float | None:
        """Fraction done (0-1), from rows done against the estimate; 1 once succeeded."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.rows_estimated:
            return None
        # The estimate can be low (planner statistics): never show 100% before it is done.
        return min(0.99, self.rows_done / self.rows_estimated)

    @property
    def rate(self) -> float | None:
        """Rows per second to show: while open, the smoothed rate of the latest batches (what
        the ETA counts on); once finished, the average from start to finish, which is what the
        command's summary reports for a run it carried out in one go."""
        if self.is_open or self.finished_at is None:
            return self.rows_per_second
        seconds = (self.finished_at - self.started_at).total_seconds()
        return self.rows_done / seconds if seconds > 0 and self.rows_done else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the smoothed rate, None when unknown or not running."""
        if self.status != self.Status.RUNNING or not self.rows_per_second:
            return None
        if self.rows_estimated is None:
            return None
        return max(0, self.rows_estimated - self.rows_done) / self.rows_per_second


class BackfillLane(models.Model):
    """One part of a parallel run's key range, walked by one connection, with its checkpoint.

    A run with several workers splits the keys still to fill into lanes when it starts. Each
    lane keeps its own ``last_key``, written in the same transaction as each of its batches
    (together with the run's totals), so a killed run resumes every lane where it stopped.
    """

    run = models.ForeignKey(BackfillRun, on_delete=models.CASCADE, related_name="lanes")
    number = models.PositiveIntegerField()
    after_key = models.JSONField(null=True, blank=True, help_text="Starts after this key.")
    upto_key = models.JSONField(
        null=True, blank=True, help_text="Ends at this key; empty: the end of the table."
    )
    last_key = models.JSONField(null=True, blank=True, help_text="Key of the last row done.")
    rows_done = models.BigIntegerField(default=0)
    batches = models.IntegerField(default=0)
    finished = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="backfilllane_unique_number")
        ]

    def __str__(self) -> str:
        return f"lane {self.number} of run #{self.run_id}"


class BackfillRunEvent(models.Model):
    """Something that happened to a run: an operator's action, a throttle, a takeover."""

    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        PROCESSING = "processing", "Processing started"
        ENQUEUED = "enqueued", "Enqueued for workers"
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"
        CANCEL_REQUESTED = "cancel requested", "Cancel requested"
        CANCELLED = "cancelled", "Cancelled"
        RETRIED = "retried", "Retried"
        FAILED = "failed", "Failed"
        SUCCEEDED = "succeeded", "Succeeded"
        THROTTLED = "throttled", "Throttled"
        TAKEN_OVER = "taken over", "Taken over"
        INTERRUPTED = "interrupted", "Interrupted"

    run = models.ForeignKey(BackfillRun, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    actor = models.CharField(max_length=150, blank=True, help_text="User, or process and host.")
    origin = models.CharField(max_length=20, choices=BackfillRun.Origin.choices, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.at:%Y-%m-%d %H:%M:%S}"
