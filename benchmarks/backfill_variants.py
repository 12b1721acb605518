"""The baselines `manage.py backfill_priority` is measured against, one per process.

    python benchmarks/backfill_variants.py single-update|bulk-update|keyset-loop [CONNECTIONS]

Prints the seconds the work took (connection set-up excluded) on DATABASE_URL.
"""

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskproj.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, connections, transaction  # noqa: E402
from django.db.models import Max, Min  # noqa: E402
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


def keyset_loop(lanes: int = 1, keys: int = 4_000) -> int:
    """The command's batches without its bookkeeping: the same UPDATE over fixed key ranges of
    ``keys``, one commit each (asynchronous, as the command's), no checkpoint, control, upper-key
    read or health check; ``lanes`` connections on equal shares of the keys. What the hardware
    allows batched work on that many connections."""
    rule = PriorityRule(timezone.localdate()).expression()
    bounds = Task.objects.aggregate(low=Min("pk"), high=Max("pk"))
    low, high = bounds["low"] - 1, bounds["high"]
    width = -(-(high - low) // lanes)
    done = [0] * lanes

    def lane(number: int) -> None:
        start, end = low + number * width, min(low + (number + 1) * width, high)
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SET synchronous_commit = off")
            while start < end:
                upper = min(start + keys, end)
                with transaction.atomic():
                    done[number] += Task.objects.filter(
                        pk__gt=start, pk__lte=upper, priority__isnull=True
                    ).update(priority=rule)
                start = upper
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lane, args=(number,)) for number in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def main() -> None:
    variant = sys.argv[1]
    connection.ensure_connection()
    started = time.perf_counter()
    if variant == "keyset-loop":
        rows = keyset_loop(int(sys.argv[2]))
    else:
        rows = {"single-update": single_update, "bulk-update": bulk_update}[variant]()
    sys.stdout.write(f"{rows} {time.perf_counter() - started:.3f}\n")


if __name__ == "__main__":
    main()
