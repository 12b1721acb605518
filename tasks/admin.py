"""The Django admin, the project's user interface; staff only, permissions from the role groups.
(Backfill runs have their own admin, in the backfills app.)"""

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest

from tasks import users_admin  # noqa: F401 (the User and Group admins, in place of the stock ones)
from tasks.models import Category, Task, Workspace
from tasks.pagination import EstimatedCountPaginator
from tasks.priority import Priority, priority_rank


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "workspace"]
    list_filter = ["workspace"]
    list_select_related = ["workspace"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


class PriorityFilter(admin.SimpleListFilter):
    """Filter by priority, most pressing first (not alphabetically)."""

    title = "priority"
    parameter_name = "priority"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return list(reversed(Priority.choices))

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in Priority.values:
            return queryset.filter(priority=value)
        return queryset


class WorkspaceFilter(admin.SimpleListFilter):
    """Filter by workspace, with the rows the workspace backfill has not reached yet."""

    title = "workspace"
    parameter_name = "workspace"
    NOT_SET = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        workspaces = Workspace.objects.values_list("pk", "name")
        return [*((str(pk), name) for pk, name in workspaces), (self.NOT_SET, "Not set yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == self.NOT_SET:
            return queryset.filter(workspace__isnull=True)
        if value and value.isdigit():
            return queryset.filter(workspace_id=int(value))
        return queryset


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "status",
        "priority_level",
        "due_date",
        "category",
        "workspace_name",
        "assignee",
    ]
    list_filter = ["status", PriorityFilter, WorkspaceFilter, "category", "due_date"]
    search_fields = ["title"]
    date_hierarchy = "due_date"
    autocomplete_fields = ["category", "assignee"]
    # Not the workspace: its foreign key is NOT NULL in the model, so Django would join it with
    # an INNER JOIN and hide the rows its backfill has not reached yet (get_queryset).
    list_select_related = ["category", "assignee"]
    # The workspace is the category's: derived on save, never chosen by hand.
    readonly_fields = ["workspace", "created_at", "updated_at"]
    # No COUNT(*) of the whole table per page view: an estimate draws the page links and the
    # "n of N selected" total is not shown.
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    @admin.display(description="priority", ordering=priority_rank())
    def priority_level(self, task: Task) -> str:
        """The priority's label (sorted by rank, not alphabetically)."""
        return task.get_priority_display()

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Each task with its workspace's name, read by a subquery (see list_select_related)."""
        names = Workspace.objects.filter(pk=OuterRef("workspace_id")).values("name")[:1]
        return super().get_queryset(request).annotate(workspace_label=Subquery(names))

    @admin.display(description="workspace", ordering="workspace_label")
    def workspace_name(self, task: Task) -> str:
        """The workspace's name; rows the backfill has not reached yet say so."""
        return task.workspace_label or "not set yet"
