"""When a backfill should back off: cheap health signals, read between (and during) batches.

A backfill is background work; the application comes first. Before each batch the engine asks
:meth:`DatabaseHealth.between_batches` whether the database is busy with something the
backfill would make worse, and just before each batch commits it asks
:meth:`DatabaseHealth.waiting_on_batch` whether application sessions are queued behind the
batch's row locks. Each signal is one small catalogue query on PostgreSQL:

- replication lag (``pg_stat_replication.replay_lag`` of each standby streaming from the
  server, but those named in BACKFILL_IGNORE_STANDBYS) above a limit: every batch adds WAL the
  replicas must replay, and reads served by them go stale. A role without pg_read_all_stats
  sees the standbys but not their lag: :meth:`DatabaseHealth.check_standbys` refuses to start
  then, unless BACKFILL_ALLOW_UNMEASURED_LAG says to go on without it;
- a vacuum running on the table (``pg_stat_progress_vacuum``): the backfill creates the dead
  rows it is cleaning up, and the two compete for I/O;
- sessions waiting on the batch's locks (``pg_blocking_pids``);
- a check of your own: ``BACKFILL_HEALTH_CHECK``, the dotted path of a callable taking the
  database alias and returning a reason to wait, or None.

SQLite has none of these; only the user check applies there.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

# Every walsender but a base backup's (state "backup", nothing to replay): physical standbys
# and logical subscribers. A role without pg_read_all_stats (or pg_monitor, which includes it)
# gets each walsender's pid and, from pg_stat_activity, its application_name, and NULL in every
# other column: a NULL state is how an unreadable row shows. replay_lag is NULL too once a
# standby has replayed everything (idle); it is refreshed when the standby reports, with each
# WAL message it receives and every wal_receiver_status_interval (10 s by default) otherwise.
STANDBYS_SQL = (
    "SELECT application_name, state, EXTRACT(EPOCH FROM replay_lag)::float, "
    # On a standby (its own cascaded standbys) there is no current WAL position to compare.
    "CASE WHEN NOT pg_is_in_recovery() "
    "THEN pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint END, current_user "
    "FROM pg_stat_replication WHERE state IS DISTINCT FROM 'backup' ORDER BY application_name"
)


@dataclass(frozen=True)
class Standby:
    """One standby streaming from the server, as this session's role may see it."""

    name: str  # its application_name (primary_conninfo), which every role can read
    readable: bool  # False: the role lacks pg_read_all_stats; lag and bytes are then None
    lag_seconds: float | None  # replay_lag: how old the last change it has replayed is
    bytes_behind: int | None  # WAL written here that it has not replayed yet
    role: str = ""  # the role that read it


def standbys(*, using: str) -> list[Standby]:
    """The standbys (and logical subscribers) streaming from this server now (PostgreSQL)."""
    with connections[using].cursor() as cursor:
        cursor.execute(STANDBYS_SQL)
        return [
            Standby(
                name=name or "",
                readable=state is not None,
                lag_seconds=lag,
                bytes_behind=behind,
                role=role,
            )
            for name, state, lag, behind, role in cursor.fetchall()
        ]


class LagUnmeasurable(ImproperlyConfigured):
    """Standbys stream from the server, but this role cannot read how far behind they are."""


def unmeasurable_message(unreadable: Iterable[Standby]) -> str:
    """What to do when the role cannot read the lag of the ``unreadable`` standbys."""
    unreadable = list(unreadable)
    names = ", ".join(repr(standby.name) for standby in unreadable)
    role = unreadable[0].role
    which = f"standby {names} streams" if len(unreadable) == 1 else f"standbys {names} stream"
    return (
        f"Cannot measure replication lag: {which} from this server, but role {role!r} cannot "
        "read how far behind (pg_stat_replication shows it only to roles with "
        f'pg_read_all_stats). Grant it (GRANT pg_read_all_stats TO "{role}";), or name the '
        "standby in BACKFILL_IGNORE_STANDBYS, or set BACKFILL_ALLOW_UNMEASURED_LAG=true to run "
        "without waiting for it."
    )


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
    # application_names of standbys whose lag is not waited for (a delayed standby).
    ignore_standbys: frozenset[str] = frozenset()
    # Go on when a standby's lag cannot be read (warned about) rather than refuse.
    allow_unmeasured_lag: bool = False
    backoff_seconds: float = 5.0
    user_check: Callable[[str], str | None] | None = None
    check_every_seconds: float = 1.0
    _healthy_until: float = field(default=0.0, repr=False)

    @classmethod
    def from_settings(cls, model: type[models.Model]) -> "DatabaseHealth":
        """Limits from settings: BACKFILL_MAX_REPLICATION_LAG_SECONDS, BACKFILL_IGNORE_STANDBYS,
        BACKFILL_ALLOW_UNMEASURED_LAG, BACKFILL_BACKOFF_SECONDS and BACKFILL_HEALTH_CHECK (a
        dotted path, or empty)."""
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
            ignore_standbys=frozenset(settings.BACKFILL_IGNORE_STANDBYS),
            allow_unmeasured_lag=settings.BACKFILL_ALLOW_UNMEASURED_LAG,
            backoff_seconds=settings.BACKFILL_BACKOFF_SECONDS,
            user_check=user_check,
        )

    def watched_standbys(self, *, using: str) -> list[Standby]:
        """The standbys whose lag the backfill waits for: all but the ignored ones."""
        if connections[using].vendor != "postgresql":
            return []
        return [s for s in standbys(using=using) if s.name not in self.ignore_standbys]

    def check_standbys(self, *, using: str) -> list[Standby]:
        """Before a run starts: the watched standbys whose lag this role cannot read (when
        allowed, to warn about; logged too). Raises :class:`LagUnmeasurable` when not allowed:
        the run would otherwise write every row without ever backing off for them."""
        unreadable = [s for s in self.watched_standbys(using=using) if not s.readable]
        if unreadable and not self.allow_unmeasured_lag:
            raise LagUnmeasurable(unmeasurable_message(unreadable))
        if unreadable:
            logger.warning(
                "replication lag of standby %s is not measured (BACKFILL_ALLOW_UNMEASURED_LAG)",
                ", ".join(repr(s.name) for s in unreadable),
            )
        return unreadable

    def replication_lag(self, *, using: str) -> str | None:
        """Why to wait for the watched standbys: one lagging over the limit, or (unless
        allowed) one whose lag this role cannot read. None when they are all close enough."""
        watched = self.watched_standbys(using=using)
        unreadable = [s for s in watched if not s.readable]
        if unreadable and not self.allow_unmeasured_lag:
            return unmeasurable_message(unreadable)
        lagging = [s for s in watched if s.lag_seconds is not None]
        worst = max(lagging, key=lambda s: s.lag_seconds, default=None)
        if worst is None or worst.lag_seconds <= self.max_replication_lag_seconds:
            return None
        behind = "" if worst.bytes_behind is None else f", {worst.bytes_behind:,} bytes behind"
        return (
            f"replication lag {worst.lag_seconds:.1f} s of standby {worst.name!r} is over "
            f"{self.max_replication_lag_seconds:g} s{behind}"
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
            lag = self.replication_lag(using=using)
            if lag is not None:
                return lag
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
