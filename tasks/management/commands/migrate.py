"""manage.py migrate, made safe for live tables on PostgreSQL.

Django's own command, run through django-pg-migration-tools' ``migrate_with_timeouts`` on
PostgreSQL: every migration runs under a short ``lock_timeout`` and a ``statement_timeout`` for
DDL that must be instant. A migration whose lock is not granted in time is rolled back (an
atomic one entirely; our non-atomic ones are written to be re-run), waits with exponential
backoff and is retried a bounded number of times, naming the blocking sessions each time; then
the command fails with them and what to do. Settings (taskproj/settings.py): MIGRATION_*.
"""

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    Command as MigrateWithTimeoutsCommand,
)
from django_pg_migration_tools.management.commands.migrate_with_timeouts import (
    MaximumRetriesReached,
)

from tasks.migration_safety import describe_blockers


class Command(MigrateWithTimeoutsCommand):
    help = DjangoMigrateCommand.help + (
        " On PostgreSQL, with bounded lock waits: MIGRATION_LOCK_TIMEOUT_MS (default 2000), "
        "retried MIGRATION_LOCK_RETRIES times with backoff, naming the blocking sessions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(
            lock_timeout_in_ms=settings.MIGRATION_LOCK_TIMEOUT_MS,
            statement_timeout_in_ms=settings.MIGRATION_STATEMENT_TIMEOUT_MS,
            lock_timeout_max_retries=settings.MIGRATION_LOCK_RETRIES,
            lock_timeout_retry_min_wait_in_ms=settings.MIGRATION_RETRY_MIN_WAIT_MS,
            lock_timeout_retry_max_wait_in_ms=settings.MIGRATION_RETRY_MAX_WAIT_MS,
            retry_callback_path="tasks.migration_safety.log_lock_timeout",
        )

    def handle(self, *args, **options) -> None:
        database = options["database"]
        if connections[database].vendor != "postgresql":
            for name in (
                "lock_timeout_in_ms",
                "statement_timeout_in_ms",
                "lock_timeout_max_retries",
                "lock_timeout_retry_exp",
                "lock_timeout_retry_min_wait_in_ms",
                "lock_timeout_retry_max_wait_in_ms",
                "retry_callback_path",
            ):
                options.pop(name, None)
            return DjangoMigrateCommand.handle(self, *args, **options)
        try:
            return super().handle(*args, **options)
        except MaximumRetriesReached as exc:
            raise CommandError(
                f"A migration could not take its lock within "
                f"{options.get('lock_timeout_in_ms') or settings.MIGRATION_LOCK_TIMEOUT_MS} ms "
                f"after {settings.MIGRATION_LOCK_RETRIES} retries; nothing of it was applied "
                f"(non-atomic migrations are safe to re-run).\n"
                f"{describe_blockers(using=database)}"
            ) from exc
