"""manage.py seed: realistic volume from the factories, on top of the reference fixtures."""

import secrets

from django.core.management.base import CommandError, CommandParser

from tasks.backfill import column_state
from tasks.management.base import ProjectCommand
from tasks.models import Task
from tasks.seeding import seed


class Command(ProjectCommand):
    help = (
        "Create users and tasks from the factories, loading the reference fixtures "
        "(categories, roles) first if they are missing. The same --seed gives the same data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tasks", default="1000", help="Tasks to create (default: 1000).")
        parser.add_argument("--users", default="25", help="Users to create (default: 25).")
        parser.add_argument(
            "--seed", default=None, help="Random seed; default: a random one, printed at the end."
        )
        parser.add_argument(
            "--batch-size",
            default="5000",
            help="Tasks written per transaction (default: 5000).",
        )
        parser.add_argument(
            "--without-priority",
            action="store_true",
            help="Write tasks as the application did before the priority column existed "
            "(priority left NULL), to rehearse the backfill. Refused once priority is NOT NULL.",
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
        using = self.database_alias(options["database"])
        self.require_migrated(using)
        with_priority = not options["without_priority"]
        state = column_state(Task, "priority", using=using)
        if not with_priority and state == "not null":
            raise CommandError(
                "--without-priority writes tasks with a NULL priority, but priority is NOT NULL "
                "here (the contract migration 0004 is applied). Seed without --without-priority, "
                f"or migrate back first: manage.py migrate tasks 0003 --database {using}"
            )
        if with_priority and state == "missing":
            raise CommandError(
                "The priority column does not exist yet. Apply the expand step "
                f"(manage.py migrate tasks 0002_priority_expand --database {using}) or pass "
                "--without-priority to seed tasks as the application wrote them before it."
            )

        with self.progress_bar(total=tasks, unit="task", enabled=not options["no_progress"]) as bar:
            result = seed(
                tasks=tasks,
                users=users,
                seed=seed_value,
                batch_size=batch_size,
                using=using,
                with_priority=with_priority,
                on_batch=bar.update,
            )

        if result.loaded_reference_data and options["verbosity"] >= 1:
            self.stdout.write("Loaded the reference fixtures (categories, roles).")
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Seeded {result.tasks:,} tasks and {result.users:,} users "
                    f"in {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s), "
                    f"seed {seed_value}."
                )
            )
