"""manage.py task_stats: how many tasks there are, per status, priority and workspace."""

from django.core.management.base import CommandParser

from backfills.inspection import column_state
from commandline.base import CheckedCommand
from tasks.models import Category, Task
from tasks.priority import Priority
from tasks.selectors import (
    task_counts_by_priority,
    task_counts_by_status,
    task_counts_by_workspace,
)


class Command(CheckedCommand):
    help = "Print the number of tasks per status, per priority and per workspace."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        using = self.database_alias(options["database"])
        self.require_tables(using, Task, Category)
        counts = task_counts_by_status(using=using)
        labels = dict(Task.Status.choices)
        self.stdout.write(self.style.MIGRATE_HEADING("Tasks by status"))
        for status, count in counts.items():
            self.stdout.write(f"  {labels.get(status, status):<12} {count:>10,}")
        self.stdout.write(f"  {'Total':<12} {sum(counts.values()):>10,}")
        if column_state(Task, "priority", using=using) != "missing":
            labels = {**dict(Priority.choices), None: "Not set yet"}
            self.stdout.write(self.style.MIGRATE_HEADING("Tasks by priority"))
            for priority, count in task_counts_by_priority(using=using).items():
                self.stdout.write(f"  {labels[priority]:<12} {count:>10,}")
        if column_state(Task, "workspace", using=using) != "missing":
            self.stdout.write(self.style.MIGRATE_HEADING("Tasks by workspace"))
            for name, count in task_counts_by_workspace(using=using).items():
                self.stdout.write(f"  {name or 'Not set yet':<12} {count:>10,}")
