"""The base of the repository's management commands: ``--database`` and ``--no-progress``, the
checks of numeric options and of the tables a command needs, and the progress bar."""

import datetime
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models
from django.utils import timezone
from tqdm import tqdm

# PostgreSQL's SQLSTATE for "permission denied" (Appendix A of its manual).
INSUFFICIENT_PRIVILEGE = "42501"


def known_database(alias: str) -> str:
    """Return ``alias`` if settings.DATABASES defines it, else fail saying which exist (for
    commands that cannot derive from :class:`CheckedCommand`)."""
    if alias not in connections:
        known = ", ".join(sorted(connections))
        raise CommandError(
            f"Unknown database {alias!r}. Use one of: {known} (see DATABASES in settings)."
        )
    return alias


class CheckedCommand(BaseCommand):
    """A command whose bad input always ends as ``CommandError`` (exit code 1).

    Options are parsed as text and checked in ``handle`` so that bad input ends with a message
    that says what to do, from the command line and from ``call_command`` alike; argparse's own
    errors would exit with 2 instead.
    """

    def execute(self, *args: Any, **options: Any) -> Any:
        # The raw stream behind self.stderr (a terminal, or what call_command was given): the
        # progress bar writes to it directly, not through OutputWrapper's line endings.
        self.progress_stream = options.get("stderr") or sys.stderr
        try:
            return super().execute(*args, **options)
        except DatabaseError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                raise
            raise CommandError(
                f"{exc}: the database role this command connects as lacks a privilege it needs. "
                'Grant it (docs/zero-downtime.md, "Database privileges", lists each process\'s).'
            ) from exc

    def add_database_argument(self, parser: CommandParser) -> None:
        """Add ``--database``, checked by :meth:`database_alias`."""
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help=f'Database alias to use (default: "{DEFAULT_DB_ALIAS}").',
        )

    def add_progress_argument(self, parser: CommandParser) -> None:
        """Add ``--no-progress`` to turn the progress bar off (for logs)."""
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="Do not show a progress bar (it is shown only on a terminal anyway).",
        )

    def database_alias(self, alias: str) -> str:
        """Return ``alias`` if settings.DATABASES defines it, else fail saying which exist."""
        return known_database(alias)

    def require_tables(self, using: str, *needed: type[models.Model], hint: str = "") -> None:
        """Fail with what to run if the table of any of the ``needed`` models is missing."""
        connection = connections[using]
        with connection.cursor() as cursor:
            tables = set(connection.introspection.table_names(cursor))
        missing = [model._meta.db_table for model in needed if model._meta.db_table not in tables]
        if missing:
            raise CommandError(
                f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist in "
                f"database {using!r}. " + (hint or f"Run: manage.py migrate --database {using}")
            )

    def int_option(
        self,
        name: str,
        value: Any,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """Parse ``value`` as an integer within [minimum, maximum] or fail naming ``--name``."""
        flag = f"--{name.replace('_', '-')}"
        try:
            number = int(str(value).strip())
        except ValueError:
            raise CommandError(f"{flag} must be a whole number, got {value!r}.") from None
        if minimum is not None and number < minimum:
            raise CommandError(f"{flag} must be at least {minimum:,}, got {number:,}.")
        if maximum is not None and number > maximum:
            raise CommandError(f"{flag} must be at most {maximum:,}, got {number:,}.")
        return number

    def float_option(self, name: str, value: Any, *, minimum: float | None = None) -> float:
        """Parse ``value`` as a number not below ``minimum`` or fail naming ``--name``."""
        flag = f"--{name.replace('_', '-')}"
        try:
            number = float(str(value).strip())
        except ValueError:
            raise CommandError(f"{flag} must be a number, got {value!r}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise CommandError(f"{flag} must be a finite number, got {value!r}.")
        if minimum is not None and number < minimum:
            raise CommandError(f"{flag} must be at least {minimum:g}, got {number:g}.")
        return number

    def date_option(self, name: str, value: str | None) -> datetime.date:
        """Parse ``value`` as YYYY-MM-DD (today, in the current time zone, if None) or fail
        naming ``--name``."""
        if value is None:
            return timezone.localdate()
        try:
            return datetime.date.fromisoformat(str(value).strip())
        except ValueError:
            raise CommandError(f"--{name} must be a date as YYYY-MM-DD, got {value!r}.") from None

    def progress_bar(self, *, total: int, unit: str, enabled: bool) -> tqdm:
        """A tqdm bar on stderr (rate and ETA), shown only when enabled and stderr is a terminal."""
        stream = getattr(self, "progress_stream", sys.stderr)
        show = enabled and hasattr(stream, "isatty") and stream.isatty()
        return tqdm(total=total, unit=unit, file=stream, disable=not show, smoothing=0.1)
