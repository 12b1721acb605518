"""The tasks app's data: categories and tasks (roles are auth groups, see fixtures/roles.json)."""

import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, Max, Min
from django.db.models.expressions import DatabaseDefault
from django.utils import timezone

from tasks.priority import Priority, PriorityRule, priority_rank


class CategoryManager(models.Manager["Category"]):
    """Looks categories up by slug, their natural key, for fixtures."""

    def get_by_natural_key(self, slug: str) -> "Category":
        """Return the category with this slug, or say which fixture to load first."""
        try:
            return self.get(slug=slug)
        except self.model.DoesNotExist as exc:
            raise self.model.DoesNotExist(
                f"No category with slug {slug!r}; load the categories fixture first "
                f"(manage.py loaddata categories) or fix the reference."
            ) from exc


class Category(models.Model):
    """A grouping of tasks, referred to by its slug in fixtures."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)

    objects = CategoryManager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    def natural_key(self) -> tuple[str]:
        return (self.slug,)


class TaskQuerySet(models.QuerySet["Task"]):
    def bulk_create(self, objs, *args, **kwargs) -> list["Task"]:
        """bulk_create skips save(): derive the priority of each task that has none here."""
        objs = list(objs)
        for task in objs:
            task.fill_priority()
        return super().bulk_create(objs, *args, **kwargs)

    def dates(self, field_name: str, kind: str, order: str = "ASC"):
        """Years or months that have rows, found by probing each candidate with an index range.

        Django's version is ``SELECT DISTINCT date_trunc(...)`` over every matching row: a full
        scan on a big table, run on each admin page view by the due-date hierarchy. Between
        the first and last date (two index lookups) there are only a few years, or twelve
        months, to probe, each with an EXISTS on the date index. Days keep Django's query: the
        hierarchy asks for them within one month only.
        """
        if kind not in ("year", "month"):
            return super().dates(field_name, kind, order)
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        periods = []
        start = bounds["first"].replace(month=1 if kind == "year" else bounds["first"].month, day=1)
        while start <= bounds["last"]:
            if kind == "year":
                end = start.replace(year=start.year + 1)
            else:
                end = (start.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
            if self.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end}).exists():
                periods.append(start)
            start = end
        return periods if order == "ASC" else periods[::-1]

    def order_by_priority(self) -> "TaskQuerySet":
        """Most pressing first (urgent, high, medium, low, then not yet set), soonest due first."""
        return self.order_by(priority_rank().desc(), F("due_date").asc(nulls_last=True), "-id")


class Task(models.Model):
    """A unit of work, optionally categorised and assigned to a user."""

    class Status(models.TextChoices):
        TODO = "todo", "To do"
        IN_PROGRESS = "in_progress", "In progress"
        BLOCKED = "blocked", "Blocked"
        DONE = "done", "Done"

    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.TODO)
    due_date = models.DateField(null=True, blank=True)
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
    )
    # Arrived on a live table: expand (nullable, 0002), backfill (command and 0003), contract
    # (NOT NULL with a database default, 0004). This code also runs between expand and contract,
    # so it tolerates NULL on read and always writes a value (see save()).
    priority = models.CharField(
        max_length=20,
        choices=Priority.choices,
        blank=True,
        # For INSERTs from code that predates the column (they never name it).
        db_default=Priority.MEDIUM,
        help_text="Leave empty to derive it from the status and due date.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        # Newest first, served by the primary key's index (ids grow with time). No separate
        # created_at index: every index is written by each insert and by each non-HOT update,
        # and the backfill updates every row (docs/benchmarks.md).
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["due_date"], name="tasks_task_due_date_idx"),
            # Serves the admin's priority filter (and due-date order within it). Added after the
            # contract step, concurrently: migration 0005.
            models.Index(fields=["priority", "due_date"], name="tasks_task_priority_due_idx"),
        ]

    def __str__(self) -> str:
        return self.title

    def save(self, *args, **kwargs) -> None:
        """Save, deriving the priority from the rule when none is set."""
        update_fields = kwargs.get("update_fields")
        if self.fill_priority() and update_fields is not None:
            kwargs["update_fields"] = {*update_fields, "priority"}
        super().save(*args, **kwargs)

    def fill_priority(self) -> bool:
        """Derive the priority from the rule if none is set; True if it did (the dual-write)."""
        if self.priority and not isinstance(self.priority, DatabaseDefault):
            return False
        self.priority = PriorityRule(timezone.localdate()).for_task(
            status=self.status, due_date=self.due_date
        )
        return True


class BackfillRun(models.Model):
    """The checkpoint of one run of a batched backfill, so that a killed run resumes exactly."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        FAILED = "failed", "Failed"
        SUCCEEDED = "succeeded", "Succeeded"
        CANCELLED = "cancelled", "Cancelled"

    name = models.CharField(max_length=100, help_text="Which backfill, e.g. tasks.task.priority.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    reference_date = models.DateField(help_text="The date the whole run computes values against.")
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_key = models.JSONField(null=True, blank=True, help_text="Key of the last row done.")
    rows_done = models.BigIntegerField(default=0)
    batches = models.IntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # At most one run of a backfill is open (running or resumable after a failure).
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(status__in=["running", "failed"]),
                name="backfillrun_one_open_per_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"
