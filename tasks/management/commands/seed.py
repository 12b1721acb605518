"""manage.py seed: realistic volume from the factories, on top of the reference fixtures."""

import secrets

from django.core.management.base import CommandError, CommandParser

from backfills.inspection import column_state
from commandline.base import CheckedCommand
from tasks.models import Category, Task, Workspace
from tasks.seeding import ReferenceDataMissing, seed

# The columns that arrived on the live table, each with the flag that leaves it out, the
# migration that adds it and the last one before it is NOT NULL.
ROLLED_OUT = {
    "priority": ("--without-priority", "0002_priority_expand", "0003_priority_backfill"),
    "workspace": ("--without-workspace", "0007_workspace_expand", "0008_workspace_backfill"),
}


class Command(CheckedCommand):
    help = (
        "Create users and tasks from the factories, loading the reference fixtures "
        "(workspaces, categories, roles) first if they are missing. The same --seed and "
        "--today give the same data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tasks", default="1000", help="Tasks to create (default: 1000).")
        parser.add_argument("--users", default="25", help="Users to create (default: 25).")
        parser.add_argument(
            "--seed", default=None, help="Random seed; default: a random one, printed at the end."
        )
        parser.add_argument(
            "--today",
            default=None,
            help="Reference date (YYYY-MM-DD) due dates and priorities are drawn around and the "
            "tasks are created on; default: today, printed at the end.",
        )
        # Between two batches the server finishes the COPY and commits while the seeder waits,
        # then waits for the seeder's first lines: the fewer batches, the less of that
        # (docs/benchmarks.md, seeding). Rows are streamed either way: memory does not grow
        # with the batch on PostgreSQL.
        parser.add_argument(
            "--batch-size",
            default="50000",
            help="Tasks written per transaction (default: 50000).",
        )
        for field, (flag, _, _) in ROLLED_OUT.items():
            parser.add_argument(
                flag,
                action="store_true",
                help=f"Write tasks as the application did before the {field} column existed "
                f"({field} left NULL), to rehearse its backfill. Refused once {field} is NOT NULL.",
            )
        self.add_progress_argument(parser)
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        tasks = self.int_option("tasks", options["tasks"], minimum=0)
        users = self.int_option("users", options["users"], minimum=0)
        batch_size = self.int_option("batch_size", options["batch_size"], minimum=1)
        seed_value = options["seed"]
        if seed_value is None:
            seed_value = secrets.randbelow(2**31)
        seed_value = self.int_option("seed", seed_value, minimum=0)
        today = self.date_option("today", options["today"])
        using = self.database_alias(options["database"])
        self.require_tables(using, Task, Category)
        written = {field: self.check_column(field, options, using) for field in ROLLED_OUT}

        try:
            with self.progress_bar(
                total=tasks, unit="task", enabled=not options["no_progress"]
            ) as bar:
                result = seed(
                    tasks=tasks,
                    users=users,
                    seed=seed_value,
                    batch_size=batch_size,
                    using=using,
                    with_priority=written["priority"],
                    with_workspace=written["workspace"],
                    today=today,
                    on_batch=bar.update,
                )
        except (ReferenceDataMissing, Workspace.DoesNotExist) as exc:
            raise CommandError(f"{exc} Nothing was seeded.") from exc

        if result.loaded_reference_data and options["verbosity"] >= 1:
            self.stdout.write("Loaded the reference fixtures (workspaces, categories, roles).")
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Seeded {result.tasks:,} tasks and {result.users:,} users "
                    f"in {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s), "
                    f"seed {seed_value}, reference date {today.isoformat()}."
                )
            )
        if options["verbosity"] >= 2:
            self.stdout.write(
                f"Due dates and priorities are relative to the reference date: --seed "
                f"{seed_value} --today {today.isoformat()} gives the same rows on any day."
            )

    def check_column(self, field: str, options, using: str) -> bool:
        """Whether to write ``field``: refuse a flag the schema does not allow, or a column
        that is not there yet without its flag."""
        flag, expand, nullable = ROLLED_OUT[field]
        leave_out = options[flag.lstrip("-").replace("-", "_")]
        state = column_state(Task, field, using=using)
        if leave_out and state == "not null":
            raise CommandError(
                f"{flag} writes tasks with a NULL {field}, but {field} is NOT NULL here (its "
                f"contract migration is applied). Seed without {flag}, or migrate back first: "
                f"manage.py migrate tasks {nullable} --database {using}"
            )
        if not leave_out and state == "missing":
            raise CommandError(
                f"The {field} column does not exist yet. Apply its expand step (manage.py "
                f"migrate tasks {expand} --database {using}) or pass {flag} to seed tasks as "
                "the application wrote them before it."
            )
        return not leave_out
