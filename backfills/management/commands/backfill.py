"""manage.py backfill NAME: fill a registered backfill's column in batches, resumably, gently;
steer its run from another terminal (--pause, --resume, --cancel, --status); --list them all."""

import shlex
from contextlib import ExitStack

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, connections

from backfills.controls import RunStateError
from backfills.display import describe_parameters, format_seconds
from backfills.engine import (
    BackfillBusy,
    BackfillFailed,
    BatchPolicy,
    BatchReport,
    LeaseLost,
    RunCancelled,
)
from backfills.health import DatabaseHealth
from backfills.lanes import MAX_WORKERS
from backfills.ledger import find_open_run, process_name
from backfills.models import BackfillRun
from backfills.orchestration import (
    NotEnqueued,
    Opened,
    column_is_filled,
    column_of,
    dry_run,
    fill,
    interrupt,
    missing_column_message,
    nothing_pending_message,
    pending_rows,
    start_on_workers,
    steer,
    stopped_at,
)
from backfills.registry import (
    BackfillDefinition,
    BackfillNotReady,
    UnknownBackfill,
    definitions,
    get_definition,
)
from backfills.workers import QUEUE
from commandline.base import CheckedCommand

DEFAULTS = BatchPolicy()
MAX_BATCH_SIZE = 100_000
# Retry is running the command again.
STEERING = ("pause", "resume", "cancel")
STATUS_ROWS = 10
# The options a resumed run is given again by the command line that Ctrl-C prints.
RESUMED_OPTIONS = (
    "batch_size",
    "target_batch_ms",
    "sleep",
    "lock_timeout",
    "statement_timeout",
    "max_retries",
    "workers",
    "database",
)


class Command(CheckedCommand):
    help = (
        "Fill a registered backfill's column on the rows that still need it (manage.py backfill "
        "--list shows them), in keyset batches of one UPDATE each, committed one by one and "
        "checkpointed: a killed run resumes where it stopped, with the same parameters. Run it "
        "between the column's expand and contract migrations."
    )
    # A command for one backfill (manage.py backfill_priority) names it here.
    backfill_name: str | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        if self.backfill_name is None:
            parser.add_argument(
                "name",
                nargs="?",
                help="The registered name of the backfill, e.g. tasks.task.priority.",
            )
            parser.add_argument(
                "--list",
                action="store_true",
                help="List every registered backfill: its table, pending rows and open run.",
            )
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
            help="Print how many rows would get each value; write nothing.",
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
            "--max-throttle",
            default=None,
            help="Stop, keeping the checkpoint, after backing off this many seconds without a "
            "batch (a replica that does not catch up); 0 waits as long as it takes (default: "
            f"BACKFILL_MAX_THROTTLE_SECONDS, {settings.BACKFILL_MAX_THROTTLE_SECONDS:g}).",
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
            help="Cancel the open run and start a new one, with parameters fixed anew.",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="Do not fill here: enqueue the run for task workers "
            f"(manage.py db_worker --queue-name {QUEUE}) and return.",
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
        if options["workers"] is None and not 1 <= settings.BACKFILL_WORKERS <= MAX_WORKERS:
            raise CommandError(
                f"BACKFILL_WORKERS must be from 1 to {MAX_WORKERS}, got "
                f"{settings.BACKFILL_WORKERS}: fix the setting, or pass --workers."
            )
        workers = self.int_option(
            "workers",
            settings.BACKFILL_WORKERS if options["workers"] is None else options["workers"],
            minimum=1,
            maximum=MAX_WORKERS,
        )
        using = self.database_alias(options["database"])
        steering = [action for action in (*STEERING, "status") if options[action]]
        if len(steering) > 1:
            raise CommandError("Use only one of --pause, --resume, --cancel and --status.")
        others = [flag for flag in ("dry_run", "background", "restart", "workers") if options[flag]]
        if steering and others:
            raise CommandError(
                f"--{steering[0]} acts on the open run: it cannot be combined with "
                f"--{others[0].replace('_', '-')}."
            )
        name = self.backfill_name or options.get("name")
        listing = options.get("list") or (name is None and steering == ["status"])
        if name is None and not listing:
            raise CommandError(
                "Name the backfill: manage.py backfill NAME (manage.py backfill --list shows "
                "the registered ones)."
            )
        try:
            definition = None if name is None else get_definition(name)
        except UnknownBackfill as exc:
            raise CommandError(str(exc)) from exc
        self.require_tables(
            using, BackfillRun, hint=f"Run: manage.py migrate backfills --database {using}"
        )
        if options.get("list"):
            self.print_list(using)
        elif steering == ["status"]:
            self.print_status(definition, using)
        elif steering:
            self.steer(definition, steering[0], using)
        else:
            self.run(definition, options, policy=policy, workers=workers, using=using)

    def run(
        self,
        definition: BackfillDefinition,
        options,
        *,
        policy: BatchPolicy,
        workers: int,
        using: str,
    ) -> None:
        """Fill the column here, or enqueue the run for workers, or print a dry run."""
        verbosity = options["verbosity"]
        self.require_tables(using, definition.model_class())
        state = column_of(definition, using=using)
        if state == "missing":
            raise CommandError(missing_column_message(definition, using=using))
        if column_is_filled(definition, state):
            if verbosity >= 1:
                self.stdout.write(
                    f"{definition.field} is already NOT NULL (its contract migration is "
                    "applied): there is nothing to backfill."
                )
            return
        try:
            if options["dry_run"]:
                self.dry_run(definition, using=using, restart=options["restart"])
                return
            if options["background"]:
                self.enqueue(definition, using=using, restart=options["restart"], workers=workers)
                return
            health = DatabaseHealth.from_settings(definition.model_class())
            for standby in health.check_standbys(using=using):
                self.stderr.write(
                    self.style.WARNING(
                        f"Replication lag of standby {standby.name!r} is not measured (role "
                        f"{standby.role!r} lacks pg_read_all_stats; BACKFILL_ALLOW_UNMEASURED_LAG "
                        "is on): this run will not wait for it."
                    )
                )
        except (ImproperlyConfigured, BackfillNotReady) as exc:
            raise CommandError(str(exc)) from exc

        # The bar is opened once the run is (after its start line, with its total), and closed
        # with the fill, however it ends.
        bars = ExitStack()
        bar = None
        started: BackfillRun | None = None

        def on_start(opened: Opened) -> None:
            nonlocal bar, started
            started = opened.run
            if verbosity >= 1:
                how = "Resuming" if opened.resumed else "Starting"
                about = "" if opened.exact else "about "
                self.stdout.write(
                    f"{how} run #{opened.run.pk} ({describe_parameters(opened.run.parameters)}): "
                    f"{about}{opened.pending:,} rows with {definition.pending_label}"
                    + (f", {workers} workers in parallel." if workers > 1 else ".")
                )
            bar = bars.enter_context(
                self.progress_bar(
                    total=opened.pending, unit="row", enabled=not options["no_progress"]
                )
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
            with bars:
                run, result = fill(
                    definition,
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
        except KeyboardInterrupt:
            raise self.interrupted(started, definition, options, using=using) from None
        except BackfillFailed as exc:
            raise CommandError(
                f"Backfill stopped: {exc}. The checkpoint is kept; run the command again to "
                "resume (consider a larger --lock-timeout or running off-peak)."
            ) from exc
        except BackfillBusy as exc:
            raise CommandError(f"Not started: {exc}.") from exc
        except (RunStateError, BackfillNotReady, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except LeaseLost as exc:
            carries_on = "" if isinstance(exc, RunCancelled) else " That process carries on."
            raise CommandError(f"Stopped: {exc}.{carries_on}") from exc
        except DatabaseError as exc:
            if during_ctrl_c(exc):
                # Ctrl-C landed while a query was on the wire, and what ran as the command
                # unwound (giving the lease up) met that connection mid-query. Still a Ctrl-C:
                # record it on a fresh connection.
                connections[using].close()
                raise self.interrupted(started, definition, options, using=using) from None
            raise CommandError(
                f"Backfill stopped by a database error: {exc}. Every committed batch is "
                "checkpointed; once the database is reachable, run the command again to resume."
            ) from exc

        if result.stopped == "throttled":
            raise CommandError(
                f"Run #{run.pk} stopped after backing off for {policy.max_throttle_seconds:g} s "
                f"without a batch: {run.throttle_reason}. Its checkpoint is kept "
                f"({run.rows_done:,} rows done). Run the command again to resume once that has "
                "cleared; a delayed standby can be left out with BACKFILL_IGNORE_STANDBYS, and "
                "--max-throttle waits longer."
            )
        if verbosity < 1:
            return
        if run is None:
            self.stdout.write(self.style.SUCCESS(nothing_pending_message(definition)))
            return
        # A finished run ended on a scan that found no pending row: counting them again would
        # read the whole table once more (0.09 s at 1,000,000 rows) to print the same 0.
        left = 0 if result.finished else pending_rows(definition, using=using).count()
        seconds, rate = result.seconds, result.rows_per_second
        run.refresh_from_db(fields=["rows_done", "started_at", "finished_at", "status"])
        if result.finished and run.rows_done == result.rows and run.rate:
            # This command carried the whole run: the figures --status and the admin show.
            seconds, rate = (run.finished_at - run.started_at).total_seconds(), run.rate
        self.stdout.write(
            f"Updated {result.rows:,} rows in {result.batches:,} batches, "
            f"{seconds:.1f} s ({rate:,.0f} rows/s); "
            f"{'NULL' if definition.pending_is_null else 'pending'} rows left: {left:,}."
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

    def interrupted(
        self,
        run: BackfillRun | None,
        definition: BackfillDefinition,
        options,
        *,
        using: str,
    ) -> "Interrupted":
        """Ctrl-C: mark the run interrupted at once; say where it stopped and how to resume."""
        again = self.resume_command(definition, options)
        if run is None:
            return Interrupted(f"stopped before the run started; nothing was filled. Run: {again}")
        try:
            run = interrupt(
                run, using=using, actor=process_name("command"), origin=BackfillRun.Origin.COMMAND
            )
            left = pending_rows(definition, using=using).count()
        except DatabaseError as exc:
            return Interrupted(
                f"run #{run.pk} stopped, every committed batch checkpointed, but its status "
                f"could not be recorded ({exc}).\nResume: {again}"
            )
        plain = self.resume_command(definition, {"database": options["database"]})
        if run.status == BackfillRun.Status.INTERRUPTED:
            then = f"Resume: {again}"
        elif run.status == BackfillRun.Status.PAUSED:
            then = f"It stays paused. Resume: {plain} --resume, then {again}"
        else:
            then = f"It is {run.status_label}: {plain} --status"
        return Interrupted(
            f"run #{run.pk} stopped {stopped_at(run, using=using)}, with {run.rows_done:,} "
            f"rows done and {left:,} left.\n{then}"
        )

    def resume_command(self, definition: BackfillDefinition, options) -> str:
        """This command line again, with the options of ``options`` that a resumed run uses
        (its batches, timeouts and workers; not --restart, --max-batches or --dry-run)."""
        command = type(self).__module__.rpartition(".")[2]
        parser = self.create_parser("manage.py", command)
        words = ["manage.py", command] + ([] if self.backfill_name else [definition.name])
        for option in RESUMED_OPTIONS:
            value = options.get(option)
            if value is not None and str(value) != str(parser.get_default(option)):
                words += [f"--{option.replace('_', '-')}", str(value)]
        return shlex.join(words)

    def parse_policy(self, options) -> BatchPolicy:
        """Check every numeric option; nothing is read or written before this passes."""
        max_batches = options["max_batches"]
        target = options["target_batch_ms"]
        max_throttle = options["max_throttle"]
        max_throttle = self.float_option(
            "max_throttle",
            settings.BACKFILL_MAX_THROTTLE_SECONDS if max_throttle is None else max_throttle,
            minimum=0,
        )
        target = self.float_option(
            "target_batch_ms",
            settings.BACKFILL_TARGET_BATCH_MS if target is None else target,
            minimum=0,
        )
        return BatchPolicy(
            target_batch_ms=target or None,
            max_throttle_seconds=max_throttle or None,
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

    def dry_run(self, definition: BackfillDefinition, *, using: str, restart: bool) -> None:
        """Print how many pending rows would get each value."""
        parameters, counts = dry_run(definition, using=using, restart=restart)
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"Dry run ({describe_parameters(parameters)}): rows that would get each "
                f"{definition.field}"
            )
        )
        labels = value_labels(definition, counts, using=using)
        width = max([8, *(len(label) for label in labels.values())])
        for value, label in labels.items():
            self.stdout.write(f"  {label:<{width}} {counts.get(value, 0):>10,}")
        self.stdout.write(f"  {'Total':<{width}} {sum(counts.values()):>10,}")
        self.stdout.write("Nothing was written.")

    def steer(self, definition: BackfillDefinition, action: str, using: str) -> None:
        """Pause, resume or cancel the open run."""
        run = find_open_run(BackfillRun, name=definition.name, using=using)
        if run is None:
            raise CommandError(f"There is no open {definition.name} run to {action}.")
        try:
            run = steer(run, action, using=using, actor=process_name("command"), origin="command")
        except RunStateError as exc:
            raise CommandError(str(exc)) from exc
        except NotEnqueued as exc:
            raise CommandError(
                f"Run #{run.pk}: {action} done, but no worker task could be enqueued for it "
                f"({exc}). The task tables come with the django_tasks_db app: manage.py migrate "
                f"--database {using}, then {action} it again."
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"Run #{run.pk} was not changed: {exc}. Once the database is reachable, "
                f"{action} it again."
            ) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Run #{run.pk} is now {run.get_status_display().lower()}.")
        )

    def enqueue(
        self, definition: BackfillDefinition, *, using: str, restart: bool, workers: int
    ) -> None:
        """Start or carry on the run on task workers."""
        try:
            run, resumed = start_on_workers(
                definition,
                using=using,
                origin=BackfillRun.Origin.COMMAND,
                started_by=process_name("command"),
                restart=restart,
                workers=workers,
            )
        except (RunStateError, BackfillNotReady, ValueError) as exc:
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
                f"Workers: manage.py db_worker --queue-name {QUEUE}. Watch: "
                f"manage.py backfill {definition.name} --status, or the admin's Backfill runs "
                "page."
            )
        )

    def print_status(self, definition: BackfillDefinition | None, using: str) -> None:
        """The recent runs (of one backfill, or of all), newest first."""
        runs = BackfillRun.objects.using(using)
        if definition is not None:
            runs = runs.filter(name=definition.name)
        runs = runs[:STATUS_ROWS]
        if not runs:
            what = "" if definition is None else f"{definition.name} "
            self.stdout.write(f"No {what}backfill has run on this database yet.")
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
                f"{run.rate or 0:>8,.0f} {format_seconds(run.eta_seconds):>8} "
                f"{run.batch_size or 0:>7,} {run.workers:>7} "
                f"{format_seconds(run.heartbeat_age):>10}  "
                f"{run.origin} / {run.started_by or '-'}"
            )
            if definition is None:
                self.stdout.write(f"{'':7}{run.name} ({describe_parameters(run.parameters)})")
            if run.throttle_reason and run.status == BackfillRun.Status.RUNNING:
                self.stdout.write(f"{'':7}backing off: {run.throttle_reason}")
            if run.last_error and run.status == BackfillRun.Status.FAILED:
                self.stdout.write(self.style.ERROR(f"{'':7}{run.last_error}"))

    def print_list(self, using: str) -> None:
        """Every registered backfill: its table and column, the rows pending, its open run."""
        registered = definitions()
        if not registered:
            self.stdout.write("No backfill is registered (declare them in an app's backfills.py).")
            return
        self.stdout.write(
            self.style.MIGRATE_HEADING(
                f"{'backfill':<28} {'table.column':<28} {'pending rows':>14}  open run"
            )
        )
        for definition in registered:
            model = definition.model_class()
            state = column_of(definition, using=using)
            if state == "missing":
                pending = "no column yet"
            elif column_is_filled(definition, state):
                pending = "0 (NOT NULL)"
            else:
                pending = f"{pending_rows(definition, using=using).count():,}"
            run = find_open_run(BackfillRun, name=definition.name, using=using)
            open_run = "-" if run is None else f"#{run.pk} {run.status_label}"
            column = f"{model._meta.db_table}.{model._meta.get_field(definition.field).column}"
            self.stdout.write(f"{definition.name:<28} {column:<28} {pending:>14}  {open_run}")
            if definition.description:
                self.stdout.write(f"{'':2}{definition.description}")


def during_ctrl_c(error: BaseException) -> bool:
    """Whether ``error`` was raised while a KeyboardInterrupt was being handled."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


class Interrupted(CommandError):
    """The operator stopped the command (Ctrl-C): exit code 130, as a shell's for SIGINT. The
    command line prints it as "Interrupted: ...", with no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message, returncode=130)


def value_labels(definition: BackfillDefinition, counts: dict, *, using: str) -> dict:
    """The values a dry run reports on, each with its label: every one of the field's choices
    (last declared first: for a priority, the most pressing), the related rows' names for a
    foreign key, else the value itself."""
    field = definition.model_class()._meta.get_field(definition.field)
    if field.choices:
        return {value: str(label) for value, label in reversed(field.flatchoices)}
    if field.many_to_one:
        related = field.related_model._default_manager.using(using).in_bulk(
            [value for value in counts if value is not None]
        )
        return {value: str(related.get(value, value)) for value in counts}
    return {value: str(value) for value in counts}
