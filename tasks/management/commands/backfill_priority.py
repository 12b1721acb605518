"""manage.py backfill_priority: fill NULL priorities in batches, resumably, gently; and steer
the run from another terminal (--pause, --resume, --cancel, --status)."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, connections

from tasks.backfill import (
    BackfillBusy,
    BackfillFailed,
    BatchPolicy,
    BatchReport,
    LeaseLost,
    column_state,
    find_open_run,
)
from tasks.backfill_control import (
    CONTROLS,
    RunStateError,
    format_seconds,
    process_name,
)
from tasks.backfill_health import DatabaseHealth
from tasks.management.base import ProjectCommand
from tasks.models import BackfillRun, Task
from tasks.priority import Priority
from tasks.priority_backfill import (
    PENDING,
    PRIORITY_BACKFILL,
    backfill_priority,
    dry_run_priority_backfill,
    start_priority_backfill,
)

DEFAULTS = BatchPolicy()
MAX_BATCH_SIZE = 100_000
# More connections than this only queue up behind each other's WAL writes and index pages.
MAX_WORKERS = 16
# Retry is running the command again.
STEERING = ("pause", "resume", "cancel")
STATUS_ROWS = 10


class Command(ProjectCommand):
    help = (
        "Fill Task.priority where it is still NULL, in keyset batches of one UPDATE each, "
        "committed one by one and checkpointed: a killed run resumes where it stopped, with the "
        "same reference date. Run it between the expand (0002) and contract (0004) migrations."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            default=str(DEFAULTS.batch_size),
            help=f"Rows in the first batch, 1 to {MAX_BATCH_SIZE:,}; all batches with "
            f"--target-batch-ms 0 (default: {DEFAULTS.batch_size:,}).",
        )
        parser.add_argument(
            "--sleep",
            default=str(DEFAULTS.sleep),
            help="Seconds to pause between batches, to leave room for other work (default: 0).",
        )
        parser.add_argument(
            "--max-batches",
            default=None,
            help="Stop after this many batches; run again to continue (default: no limit).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print how many rows would get each priority; write nothing.",
        )
        parser.add_argument(
            "--lock-timeout",
            default=str(DEFAULTS.lock_timeout_ms),
            help=f"PostgreSQL lock_timeout per batch in ms (default: {DEFAULTS.lock_timeout_ms}).",
        )
        parser.add_argument(
            "--statement-timeout",
            default=str(DEFAULTS.statement_timeout_ms),
            help="PostgreSQL statement_timeout per batch in ms "
            f"(default: {DEFAULTS.statement_timeout_ms}).",
        )
        parser.add_argument(
            "--max-retries",
            default=str(DEFAULTS.max_retries),
            help="Retries of a batch that hits a lock or statement timeout or a deadlock, "
            f"waiting {DEFAULTS.backoff_seconds:g} s, then twice as long each time "
            f"(default: {DEFAULTS.max_retries}).",
        )
        parser.add_argument(
            "--target-batch-ms",
            default=None,
            help="Grow or shrink batches so that each holds its row locks (UPDATE to commit) "
            "about this long; 0 keeps --batch-size fixed (default: BACKFILL_TARGET_BATCH_MS, "
            f"{settings.BACKFILL_TARGET_BATCH_MS:g}).",
        )
        parser.add_argument(
            "--workers",
            default=None,
            help=f"Connections that fill rows in parallel, 1 to {MAX_WORKERS}, each walking its "
            "own lane of keys (PostgreSQL only). A run keeps the lanes it was planned with "
            f"(default: BACKFILL_WORKERS, {settings.BACKFILL_WORKERS}).",
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Cancel the open run and start a new one with today as its reference date.",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="Do not fill here: enqueue the run for task workers "
            "(manage.py db_worker --queue-name backfill) and return.",
        )
        for action, what in (
            ("pause", "Pause the open run; its process stops before its next batch."),
            ("resume", "Resume the paused run."),
            ("cancel", "Cancel the open run; its process stops before its next batch."),
            ("status", "Print the recent runs: status, progress, rate, ETA, heartbeat."),
        ):
            parser.add_argument(f"--{action}", action="store_true", help=what)
        self.add_progress_argument(parser)
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        policy = self.parse_policy(options)
        workers = self.int_option(
            "workers",
            settings.BACKFILL_WORKERS if options["workers"] is None else options["workers"],
            minimum=1,
            maximum=MAX_WORKERS,
        )
        using = self.database_alias(options["database"])
        verbosity = options["verbosity"]
        self.require_migrated(using)
        steering = [action for action in (*STEERING, "status") if options[action]]
        if len(steering) > 1:
            raise CommandError("Use only one of --pause, --resume, --cancel and --status.")
        others = [flag for flag in ("dry_run", "background", "restart", "workers") if options[flag]]
        if steering and others:
            raise CommandError(
                f"--{steering[0]} acts on the open run: it cannot be combined with "
                f"--{others[0].replace('_', '-')}."
            )
        if steering:
            self.require_run_table(using)
            if steering == ["status"]:
                self.print_status(using)
            else:
                self.steer(steering[0], using)
            return
        state = column_state(Task, "priority", using=using)
        if state == "missing":
            raise CommandError(
                f"tasks_task.priority does not exist in database {using!r} yet. Apply the expand "
                f"step first: manage.py migrate tasks 0002_priority_expand --database {using}"
            )
        if state == "not null":
            if verbosity >= 1:
                self.stdout.write(
                    "priority is already NOT NULL (the contract migration 0004 is applied): "
                    "there is nothing to backfill."
                )
            return

        if options["dry_run"]:
            self.dry_run(using=using, restart=options["restart"])
            return
        try:
            # Checked here for runs on workers too: they read the same settings.
            health = DatabaseHealth.from_settings(Task)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if options["background"]:
            self.enqueue(using=using, restart=options["restart"], workers=workers)
            return

        bar = self.progress_bar(total=0, unit="row", enabled=not options["no_progress"])

        def on_start(run: BackfillRun, resumed: bool, pending: int) -> None:
            bar.reset(total=pending)
            if verbosity >= 1:
                how = "Resuming" if resumed else "Starting"
                self.stdout.write(
                    f"{how} run #{run.pk} (reference date {run.reference_date}): "
                    f"{pending:,} rows with a NULL priority"
                    + (f", {workers} workers in parallel." if workers > 1 else ".")
                )

        def on_batch(report: BatchReport) -> None:
            bar.update(report.rows)
            if verbosity >= 2:
                self.stdout.write(
                    f"  batch of {report.batch_size:,} keys up to {report.last_key}: "
                    f"{report.rows:,} rows in {report.seconds * 1000:.0f} ms "
                    f"(row locks held {report.locked_seconds * 1000:.0f} ms)"
                    + (f" after {report.attempts - 1} retries" if report.attempts > 1 else "")
                )

        try:
            with bar:
                run, result = backfill_priority(
                    using=using,
                    policy=policy,
                    restart=options["restart"],
                    origin=BackfillRun.Origin.COMMAND,
                    started_by=process_name("command"),
                    health=health,
                    on_start=on_start,
                    on_batch=on_batch,
                    workers=workers,
                )
        except BackfillFailed as exc:
            raise CommandError(
                f"Backfill stopped: {exc}. The checkpoint is kept; run the command again to "
                "resume (consider a larger --lock-timeout or running off-peak)."
            ) from exc
        except BackfillBusy as exc:
            raise CommandError(f"Not started: {exc}.") from exc
        except (RunStateError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except LeaseLost as exc:
            raise CommandError(
                f"Stopped: {exc}. That process carries on from the last checkpoint."
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"Backfill stopped by a database error: {exc}. Every committed batch is "
                "checkpointed; once the database is reachable, run the command again to resume."
            ) from exc

        if verbosity < 1:
            return
        if run is None:
            self.stdout.write(
                self.style.SUCCESS("Nothing to backfill: no task has a NULL priority.")
            )
            return
        # A finished run ended on a scan that found no NULL row: counting them again would
        # read the whole table once more (0.09 s at 1,000,000 rows) to print the same 0.
        left = 0 if result.finished else Task.objects.using(using).filter(PENDING).count()
        self.stdout.write(
            f"Updated {result.rows:,} rows in {result.batches:,} batches, "
            f"{result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s); "
            f"NULL rows left: {left:,}."
        )
        if result.finished:
            self.stdout.write(self.style.SUCCESS(f"Run #{run.pk} succeeded."))
        elif result.stopped == "cancelled":
            self.stdout.write(self.style.NOTICE(f"Run #{run.pk} was cancelled."))
        else:
            self.stdout.write(
                self.style.NOTICE(
                    f"Run #{run.pk} is not finished (stopped by --max-batches, or rows kept "
                    "arriving behind it); run the command again to resume."
                )
            )

    def parse_policy(self, options) -> BatchPolicy:
        """Check every numeric option; nothing is read or written before this passes."""
        max_batches = options["max_batches"]
        target = options["target_batch_ms"]
        target = self.float_option(
            "target_batch_ms",
            settings.BACKFILL_TARGET_BATCH_MS if target is None else target,
            minimum=0,
        )
        return BatchPolicy(
            target_batch_ms=target or None,
            batch_size=self.int_option(
                "batch_size", options["batch_size"], minimum=1, maximum=MAX_BATCH_SIZE
            ),
            sleep=self.float_option("sleep", options["sleep"], minimum=0),
            max_batches=(
                None
                if max_batches is None
                else self.int_option("max_batches", max_batches, minimum=1)
            ),
            lock_timeout_ms=self.int_option(
                "lock_timeout", options["lock_timeout"], minimum=1, maximum=3_600_000
            ),
            statement_timeout_ms=self.int_option(
                "statement_timeout", options["statement_timeout"], minimum=1, maximum=86_400_000
            ),
            max_retries=self.int_option(
                "max_retries", options["max_retries"], minimum=0, maximum=100
            ),
        )

    def dry_run(self, *, using: str, restart: bool) -> None:
        """Print how many NULL rows would get each priority."""
        today, counts = dry_run_priority_backfill(
            task_model=Task, run_model=BackfillRun, using=using, restart=restart
        )
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"Dry run (reference date {today}): rows that would get each priority"
            )
        )
        for value, label in reversed(Priority.choices):
            self.stdout.write(f"  {label:<8} {counts.get(value, 0):>10,}")
        self.stdout.write(f"  {'Total':<8} {sum(counts.values()):>10,}")
        self.stdout.write("Nothing was written.")

    def require_run_table(self, using: str) -> None:
        """Fail with the migration to apply if there is no run table yet (before expand)."""
        connection = connections[using]
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
        if BackfillRun._meta.db_table not in tables:
            raise CommandError(
                f"There are no backfill runs in database {using!r} yet: the run table comes with "
                "the expand step (manage.py migrate tasks 0002_priority_expand "
                f"--database {using})."
            )

    def steer(self, action: str, using: str) -> None:
        """Pause, resume or cancel the open run."""
        run = find_open_run(BackfillRun, name=PRIORITY_BACKFILL, using=using)
        if run is None:
            raise CommandError(f"There is no open priority backfill run to {action}.")
        try:
            run = CONTROLS[action](
                run, using=using, actor=process_name("command"), origin=BackfillRun.Origin.COMMAND
            )
        except RunStateError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Run #{run.pk} is now {run.get_status_display().lower()}.")
        )

    def enqueue(self, *, using: str, restart: bool, workers: int) -> None:
        """Start or carry on the run on task workers."""
        try:
            run, resumed = start_priority_backfill(
                using=using,
                origin=BackfillRun.Origin.COMMAND,
                started_by=process_name("command"),
                restart=restart,
                workers=workers,
            )
        except (RunStateError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"Could not enqueue the run ({exc}); nothing was written. The task tables come "
                f"with the django_tasks_db app: manage.py migrate --database {using}"
            ) from exc
        how = "Carrying on" if resumed else "Started"
        self.stdout.write(
            self.style.SUCCESS(
                f"{how} run #{run.pk} on task workers (about {run.rows_estimated or 0:,} rows). "
                "Workers: manage.py db_worker --queue-name backfill. Watch: "
                "manage.py backfill_priority --status, or the admin's Backfill runs page."
            )
        )

    def print_status(self, using: str) -> None:
        """The recent runs, newest first."""
        runs = BackfillRun.objects.using(using).filter(name=PRIORITY_BACKFILL)[:STATUS_ROWS]
        if not runs:
            self.stdout.write("No priority backfill has run on this database yet.")
            return
        header = (
            f"{'run':>5}  {'status':<19} {'done':>6} {'rows done':>12} {'estimated':>12} "
            f"{'rows/s':>8} {'ETA':>8} {'batch':>7} {'workers':>7} {'heartbeat':>10}  "
            "origin / by"
        )
        self.stdout.write(self.style.MIGRATE_HEADING(header))
        for run in runs:
            progress = "" if run.progress is None else f"{run.progress:.0%}"
            self.stdout.write(
                f"{'#' + str(run.pk):>5}  {run.status_label:<19} {progress:>6} "
                f"{run.rows_done:>12,} {run.rows_estimated or 0:>12,} "
                f"{run.rows_per_second or 0:>8,.0f} {format_seconds(run.eta_seconds):>8} "
                f"{run.batch_size or 0:>7,} {run.workers:>7} "
                f"{format_seconds(run.heartbeat_age):>10}  "
                f"{run.origin} / {run.started_by or '-'}"
            )
            if run.throttle_reason and run.status == BackfillRun.Status.RUNNING:
                self.stdout.write(f"{'':7}backing off: {run.throttle_reason}")
            if run.last_error and run.status == BackfillRun.Status.FAILED:
                self.stdout.write(self.style.ERROR(f"{'':7}{run.last_error}"))
