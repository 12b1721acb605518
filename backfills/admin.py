"""Backfill runs in the Django admin: every registered backfill's runs, live progress, Start,
and pause/resume/cancel/retry, for users with the control permission."""

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import DatabaseError, router
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html

from backfills.controls import CONTROL_STATUSES, RunStateError
from backfills.display import describe_parameters, format_seconds
from backfills.models import OPEN_STATUSES, BackfillLane, BackfillRun, BackfillRunEvent
from backfills.orchestration import NotEnqueued, start_on_workers, steer
from backfills.registry import BackfillNotReady, UnknownBackfill, definitions, get_definition
from backfills.workers import QUEUE

# What starts a task worker for backfill runs (docs/zero-downtime.md, "Workers in production").
WORKER_COMMAND = f"manage.py db_worker --queue-name {QUEUE}"


class RunPartInline(admin.TabularInline):
    """Rows that belong to a run and are written only by the backfill: shown, never edited."""

    extra = 0
    can_delete = False
    max_num = 0

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        # A run's history and lanes are part of the run: whoever may see the run sees them.
        return request.user.has_perm("backfills.view_backfillrun")


class BackfillLaneInline(RunPartInline):
    """The key ranges of a parallel run, each with its own checkpoint."""

    model = BackfillLane
    fields = ["number", "after_key", "upto_key", "last_key", "rows_done", "batches", "finished"]
    readonly_fields = fields
    ordering = ["number"]


class BackfillRunEventInline(RunPartInline):
    """The run's history, newest first."""

    model = BackfillRunEvent
    fields = ["at", "kind", "actor", "origin", "message"]
    readonly_fields = fields
    ordering = ["-at", "-id"]


def _control_action(name: str, description: str):
    """An admin action applying control ``name`` to each selected run, reporting each outcome."""

    @admin.action(description=description, permissions=["control"])
    def action(modeladmin: "BackfillRunAdmin", request: HttpRequest, queryset: QuerySet) -> None:
        for run in queryset:
            modeladmin.apply(request, run, name)

    action.__name__ = f"{name}_runs"
    return action


@admin.register(BackfillRun)
class BackfillRunAdmin(admin.ModelAdmin):
    """Backfill runs: history, live progress, Start, and pause/resume/cancel/retry.

    Runs are written by the backfill itself; the admin shows them and steers them through
    :mod:`backfills.orchestration` (the same functions as ``manage.py backfill NAME --pause``
    etc.). The pages reload themselves every few seconds while a run is open: no JavaScript.
    """

    # Six columns, each a few lines high, so that the list fits a 1,400 px window beside the
    # navigation and the filters (tests/test_browser.py); the run page has each value alone.
    list_display = [
        "run_column",
        "status_column",
        "progress_rows_column",
        "speed_column",
        "heartbeat_column",
        "started_column",
    ]
    list_display_links = ["run_column"]
    list_filter = ["name", "status", "origin"]
    inlines = [BackfillLaneInline, BackfillRunEventInline]
    change_list_template = "admin/backfills/backfillrun/change_list.html"
    change_form_template = "admin/backfills/backfillrun/change_form.html"
    fieldsets = [
        (
            "Progress",
            {
                "fields": [
                    "status_column",
                    "progress_column",
                    "rows_column",
                    "rate_column",
                    "eta_column",
                    "batch_size",
                    "throttle_reason",
                    "throttled_at",
                ]
            },
        ),
        (
            "Run",
            {
                "fields": [
                    "name",
                    "parameters_column",
                    "started_at",
                    "finished_at",
                    "last_key",
                    "batches",
                    "origin",
                    "started_by",
                    "background",
                ]
            },
        ),
        (
            "Worker",
            {
                "fields": [
                    "workers",
                    "lease_owner",
                    "lease_expires_at",
                    "heartbeat_column",
                    "generation",
                ]
            },
        ),
        ("Last error", {"fields": ["last_error", "last_error_at"]}),
    ]
    readonly_fields = [
        *(field.name for field in BackfillRun._meta.fields),
        "status_column",
        "progress_column",
        "rows_column",
        "rate_column",
        "eta_column",
        "heartbeat_column",
        "parameters_column",
    ]
    actions = [
        _control_action("pause", "Pause selected runs"),
        _control_action("resume", "Resume selected runs"),
        _control_action("cancel", "Cancel selected runs"),
        _control_action("retry", "Retry selected failed runs"),
    ]
    REFRESH_SECONDS = 3

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("backfills.control_backfillrun")

    @admin.display(description="run", ordering="-started_at")
    def run_column(self, run: BackfillRun) -> str:
        return f"{run.name} #{run.pk}"

    @admin.display(description="status", ordering="status")
    def status_column(self, run: BackfillRun) -> str:
        return run.status_label

    @admin.display(description="progress")
    def progress_column(self, run: BackfillRun) -> str:
        if run.progress is None:
            return "-"
        percent = run.progress * 100
        return format_html(
            '<progress class="backfill-progress" max="100" value="{}"></progress> {}%',
            f"{percent:.1f}",
            f"{percent:.0f}",
        )

    @admin.display(description="rows done / estimated")
    def rows_column(self, run: BackfillRun) -> str:
        estimated = "?" if run.rows_estimated is None else f"{run.rows_estimated:,}"
        return f"{run.rows_done:,} / {estimated}"

    @admin.display(description="rows/s")
    def rate_column(self, run: BackfillRun) -> str:
        return "-" if not run.rate else f"{run.rate:,.0f}"

    @admin.display(description="ETA")
    def eta_column(self, run: BackfillRun) -> str:
        return format_seconds(run.eta_seconds)

    @admin.display(description="progress")
    def progress_rows_column(self, run: BackfillRun) -> str:
        return format_html("{}<br>{} rows", self.progress_column(run), self.rows_column(run))

    @admin.display(description="speed")
    def speed_column(self, run: BackfillRun) -> str:
        rate = "-" if not run.rows_per_second else f"{run.rows_per_second:,.0f} rows/s"
        batch = "-" if run.batch_size is None else f"{run.batch_size:,}"
        return format_html("{}<br>ETA {}<br>batches of {}", rate, self.eta_column(run), batch)

    @admin.display(description="started", ordering="started_at")
    def started_column(self, run: BackfillRun) -> str:
        when = date_format(timezone.localtime(run.started_at), "SHORT_DATETIME_FORMAT")
        who = run.started_by or "-"
        return format_html(
            '{}<br><span class="backfill-started-by">{}</span> ({})',
            when,
            who,
            run.get_origin_display().lower(),
        )

    @admin.display(description="heartbeat")
    def heartbeat_column(self, run: BackfillRun) -> str:
        age = run.heartbeat_age
        return "-" if age is None else f"{format_seconds(age)} ago"

    @admin.display(description="parameters")
    def parameters_column(self, run: BackfillRun) -> str:
        return describe_parameters(run.parameters)

    def get_urls(self):
        urls = super().get_urls()
        view = self.admin_site.admin_view
        return [
            path("start/", view(self.start_view), name="backfills_backfillrun_start"),
            path(
                "<path:object_id>/control/<str:action>/",
                view(self.control_view),
                name="backfills_backfillrun_control",
            ),
            *urls,
        ]

    def apply(self, request: HttpRequest, run: BackfillRun, action: str) -> None:
        """Apply one control to ``run`` and say what came of it."""
        try:
            run = steer(
                run, action, using=self._db(), actor=request.user.get_username(), origin="admin"
            )
        except RunStateError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        except NotEnqueued as exc:
            self.message_user(
                request,
                f"Run #{run.pk}: {action} done, but no worker task could be enqueued ({exc}).",
                messages.ERROR,
            )
            return
        except DatabaseError as exc:
            self.message_user(request, f"Run #{run.pk} was not changed: {exc}.", messages.ERROR)
            return
        self.message_user(request, f"Run #{run.pk} is now {run.status_label}.", messages.SUCCESS)

    def control_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """POST from the run page's buttons: pause, resume, cancel or retry this run."""
        if request.method != "POST" or action not in CONTROL_STATUSES:
            return HttpResponseNotAllowed(["POST"])
        if not self.has_control_permission(request):
            raise PermissionDenied
        run = self.get_object(request, object_id)
        if run is None:
            raise Http404
        self.apply(request, run, action)
        return redirect("admin:backfills_backfillrun_change", run.pk)

    def start_view(self, request: HttpRequest) -> HttpResponse:
        """POST from the run list: start the chosen registered backfill on task workers."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_control_permission(request):
            raise PermissionDenied
        try:
            definition = get_definition(request.POST.get("name", ""))
            run, resumed = start_on_workers(
                definition,
                using=self._db(),
                origin="admin",
                started_by=request.user.get_username(),
                workers=settings.BACKFILL_WORKERS,
            )
        except (
            UnknownBackfill,
            RunStateError,
            BackfillNotReady,
            ValueError,
            ImproperlyConfigured,
        ) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:backfills_backfillrun_changelist")
        except DatabaseError as exc:
            self.message_user(
                request, f"Could not start the run ({exc}); nothing was written.", messages.ERROR
            )
            return redirect("admin:backfills_backfillrun_changelist")
        how = "carries on" if resumed else "started"
        self.message_user(
            request,
            f"Run #{run.pk} of {definition.name} {how} on task workers ({WORKER_COMMAND}).",
            messages.SUCCESS,
        )
        return redirect("admin:backfills_backfillrun_change", run.pk)

    def get_inline_instances(self, request: HttpRequest, obj=None) -> list:
        """The lanes only for a parallel run: a run on one connection has none."""
        inlines = super().get_inline_instances(request, obj)
        if obj is None or not obj.lanes.exists():
            inlines = [inline for inline in inlines if not isinstance(inline, BackfillLaneInline)]
        return inlines

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        runs = BackfillRun.objects.using(self._db())
        extra_context = {
            **(extra_context or {}),
            "can_control": self.has_control_permission(request),
            "backfills": definitions(),
            "refresh_seconds": (
                self.REFRESH_SECONDS if runs.filter(status__in=OPEN_STATUSES).exists() else None
            ),
        }
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None
    ) -> HttpResponse:
        run = self.get_object(request, object_id)
        controls = []
        if run is not None and self.has_control_permission(request):
            controls = [
                (action, action.capitalize())
                for action, allowed in CONTROL_STATUSES.items()
                if run.status in allowed
            ]
        extra_context = {
            **(extra_context or {}),
            "controls": controls,
            "waiting_for_worker": self.waiting_for_worker(run),
            "refresh_seconds": self.REFRESH_SECONDS if run is not None and run.is_open else None,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def waiting_for_worker(self, run: BackfillRun | None) -> str:
        """What the page says of a run enqueued for task workers that none has picked up yet
        (a worker that does makes it running), and what to do; empty for any other run."""
        if run is None or run.status != BackfillRun.Status.PENDING or not run.background:
            return ""
        waiting = format_seconds((timezone.now() - run.updated_at).total_seconds())
        return (
            f"No worker has picked this run up yet (pending for {waiting}). Runs started in "
            f"the background are carried out by task workers: if none is running, start one "
            f"with {WORKER_COMMAND} (docs/zero-downtime.md, Workers in production); it picks "
            "this run up within seconds."
        )

    def _db(self) -> str:
        return router.db_for_write(BackfillRun)
