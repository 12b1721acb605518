"""The tasks app's data: categories and tasks (roles are auth groups, see fixtures/roles.json)."""

from django.conf import settings
from django.db import models


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # Newest first; the index below serves it (a backward scan), so the admin's first page
        # reads a few index entries instead of sorting the whole table.
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="tasks_task_created_id_idx"),
            models.Index(fields=["due_date"], name="tasks_task_due_date_idx"),
        ]

    def __str__(self) -> str:
        return self.title
