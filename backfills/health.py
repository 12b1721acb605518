"""When a backfill should back off: cheap health signals, read between (and during) batches.

A backfill is background work; the application comes first. Before each batch the engine asks
:meth:`DatabaseHealth.between_batches` whether the database is busy with something the
backfill would make worse, and just before each batch commits it asks
:meth:`DatabaseHealth.waiting_on_batch` whether application sessions are queued behind the
batch's row locks. Each signal is one small catalogue query on PostgreSQL:

- replication lag (``pg_stat_replication.replay_lag``) above a limit: every batch adds WAL the
  replicas must replay, and reads served by them go stale;
- a vacuum running on the table (``pg_stat_progress_vacuum``): the backfill creates the dead
  rows it is cleaning up, and the two compete for I/O;
- sessions waiting on the batch's locks (``pg_blocking_pids``);
- a check of your own: ``BACKFILL_HEALTH_CHECK``, the dotted path of a callable taking the
  database alias and returning a reason to wait, or None.

SQLite has none of these; only the user check applies there.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models
from django.utils.module_loading import import_string


def replication_lag_seconds(*, using: str) -> float | None:
    """The largest replay lag of any replica streaming from this server, None without any."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT max(EXTRACT(EPOCH FROM COALESCE(replay_lag, write_lag, flush_lag)))::float "
            "FROM pg_stat_replication"
        )
        return cursor.fetchone()[0]


def vacuum_phase(table: str, *, using: str) -> str | None:
    """The phase of a VACUUM (auto or manual) running on ``table`` now, None when none is."""
    connection = connections[using]
    with connection.cursor() as cursor:
        # By the table's oid as the session resolves its name: not another schema's namesake.
        cursor.execute(
            "SELECT phase FROM pg_stat_progress_vacuum "
            "WHERE relid = %s::regclass AND datname = current_database() LIMIT 1",
            [connection.ops.quote_name(table)],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def sessions_waiting_on_me(*, using: str) -> int:
    """Sessions whose lock requests are blocked by this session (PostgreSQL).

    A waiting session has one lock request not granted. Read from pg_locks rather than
    pg_stat_activity: it runs before every batch's commit, and planning the pg_stat_activity
    view alone took 1.7 ms against 0.25 ms for the whole pg_locks query (EXPLAIN ANALYZE).
    """
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks "
            "WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        return cursor.fetchone()[0]


@dataclass
class DatabaseHealth:
    """The health signals for a backfill of ``model``, with the limits that trip them.

    Once healthy, the signals are read again after ``check_every_seconds``, not before every
    batch: a batch takes ~50 ms, and three catalogue queries per batch were a measurable share
    of the backfill's time for news that changes over seconds. Once unhealthy, every check
    reads them (after each back-off).
    """

    model: type[models.Model]
    max_replication_lag_seconds: float = 10.0
    backoff_seconds: float = 5.0
    user_check: Callable[[str], str | None] | None = None
    check_every_seconds: float = 1.0
    _healthy_until: float = field(default=0.0, repr=False)

    @classmethod
    def from_settings(cls, model: type[models.Model]) -> "DatabaseHealth":
        """Limits from settings: BACKFILL_MAX_REPLICATION_LAG_SECONDS, BACKFILL_BACKOFF_SECONDS
        and BACKFILL_HEALTH_CHECK (a dotted path, or empty)."""
        path = settings.BACKFILL_HEALTH_CHECK
        try:
            user_check = import_string(path) if path else None
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"BACKFILL_HEALTH_CHECK = {path!r} cannot be imported ({exc}); set it to the "
                "dotted path of a callable(database_alias) -> reason or None, or leave it empty."
            ) from exc
        return cls(
            model=model,
            max_replication_lag_seconds=settings.BACKFILL_MAX_REPLICATION_LAG_SECONDS,
            backoff_seconds=settings.BACKFILL_BACKOFF_SECONDS,
            user_check=user_check,
        )

    def between_batches(self, *, using: str) -> str | None:
        """Why to wait before the next batch, or None when healthy."""
        if time.monotonic() < self._healthy_until:
            return None
        reason = self._read_signals(using=using)
        if reason is None:
            self._healthy_until = time.monotonic() + self.check_every_seconds
        return reason

    def _read_signals(self, *, using: str) -> str | None:
        if connections[using].vendor == "postgresql":
            lag = replication_lag_seconds(using=using)
            if lag is not None and lag > self.max_replication_lag_seconds:
                return f"replication lag {lag:.1f} s is over {self.max_replication_lag_seconds:g} s"
            table = self.model._meta.db_table
            phase = vacuum_phase(table, using=using)
            if phase is not None:
                return f"vacuum running on {table} ({phase})"
        if self.user_check is not None:
            reason = self.user_check(using)
            if reason:
                return f"health check: {reason}"
        return None

    def waiting_on_batch(self, *, using: str) -> int:
        """Sessions queued behind the open batch's locks (0 on other databases)."""
        if connections[using].vendor != "postgresql":
            return 0
        return sessions_waiting_on_me(using=using)
