"""manage.py backfill_priority: fill NULL priorities in batches, resumably, gently."""

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from tasks.backfill import BackfillBusy, BackfillFailed, BatchPolicy, BatchReport, column_state
from tasks.management.base import ProjectCommand
from tasks.models import BackfillRun, Task
from tasks.priority import Priority
from tasks.priority_backfill import PENDING, backfill_priority, dry_run_priority_backfill

DEFAULTS = BatchPolicy()
MAX_BATCH_SIZE = 100_000


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
            help=f"Rows per batch, 1 to {MAX_BATCH_SIZE:,} (default: {DEFAULTS.batch_size:,}).",
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
            "--restart",
            action="store_true",
            help="Cancel the open run and start a new one with today as its reference date.",
        )
        self.add_progress_argument(parser)
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        policy = self.parse_policy(options)
        using = self.database_alias(options["database"])
        verbosity = options["verbosity"]
        self.require_migrated(using)
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

        bar = self.progress_bar(total=0, unit="row", enabled=not options["no_progress"])

        def on_start(run: BackfillRun, resumed: bool, pending: int) -> None:
            bar.reset(total=pending)
            if verbosity >= 1:
                how = "Resuming" if resumed else "Starting"
                self.stdout.write(
                    f"{how} run #{run.pk} (reference date {run.reference_date}): "
                    f"{pending:,} rows with a NULL priority."
                )

        def on_batch(report: BatchReport) -> None:
            bar.update(report.rows)
            if verbosity >= 2:
                self.stdout.write(
                    f"  batch up to key {report.last_key}: {report.rows:,} rows in "
                    f"{report.seconds * 1000:.0f} ms"
                    + (f" after {report.attempts - 1} retries" if report.attempts > 1 else "")
                )

        try:
            with bar:
                run, result = backfill_priority(
                    task_model=Task,
                    run_model=BackfillRun,
                    using=using,
                    policy=policy,
                    restart=options["restart"],
                    on_start=on_start,
                    on_batch=on_batch,
                )
        except BackfillFailed as exc:
            raise CommandError(
                f"Backfill stopped: {exc}. The checkpoint is kept; run the command again to "
                "resume (consider a larger --lock-timeout or running off-peak)."
            ) from exc
        except BackfillBusy as exc:
            raise CommandError(f"Not started: {exc}.") from exc
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
        left = Task.objects.using(using).filter(PENDING).count()
        self.stdout.write(
            f"Updated {result.rows:,} rows in {result.batches:,} batches, "
            f"{result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s); "
            f"NULL rows left: {left:,}."
        )
        if result.finished:
            self.stdout.write(self.style.SUCCESS(f"Run #{run.pk} succeeded."))
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
        return BatchPolicy(
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
