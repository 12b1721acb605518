"""The Django admin, the project's user interface; staff only, permissions from the role groups."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from tasks.models import BackfillRun, Category, Task
from tasks.pagination import EstimatedCountPaginator
from tasks.priority import Priority, priority_rank


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


class PriorityFilter(admin.SimpleListFilter):
    """Filter by priority, most pressing first, with the rows not backfilled yet."""

    title = "priority"
    parameter_name = "priority"
    NOT_SET = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [*reversed(Priority.choices), (self.NOT_SET, "Not set yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == self.NOT_SET:
            return queryset.filter(priority__isnull=True)
        if value in Priority.values:
            return queryset.filter(priority=value)
        return queryset


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["title", "status", "priority_level", "due_date", "category", "assignee"]
    list_filter = ["status", PriorityFilter, "category", "due_date"]
    search_fields = ["title"]
    date_hierarchy = "due_date"
    autocomplete_fields = ["category", "assignee"]
    list_select_related = ["category", "assignee"]
    readonly_fields = ["created_at", "updated_at"]
    # No COUNT(*) of the whole table per page view: an estimate draws the page links and the
    # "n of N selected" total is not shown.
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    @admin.display(description="priority", ordering=priority_rank())
    def priority_level(self, task: Task) -> str:
        """The priority's label; rows the backfill has not reached yet say so."""
        return task.get_priority_display() if task.priority else "not set yet"


@admin.register(BackfillRun)
class BackfillRunAdmin(admin.ModelAdmin):
    """Run records are written by the backfill itself; the admin shows them."""

    list_display = ["name", "status", "reference_date", "rows_done", "batches", "started_at"]
    list_filter = ["status", "name"]
    readonly_fields = [field.name for field in BackfillRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
