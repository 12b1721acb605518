"""manage.py migrate, made safe for live tables on PostgreSQL.

Django's own command, run through django-pg-migration-tools' ``migrate_with_timeouts`` on
PostgreSQL: every migration runs under a short ``lock_timeout`` and a ``statement_timeout`` for
DDL that must be instant. A migration whose lock is not granted in time fails — an atomic one
is rolled back, a non-atomic one keeps what it had committed and is written to be re-run — and
is retried after an exponential backoff a bounded number of times, logging the sessions holding
locks each time; then the command fails with them and what to do. Settings: MIGRATION_*.

Behind a transaction pooler (``DATABASE_POOLING=transaction``) the library's session-level
timeouts and "one migrate at a time" advisory lock would stay on a pooled server connection:
there the timeouts are set per transaction (:func:`timeouts_per_transaction`) and the lock is a
transaction-level one, held by a transaction of its own for the run (:func:`one_migrate_at_a_time`).
"""

import hashlib
import io
import time
from argparse import Action
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import OperationalError, connections
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    Command as MigrateWithTimeoutsCommand,
)
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    LockAlreadyAcquired,
    MaximumRetriesReached,
    MigrateRetryStrategy,
    MigrationTimeoutOptions,
)
from django_pg_migration_tools.timeouts import (
    DBLockTimeoutError,
    RedundantLockTimeout,
    TimeoutWasNotPositive,
)

from commandline.base import known_database
from migration_safety.blockers import describe_blockers
from migration_safety.timeouts import behind_transaction_pooler, timeouts_per_transaction

# The key of django-pg-migration-tools' "one migrate at a time" advisory lock (its lock's name,
# hashed as it does): the transaction-level lock taken behind a pooler is the same lock,
# so a migrate behind the pooler and one connected directly exclude each other too.
MIGRATE_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"migrate-with-timeouts").digest()[:8], "little", signed=True
)
# SQLSTATE lock_not_available: a statement gave up after lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"

# The library's options, which mean nothing to Django's own migrate (other databases).
TIMEOUT_OPTIONS = (
    "lock_timeout_in_ms",
    "statement_timeout_in_ms",
    "lock_timeout_max_retries",
    "lock_timeout_retry_exp",
    "lock_timeout_retry_min_wait_in_ms",
    "lock_timeout_retry_max_wait_in_ms",
    "retry_callback_path",
)
# The library's options whose default this project sets, with the setting that holds it and
# what the option does: the one source of both the default and the help's "(default: ...)".
# (The library's own help states its defaults, 0 retries and a 3 s wait, not ours.)
PROJECT_DEFAULTS = {
    "lock_timeout_in_ms": ("MIGRATION_LOCK_TIMEOUT_MS", "lock_timeout of each migration, in ms"),
    "statement_timeout_in_ms": (
        "MIGRATION_STATEMENT_TIMEOUT_MS",
        "statement_timeout of each migration, in ms",
    ),
    "lock_timeout_max_retries": (
        "MIGRATION_LOCK_RETRIES",
        "Retries of a migration after a lock timeout, with exponential backoff; 0 fails at once",
    ),
    "lock_timeout_retry_min_wait_in_ms": (
        "MIGRATION_RETRY_MIN_WAIT_MS",
        "Shortest wait before a retry, in ms",
    ),
    "lock_timeout_retry_max_wait_in_ms": (
        "MIGRATION_RETRY_MAX_WAIT_MS",
        "Longest wait before a retry, in ms",
    ),
}


class ProjectDefaults:
    """The command's parser, as the library's ``add_arguments`` sees it: an option of
    :data:`PROJECT_DEFAULTS` is added with the setting's value as its default and a help that
    says so; everything else goes through unchanged."""

    def __init__(self, parser: CommandParser) -> None:
        self.parser = parser

    def add_argument(self, *args: Any, **kwargs: Any) -> Action:
        if kwargs.get("dest") in PROJECT_DEFAULTS:
            setting, what = PROJECT_DEFAULTS[kwargs["dest"]]
            kwargs["default"] = getattr(settings, setting)
            kwargs["help"] = f"{what} (default: {setting}, {kwargs['default']:,})."
        return self.parser.add_argument(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


class Command(MigrateWithTimeoutsCommand):
    help = DjangoMigrateCommand.help + (
        " On PostgreSQL, with bounded lock waits: MIGRATION_LOCK_TIMEOUT_MS "
        f"({settings.MIGRATION_LOCK_TIMEOUT_MS}), retried MIGRATION_LOCK_RETRIES "
        f"({settings.MIGRATION_LOCK_RETRIES}) times with backoff, naming the blocking sessions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(ProjectDefaults(parser))
        parser.set_defaults(retry_callback_path="migration_safety.blockers.log_lock_timeout")

    def handle(self, *args, **options) -> None:
        database = known_database(options["database"])
        if connections[database].vendor != "postgresql":
            for name in TIMEOUT_OPTIONS:
                options.pop(name, None)
            return DjangoMigrateCommand.handle(self, *args, **options)
        try:
            # The library's own check of its options, before anything runs: its errors are
            # about the settings (MIGRATION_*), never about a migration.
            MigrationTimeoutOptions.from_dictionary(dict(options)).validate()
        except ValueError as exc:
            raise bad_settings(exc) from exc
        lock_timeout, retries = options["lock_timeout_in_ms"], options["lock_timeout_max_retries"]
        try:
            if behind_transaction_pooler():
                self.migrate_per_transaction(args, options)
            else:
                super().handle(*args, **options)
        except (TimeoutWasNotPositive, RedundantLockTimeout) as exc:
            # Checked only as the timeouts are applied, before the first migration's statements.
            raise bad_settings(exc) from exc
        except LockAlreadyAcquired as exc:
            raise CommandError(
                f"Another manage.py migrate is running on database {database!r}; wait for it."
            ) from exc
        except MaximumRetriesReached as exc:
            raise CommandError(
                f"A migration could not take its lock within {lock_timeout} ms, {retries + 1} "
                "times. An atomic migration was rolled back; a non-atomic one keeps the steps "
                "it had committed and is written to be re-run from the top.\n"
                f"{describe_blockers(using=database)}"
            ) from exc
        finally:
            self.end_session(database)

    def migrate_per_transaction(self, args: tuple, options: dict) -> None:
        """The library's ``handle`` (its options, retries and callback), with nothing left on
        the session: one transaction-level lock for the run, timeouts per transaction."""
        timeout_options = MigrationTimeoutOptions.from_dictionary(options)
        retry_strategy = MigrateRetryStrategy(timeout_options=timeout_options)
        stdout = options.pop("stdout", io.StringIO())  # as the library passes it to the callback
        start_time = time.time()
        database = options["database"]
        connection = connections[database]
        with one_migrate_at_a_time(database):
            while retry_strategy.can_migrate():
                try:
                    with timeouts_per_transaction(
                        connection,
                        lock_timeout_ms=options_ms(timeout_options.lock_timeout),
                        statement_timeout_ms=options_ms(timeout_options.statement_timeout),
                    ):
                        try:
                            DjangoMigrateCommand.handle(self, *args, **options)
                        except OperationalError as exc:
                            if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                                raise DBLockTimeoutError(str(exc)) from exc
                            raise
                    return
                except DBLockTimeoutError as exc:
                    retry_strategy.increment_retry_count()
                    retry_strategy.wait()
                    retry_strategy.attempt_callback(exc, stdout, start_time, database)
        raise MaximumRetriesReached(f"There were {retry_strategy.retries} lock timeouts.")

    def end_session(self, database: str) -> None:
        """Close the connection, which releases the library's "one migrate at a time" lock.

        That advisory lock belongs to the session and the library offers no call to release
        it: kept, it would refuse every other migrate for as long as a long-lived process (a
        test run, a rehearsal) keeps its connection. Django reconnects when next asked. Inside
        a transaction (a caller's atomic block) the connection is left alone: closing it
        would end the caller's transaction.
        """
        connection = connections[database]
        if not connection.in_atomic_block:
            connection.close()


def bad_settings(exc: Exception) -> CommandError:
    """The one-line answer to timeout settings the library refuses."""
    return CommandError(
        f"Bad migration timeout settings ({exc or type(exc).__name__}): "
        "MIGRATION_LOCK_TIMEOUT_MS and MIGRATION_STATEMENT_TIMEOUT_MS must be positive, the lock "
        "timeout the smaller; MIGRATION_RETRY_MIN_WAIT_MS at most MIGRATION_RETRY_MAX_WAIT_MS."
    )


def options_ms(value) -> int:
    """A library timeout option (a timedelta, or None for "no limit") in ms; 0 is no limit."""
    return 0 if value is None else int(value.total_seconds() * 1000)


@contextmanager
def one_migrate_at_a_time(database: str) -> Iterator[None]:
    """Hold the "one migrate at a time" lock for the block, as a transaction-level advisory
    lock in a transaction of its own, on a connection of its own.

    A pooler keeps that transaction on one server connection until it ends, and ends it (the
    server connection is closed) if this process disconnects or dies: the lock cannot be
    stranded. The transaction takes no snapshot and writes nothing, so it holds back no vacuum.
    Raises the library's :class:`LockAlreadyAcquired` if another migrate holds it.
    """
    holder = connections.create_connection(database)
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [MIGRATE_LOCK_KEY])
            if not cursor.fetchone()[0]:
                raise LockAlreadyAcquired("Another manage.py migrate is running.")
        yield
    finally:
        if holder.connection is not None and holder.is_usable():
            holder.rollback()
        holder.close()
