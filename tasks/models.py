"""The tasks app's data: workspaces, categories and tasks (roles are auth groups, see
fixtures/roles.json)."""

import datetime

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models, router
from django.db.models import F, Max, Min
from django.db.models.expressions import DatabaseDefault
from django.db.models.functions import Upper
from django.utils import timezone

from tasks.priority import Priority, PriorityRule, priority_rank
from tasks.workspace import DEFAULT_WORKSPACE_SLUG, WorkspaceRule


class SlugKeyManager(models.Manager):
    """Looks rows up by slug, their natural key, for fixtures; names the fixture that has them."""

    fixture = ""

    def get_by_natural_key(self, slug: str) -> models.Model:
        """Return the row with this slug, or say which fixture to load first."""
        try:
            return self.get(slug=slug)
        except self.model.DoesNotExist as exc:
            raise self.model.DoesNotExist(
                f"No {self.model._meta.verbose_name} with slug {slug!r}; load the {self.fixture} "
                f"fixture first (manage.py loaddata {self.fixture}) or fix the reference."
            ) from exc


class WorkspaceManager(SlugKeyManager):
    """Workspaces by slug; and the default one."""

    fixture = "workspaces"

    def default_id(self) -> int:
        """The id of the default workspace (slug "default"), which migration 0006 creates."""
        found = self.filter(slug=DEFAULT_WORKSPACE_SLUG).values_list("pk", flat=True).first()
        if found is None:
            raise self.model.DoesNotExist(
                f"No workspace with slug {DEFAULT_WORKSPACE_SLUG!r}: load it with "
                "manage.py loaddata workspaces."
            )
        return found


class Workspace(models.Model):
    """Where tasks belong: every category is in one, and its tasks with it."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)

    objects = WorkspaceManager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def natural_key(self) -> tuple[str]:
        return (self.slug,)


class CategoryManager(SlugKeyManager):
    """Categories by slug."""

    fixture = "categories"


class Category(models.Model):
    """A grouping of tasks, referred to by its slug in fixtures, in one workspace."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    workspace = models.ForeignKey(
        Workspace,
        on_delete=models.PROTECT,
        blank=True,
        related_name="categories",
        help_text="Its tasks belong to this workspace. Leave empty for the default one.",
    )

    objects = CategoryManager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        """Save, in the default workspace unless one is given."""
        if self.workspace_id is None:
            using = kwargs.get("using") or router.db_for_write(Category, instance=self)
            self.workspace_id = Workspace.objects.db_manager(using).default_id()
        super().save(*args, **kwargs)

    def natural_key(self) -> tuple[str]:
        return (self.slug,)


def fill_workspaces(tasks: list["Task"], *, using: str) -> bool:
    """Set each task's workspace from its category (the default one without): the dual-write.

    A task without a category keeps a workspace it was given. One query for all the tasks'
    categories, one for the default workspace if a task needs it. Returns whether any task's
    workspace changed.
    """
    category_ids = {task.category_id for task in tasks if task.category_id is not None}
    workspace_of = dict(
        Category.objects.using(using).filter(pk__in=category_ids).values_list("pk", "workspace")
    )
    to_fill = [task for task in tasks if task.category_id is not None or task.workspace_id is None]
    if any(workspace_of.get(task.category_id) is None for task in to_fill):
        rule = WorkspaceRule(Workspace.objects.db_manager(using).default_id())
    else:
        rule = WorkspaceRule(default_workspace=0)  # every task has a category: never used
    changed = False
    for task in to_fill:
        workspace = rule.for_task(category_workspace=workspace_of.get(task.category_id))
        if workspace != task.workspace_id:
            task.workspace_id = workspace
            changed = True
    return changed


# The most days TaskQuerySet.dates probes one by one (a month's); a longer span is read at once.
DAYS_PROBED = 31


def next_period(start: datetime.date, kind: str) -> datetime.date:
    """The first day of the year, month or day after the one that starts on ``start``."""
    if kind == "year":
        return start.replace(year=start.year + 1)
    if kind == "month":
        return (start.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
    return start + datetime.timedelta(days=1)


class TaskQuerySet(models.QuerySet["Task"]):
    def bulk_create(self, objs, *args, **kwargs) -> list["Task"]:
        """bulk_create skips save(): derive the priority and the workspace of each task here."""
        objs = list(objs)
        for task in objs:
            task.fill_priority()
        fill_workspaces(objs, using=self.db)
        return super().bulk_create(objs, *args, **kwargs)

    def dates(self, field_name: str, kind: str, order: str = "ASC"):
        """Years, months or days that have rows, found by probing each candidate with an index
        range.

        Django's version is ``SELECT DISTINCT date_trunc(...)`` over every matching row: a full
        scan on a big table, run on each admin page view by the due-date hierarchy, and at the
        level of days still a read of every row of the month chosen. Between the first and last
        date (two index lookups) there are only a few years, twelve months or a month of days to
        probe, each with an EXISTS on the date index. Days over a span longer than
        DAYS_PROBED keep Django's query (the hierarchy asks for days within one month only).
        """
        if kind not in ("year", "month", "day"):
            return super().dates(field_name, kind, order)
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        first, last = bounds["first"], bounds["last"]
        if first is None:
            return []
        if kind == "day" and (last - first).days >= DAYS_PROBED:
            return super().dates(field_name, kind, order)
        periods = []
        start = {
            "year": first.replace(month=1, day=1),
            "month": first.replace(day=1),
            "day": first,
        }[kind]
        while start <= last:
            end = next_period(start, kind)
            if self.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end}).exists():
                periods.append(start)
            start = end
        return periods if order == "ASC" else periods[::-1]

    def order_by_priority(self) -> "TaskQuerySet":
        """Most pressing first (urgent, high, medium, low), soonest due first."""
        return self.order_by(priority_rank().desc(), F("due_date").asc(nulls_last=True), "-id")


class Task(models.Model):
    """A unit of work, optionally categorised and assigned to a user, in a workspace."""

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
    # (NOT NULL with a database default, 0004). While the rollout ran, the code tolerated NULL
    # on read and always wrote a value (see save()).
    priority = models.CharField(
        max_length=20,
        choices=Priority.choices,
        blank=True,
        # For INSERTs from code that predates the column (they never name it).
        db_default=Priority.MEDIUM,
        help_text="Leave empty to derive it from the status and due date.",
    )
    # The second column on the live table: expand (nullable, foreign key NOT VALID, index built
    # concurrently, 0007), backfill (command and 0008), contract (validate, NOT NULL, 0009). No
    # database default can name a row, so the contract waits until no code that predates the
    # column inserts tasks (docs/zero-downtime.md). Derived from the category on every save.
    workspace = models.ForeignKey(
        Workspace,
        on_delete=models.PROTECT,
        blank=True,
        related_name="tasks",
        help_text="The workspace of the task's category (the default one without a category).",
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
            # Serves the admin's priority filter (and due-date order within it). Added after the
            # contract step, concurrently: migration 0005.
            models.Index(fields=["priority", "due_date"], name="tasks_task_priority_due_idx"),
            # The admin's sortable columns, each with the primary key after it: the task list
            # sorts by one column and then by id in the same direction (tasks/admin.py), which
            # one index reads forwards or backwards; the due-date one also serves the date
            # hierarchy and filter. And its title search: Django's icontains is
            # UPPER(title) LIKE UPPER('%term%'), which a trigram index of UPPER(title) serves.
            # Built concurrently by migration 0010.
            models.Index(fields=["title", "id"], name="tasks_task_title_id_idx"),
            models.Index(fields=["status", "id"], name="tasks_task_status_id_idx"),
            models.Index(priority_rank(), F("id"), name="tasks_task_priority_rank_idx"),
            models.Index(fields=["due_date", "id"], name="tasks_task_due_date_id_idx"),
            GinIndex(
                OpClass(Upper("title"), name="gin_trgm_ops"), name="tasks_task_title_trgm_idx"
            ),
        ]

    def __str__(self) -> str:
        return self.title

    def save(self, *args, **kwargs) -> None:
        """Save, deriving the priority from the rule when none is set, and the workspace from
        the category (the dual-write); with ``update_fields``, the derived fields are added."""
        update_fields = kwargs.get("update_fields")
        derived = set()
        if self.fill_priority():
            derived.add("priority")
        # Django accepts a foreign key's attname in update_fields too.
        category_saved = update_fields is None or {"category", "category_id"} & set(update_fields)
        if category_saved or self.workspace_id is None:
            using = kwargs.get("using") or router.db_for_write(Task, instance=self)
            if fill_workspaces([self], using=using):
                derived.add("workspace")
        if derived and update_fields is not None:
            kwargs["update_fields"] = {*update_fields, *derived}
        super().save(*args, **kwargs)

    def fill_priority(self) -> bool:
        """Derive the priority from the rule if none is set; True if it did (the dual-write)."""
        if self.priority and not isinstance(self.priority, DatabaseDefault):
            return False
        self.priority = PriorityRule(timezone.localdate()).for_task(
            status=self.status, due_date=self.due_date
        )
        return True
