"""The baselines `manage.py backfill NAME` is measured against, one per process.

    python benchmarks/backfill_variants.py NAME single-update|bulk-update
    python benchmarks/backfill_variants.py NAME keyset-loop [CONNECTIONS [KEYS]]

NAME is a registered backfill (tasks.task.priority, tasks.task.workspace): every variant fills
its column with the very expression its runs use (the registry's), on the rows its filter
leaves. Prints the rows and the seconds the work took (connection set-up excluded) on
DATABASE_URL.
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

from backfills.registry import BackfillDefinition, get_definition  # noqa: E402
from tasks.priority import PriorityRule  # noqa: E402


def filled(definition: BackfillDefinition):
    """The definition's model, and the ``update()`` keywords of its value for a run now."""
    model = definition.model_class()
    parameters = definition.new_parameters(model, using="default")
    return model, {definition.field: definition.value(model, parameters)}


def single_update(definition: BackfillDefinition) -> int:
    """One UPDATE ... SET column = <value> WHERE <pending>: the physical limit."""
    model, values = filled(definition)
    with transaction.atomic():
        return model.objects.filter(definition.pending).update(**values)


def bulk_update(definition: BackfillDefinition, batch_size: int = 1000) -> int:
    """Django's bulk_update in keyset batches: read rows, compute in Python, write back (the
    priority rule's Python twin)."""
    model, _ = filled(definition)
    rule = PriorityRule(timezone.localdate())
    last, done = 0, 0
    while True:
        batch = list(
            model.objects.filter(definition.pending, pk__gt=last)
            .only("pk", "status", "due_date")
            .order_by("pk")[:batch_size]
        )
        if not batch:
            return done
        for task in batch:
            task.priority = rule.for_task(status=task.status, due_date=task.due_date)
        with transaction.atomic():
            model.objects.bulk_update(batch, ["priority"])
        last, done = batch[-1].pk, done + len(batch)


def keyset_loop(definition: BackfillDefinition, lanes: int = 1, keys: int = 4_000) -> int:
    """The command's batches without its bookkeeping: the same UPDATE over fixed key ranges of
    ``keys`` (the command's batch size), one commit each (asynchronous, as the command's), no
    checkpoint, control, upper-key read or health check; ``lanes`` connections on equal shares
    of the keys. What the hardware allows batched work on that many connections."""
    model, values = filled(definition)
    bounds = model.objects.aggregate(low=Min("pk"), high=Max("pk"))
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
                    done[number] += model.objects.filter(
                        definition.pending, pk__gt=start, pk__lte=upper
                    ).update(**values)
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
    definition, variant = get_definition(sys.argv[1]), sys.argv[2]
    connection.ensure_connection()
    started = time.perf_counter()
    if variant == "keyset-loop":
        rows = keyset_loop(definition, int(sys.argv[3]), *map(int, sys.argv[4:5]))
    else:
        rows = {"single-update": single_update, "bulk-update": bulk_update}[variant](definition)
    sys.stdout.write(f"{rows} {time.perf_counter() - started:.3f}\n")


if __name__ == "__main__":
    main()
