"""Bounded lock waits for migrations on PostgreSQL: who is blocking, and how to say so.

``manage.py migrate`` (migration_safety/management/commands/migrate.py) runs every migration
under a short ``lock_timeout`` and retries with backoff (django-pg-migration-tools does the
timeouts and the retry loop); this module names the sessions in the way when the lock is not
granted.
"""

import logging
from dataclasses import dataclass

from django.db import connections

logger = logging.getLogger("migration_safety.migrate")


@dataclass(frozen=True)
class BlockingSession:
    """Another session holding locks on this database's tables."""

    pid: int
    seconds: float
    state: str
    tables: str
    query: str

    def __str__(self) -> str:
        return (
            f"pid {self.pid} ({self.state}, transaction open for {self.seconds:.0f} s, "
            f"holding locks on {self.tables}): {self.query!r}"
        )


def blocking_sessions(*, using: str) -> list[BlockingSession]:
    """Sessions other than ours that hold granted locks on user tables, longest first.

    A DDL statement that timed out waiting for its lock waited on one of these (PostgreSQL
    queues lock requests; any granted lock on the table can be in the way).
    """
    with connections[using].cursor() as cursor:
        cursor.execute(
            """
            SELECT a.pid,
                   EXTRACT(EPOCH FROM now() - COALESCE(a.xact_start, a.query_start)),
                   COALESCE(a.state, ''),
                   string_agg(DISTINCT c.relname, ', '),
                   left(regexp_replace(COALESCE(a.query, ''), '\\s+', ' ', 'g'), 200)
            FROM pg_locks l
            JOIN pg_stat_activity a ON a.pid = l.pid
            JOIN pg_class c ON c.oid = l.relation
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE l.granted
              AND a.pid <> pg_backend_pid()
              AND a.datname = current_database()
              AND c.relkind IN ('r', 'p')
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            GROUP BY a.pid, a.xact_start, a.query_start, a.state, a.query
            ORDER BY 2 DESC
            """
        )
        return [BlockingSession(*row) for row in cursor.fetchall()]


def describe_blockers(*, using: str, advice: bool = True) -> str:
    """A readable list of the sessions holding locks now, longest-open first; with ``advice``,
    what to do about them."""
    sessions = blocking_sessions(using=using)
    if not sessions:
        return "No other session holds locks on this database's tables now."
    lines = "\n".join(f"  - {session}" for session in sessions)
    text = f"Sessions holding locks on tables now (longest-open first):\n{lines}"
    if advice:
        text += (
            "\nWait for them to finish, or end one with SELECT pg_terminate_backend(<pid>); "
            "then run migrate again."
        )
    return text


def log_lock_timeout(retry_state) -> None:
    """Retry callback for migrate, called after each lock timeout (the last one too, before
    migrate gives up), once its backoff has passed: say which sessions hold locks then."""
    logger.warning(
        "Migration lock not granted within lock_timeout (lock timeout %d, %.1f s since start).\n%s",
        retry_state.lock_timeouts_count,
        retry_state.time_since_start.total_seconds(),
        describe_blockers(using=retry_state.database, advice=False),
    )
