"""manage.py task_stats: how many tasks there are, per status."""

from django.core.management.base import CommandParser

from tasks.backfill import column_state
from tasks.management.base import ProjectCommand
from tasks.models import Task
from tasks.priority import Priority
from tasks.selectors import task_counts_by_priority, task_counts_by_status


class Command(ProjectCommand):
    help = "Print the number of tasks per status and per priority."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        using = self.database_alias(options["database"])
        self.require_migrated(using)
        counts = task_counts_by_status(using=using)
        labels = dict(Task.Status.choices)
        self.stdout.write(self.style.MIGRATE_HEADING("Tasks by status"))
        for status, count in counts.items():
            self.stdout.write(f"  {labels[status]:<12} {count:>10,}")
        self.stdout.write(f"  {'Total':<12} {sum(counts.values()):>10,}")
        if column_state(Task, "priority", using=using) == "missing":
            return
        labels = {**dict(Priority.choices), None: "Not set yet"}
        self.stdout.write(self.style.MIGRATE_HEADING("Tasks by priority"))
        for priority, count in task_counts_by_priority(using=using).items():
            self.stdout.write(f"  {labels[priority]:<12} {count:>10,}")
