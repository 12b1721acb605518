"""The Django admin, the project's user interface; staff only, permissions from the role groups."""

from django.contrib import admin

from tasks.models import Category, Task
from tasks.pagination import EstimatedCountPaginator


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["title", "status", "due_date", "category", "assignee"]
    list_filter = ["status", "category", "due_date"]
    search_fields = ["title"]
    date_hierarchy = "due_date"
    autocomplete_fields = ["category", "assignee"]
    list_select_related = ["category", "assignee"]
    readonly_fields = ["created_at", "updated_at"]
    # No COUNT(*) of the whole table per page view: an estimate draws the page links and the
    # "n of N selected" total is not shown.
    paginator = EstimatedCountPaginator
    show_full_result_count = False
