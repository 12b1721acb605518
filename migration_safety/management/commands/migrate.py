"""manage.py migrate, made safe for live tables on PostgreSQL.

Django's own command, run through django-pg-migration-tools' ``migrate_with_timeouts`` on
PostgreSQL: every migration runs under a short ``lock_timeout`` and a ``statement_timeout`` for
DDL that must be instant. A migration whose lock is not granted in time fails — an atomic one
is rolled back, a non-atomic one keeps what it had committed and is written to be re-run — and
is retried after an exponential backoff a bounded number of times, logging the sessions holding
locks each time; then the command fails with them and what to do. Settings: MIGRATION_*.
"""

from argparse import Action
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    Command as MigrateWithTimeoutsCommand,
)
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    LockAlreadyAcquired,
    MaximumRetriesReached,
    MigrationTimeoutOptions,
)
from django_pg_migration_tools.timeouts import RedundantLockTimeout, TimeoutWasNotPositive

from commandline.base import known_database
from migration_safety.blockers import describe_blockers

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
