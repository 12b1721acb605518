"""The baselines `manage.py backfill_priority` is measured against, one per process.

    python benchmarks/backfill_variants.py single-update|bulk-update

Prints the seconds the work took (connection set-up excluded) on DATABASE_URL.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskproj.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from tasks.models import Task  # noqa: E402
from tasks.priority import PriorityRule  # noqa: E402


def single_update() -> int:
    """One UPDATE ... SET priority = <rule> WHERE priority IS NULL: the physical limit."""
    rule = PriorityRule(timezone.localdate())
    with transaction.atomic():
        return Task.objects.filter(priority__isnull=True).update(priority=rule.expression())


def bulk_update(batch_size: int = 1000) -> int:
    """Django's bulk_update in keyset batches: read rows, compute in Python, write back."""
    rule = PriorityRule(timezone.localdate())
    last, done = 0, 0
    while True:
        batch = list(
            Task.objects.filter(pk__gt=last, priority__isnull=True)
            .only("pk", "status", "due_date")
            .order_by("pk")[:batch_size]
        )
        if not batch:
            return done
        for task in batch:
            task.priority = rule.for_task(status=task.status, due_date=task.due_date)
        with transaction.atomic():
            Task.objects.bulk_update(batch, ["priority"])
        last, done = batch[-1].pk, done + len(batch)


def main() -> None:
    variant = sys.argv[1]
    connection.ensure_connection()
    started = time.perf_counter()
    rows = {"single-update": single_update, "bulk-update": bulk_update}[variant]()
    sys.stdout.write(f"{rows} {time.perf_counter() - started:.3f}\n")


if __name__ == "__main__":
    main()
