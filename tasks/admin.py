"""The Django admin, the project's user interface; staff only, permissions from the role groups.
(Backfill runs have their own admin, in the backfills app.)"""

from django.contrib import admin
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.db.models import OrderBy, OuterRef, QuerySet, Subquery
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


class IndexedSortChangeList(ChangeList):
    """A changelist sorted by one column at a time, of those in ``sortable_by``, then by primary
    key in the same direction: ``ORDER BY col, id`` or ``ORDER BY col DESC, id DESC``, which one
    index on ``(col, id)`` serves both ways; and no date hierarchy on a searched list.

    Django's own keeps every column clicked in turn (``?o=2.1``: by status, then title), which no
    index serves, accepts any column in the URL, and adds the key descending whatever the
    direction (``title ASC, id DESC``). On a big table each of those sorts every row.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.query:
            # No date hierarchy over a search's matches (the due-date filter stays): its first
            # and last date are MIN/MAX over them, which PostgreSQL reads by walking the date
            # index from each end, filtering, when it expects the matches to be spread over
            # the dates; where titles and dates go together it walks most of the table
            # (docs/benchmarks.md). The queryset above keeps any date already drilled into.
            self.date_hierarchy = None

    def get_ordering(self, request: HttpRequest, queryset: QuerySet) -> list:
        self.keep_first_sortable_order()
        ordering = super().get_ordering(request, queryset)
        if len(ordering) > 1 and ordering[-1] == "-pk" and is_ascending(ordering[0]):
            ordering[-1] = "pk"
        return ordering

    def keep_first_sortable_order(self) -> None:
        """Keep the first column of ``?o=`` if it may be sorted by, else none (the default
        order): the links and sort marks of the page follow from ``params``."""
        first = self.params.get(ORDER_VAR, "").split(".")[0]
        index = first.removeprefix("-")
        if index.isdigit() and int(index) < len(self.list_display):
            if self.sortable_by is None or self.list_display[int(index)] in self.sortable_by:
                self.params[ORDER_VAR] = first
                return
        self.params.pop(ORDER_VAR, None)


def is_ascending(order) -> bool:
    """Whether one term of an ordering (a field name or an ``OrderBy``) sorts ascending."""
    if isinstance(order, OrderBy):
        return not order.descending
    return not str(order).startswith("-")


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
    # Sorted only by columns an index serves in that order (tasks_task_*_id_idx, migration
    # 0010): the category, workspace and assignee would sort every row by a joined name or a
    # subquery; their filters narrow the list instead.
    sortable_by = ["title", "status", "priority_level", "due_date"]
    # No COUNT(*) of a big result per page view: counted up to a bound, estimated beyond, and
    # the "n of N selected" total is not shown. No facet counts either ("Show counts" would
    # count every filter's values over the whole result).
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="priority", ordering=priority_rank())
    def priority_level(self, task: Task) -> str:
        """The priority's label (sorted by rank, not alphabetically)."""
        return task.get_priority_display()

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return IndexedSortChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Each task with its workspace's name, read by a subquery (see list_select_related)."""
        names = Workspace.objects.filter(pk=OuterRef("workspace_id")).order_by().values("name")[:1]
        return super().get_queryset(request).annotate(workspace_label=Subquery(names))

    @admin.display(description="workspace", ordering="workspace_label")
    def workspace_name(self, task: Task) -> str:
        """The workspace's name; rows the backfill has not reached yet say so."""
        return task.workspace_label or "not set yet"
