"""Parallel lanes: one run filled by several connections, each walking its own range of keys.

The engine (:mod:`backfills.engine`) walks one range on one connection; here the keys still to
fill are split into ranges of equal width, and each range is walked by :func:`run_backfill` on a
thread with its own database connection. The lanes' key ranges are disjoint, so the threads
never wait on each other's row locks. PostgreSQL only: SQLite lets one connection write at a time.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from django.db import DatabaseError, connections, models
from django.db.models import Max

from backfills.engine import (
    Backfill,
    BackfillResult,
    BatchPolicy,
    BatchReport,
    Checkpoint,
    HealthCheck,
    first_pending,
    key_field,
    run_backfill,
)

logger = logging.getLogger(__name__)
# The most connections one run may fill with (the command's --workers, BACKFILL_WORKERS): more
# only queue up behind each other's WAL writes and index pages.
MAX_WORKERS = 16


def check_workers(
    workers: int, *, using: str, model: type[models.Model] | None = None, key: str = "pk"
) -> None:
    """Refuse a number of lanes that cannot work, before anything is written: outside 1 to
    :data:`MAX_WORKERS`; more than one on SQLite, which lets one connection write at a time (a
    second one would only wait for the database lock); more than one on ``model``'s ``key`` if
    it is not an integer (see :func:`plan_lanes`)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{workers} workers: use 1 to {MAX_WORKERS}.")
    if workers == 1:
        return
    vendor = connections[using].vendor
    if vendor != "postgresql":
        raise ValueError(
            f"{workers} workers need PostgreSQL: database {using!r} is {vendor}, where one "
            "connection writes at a time. Use 1 worker."
        )
    if model is not None:
        integer_key(model, key)


def integer_key(model: type[models.Model], key: str) -> models.Field:
    """``model``'s field ``key`` ("pk": its primary key); ValueError unless it is an integer."""
    field = key_field(model, key)
    if not isinstance(field, models.IntegerField):
        raise ValueError(
            f"parallel lanes need an integer key; {model.__name__}.{field.name} "
            f"is a {field.get_internal_type()}"
        )
    return field


def plan_lanes(backfill: Backfill, lanes: int, *, using: str) -> list[tuple[Any, Any]]:
    """Split the keys still to walk into at most ``lanes`` ranges ``(after, upto]`` of equal
    width, from just before the first pending row to the largest key now. The last range is
    open-ended (``upto`` None), so rows inserted meanwhile fall into it. Empty when nothing is
    pending. The key must be an integer (an auto-incremented primary key, typically): equal
    widths of the key range make lanes of similar size."""
    integer_key(backfill.model, backfill.key)
    first = first_pending(backfill, using=using, workers=lanes)
    if first is None:
        return []
    last = (
        backfill.model._default_manager.using(using)
        .filter(**{f"{backfill.key}__gte": first})
        .aggregate(last=Max(backfill.key))["last"]
    )
    count = max(1, min(lanes, last - first + 1))
    width = (last - first + 1) / count
    bounds = [first - 1 + round(width * number) for number in range(count)]
    return list(zip(bounds, [*bounds[1:], None], strict=True))


def run_lanes(
    lanes: Sequence[tuple[Backfill, Checkpoint]],
    policy: BatchPolicy,
    *,
    workers: int,
    using: str,
    on_batch: Callable[[BatchReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    health: HealthCheck | None = None,
) -> BackfillResult:
    """Walk the ``lanes`` of a parallel run with :func:`run_backfill`, ``workers`` at a time.

    Each worker is a thread with its own database connection (closed when it ends) that takes
    lanes ``i, i + workers, ...`` in turn; the lanes' key ranges are disjoint, so the workers
    never wait on each other's row locks. A lane that raises stops the others before their next
    batch, and its exception is raised once every worker has stopped. ``policy.max_batches``
    bounds all lanes together (at most that many; a lane backing off for its health check
    uses up one); ``on_batch`` is called from the workers, one call at a time.
    A lane is finished when its walk reaches its end: rows committed behind the walks are the
    caller's to look for, once for all lanes.

    The result is finished when every lane is; "paused", "cancelled" or "throttled" when a lane
    saw that.
    Each lane's checkpoint decides what its success and cancellation mean for the run.
    """
    lock = threading.Lock()
    stop = threading.Event()
    results: list[BackfillResult] = []
    errors: list[BaseException] = []
    batches = 0
    granted = 0
    started = time.perf_counter()

    def budget_spent() -> bool:
        return policy.max_batches is not None and granted >= policy.max_batches

    def may_go_on() -> bool:
        """Whether a lane may start another batch; takes it from the shared budget (so two
        lanes never both take the last one)."""
        nonlocal granted
        with lock:
            if stop.is_set() or budget_spent():
                return False
            granted += 1
            return True

    def report(batch: BatchReport) -> None:
        nonlocal batches
        with lock:
            batches += 1
            if on_batch is not None:
                on_batch(batch)

    def pause(seconds: float) -> bool:
        """Sleep unless stopped; True once stopped, which ends a lane's back-off or retry wait
        (waits sleep a second at most at a time): after Ctrl-C or a failed lane, no lane should
        sit out a 5 s back-off."""
        if not stop.is_set():
            sleep(seconds)
        return stop.is_set()

    def time_left() -> float | None:
        """What is left of ``policy.max_seconds`` for all lanes together."""
        if policy.max_seconds is None:
            return None
        return policy.max_seconds - (time.perf_counter() - started)

    def walk(mine: Sequence[tuple[Backfill, Checkpoint]]) -> None:
        try:
            for backfill, checkpoint in mine:
                left = time_left()
                if left is not None and left <= 0:
                    with lock:
                        results.append(BackfillResult(stopped="time budget"))
                    break
                result = run_backfill(
                    backfill,
                    replace(policy, max_batches=None, max_seconds=left),
                    _Steered(checkpoint, may_go_on),
                    using=using,
                    on_batch=report,
                    sleep=pause,
                    health=health,
                    settle=False,
                )
                with lock:
                    results.append(result)
                if result.stopped != "finished":
                    break
        except BaseException as error:  # re-raised by the caller's thread below
            with lock:
                errors.append(error)
            stop.set()
        finally:
            try:
                connections[using].close()
            except DatabaseError:
                logger.exception("could not close a backfill worker's connection")

    threads = [
        threading.Thread(target=walk, args=(lanes[number::workers],), name=f"backfill-{number}")
        for number in range(min(workers, len(lanes)))
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                # In short waits: the OS may deliver Ctrl-C's signal to a worker thread, and
                # then only a wake-up of this (main) thread runs Python's handler.
                thread.join(0.2)
    except BaseException:
        # Ctrl-C lands in this thread: without this the workers would go on to the end of their
        # lanes before the process could exit. Each stops before its next batch.
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join()
        raise
    if errors:
        for error in errors[1:]:
            logger.error("another lane failed too", exc_info=error)
        raise errors[0]
    stopped = {result.stopped for result in results}
    total = BackfillResult(
        rows=sum(result.rows for result in results),
        batches=batches,
        seconds=time.perf_counter() - started,
    )
    reasons = ("cancelled", "paused", "throttled", "time budget")
    if len(results) == len(lanes) and stopped <= {"finished"}:
        total.stopped = "finished"
    elif budget_spent() and not stopped & {"cancelled", "paused"}:
        total.stopped = "max batches"
    else:
        total.stopped = next((reason for reason in reasons if reason in stopped), "stopped")
    return total


class _Steered:
    """A lane's checkpoint, told to stop unless ``may_go_on`` (see :func:`run_lanes`)."""

    def __init__(self, checkpoint: Checkpoint, may_go_on: Callable[[], bool]) -> None:
        self._checkpoint = checkpoint
        self._may_go_on = may_go_on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._checkpoint, name)

    def control(self) -> str:
        return self._checkpoint.control() if self._may_go_on() else "stop"
