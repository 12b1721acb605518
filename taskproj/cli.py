"""manage.py's entry point: Django's own, except that a database that cannot be reached and
settings that cannot be read end in one line and exit code 1, as a ``CommandError`` would.

Django prints a traceback for both, for every command (its own ``migrate``, ``loaddata`` and
``showmigrations`` included), because neither is a ``CommandError`` and both happen before or
beneath the command. Only failures to *connect* are turned into a line: an error on a connection
that was open is the command's to report, and keeps its traceback if the command lets it through.
"""

import os
import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.management import execute_from_command_line
from django.core.management.color import color_style
from django.db import OperationalError

from commandline.databases import alias_that_never_connected, unreachable


def main(argv: list[str]) -> None:
    """Run the management command ``argv`` names."""
    try:
        load_settings()
        execute_from_command_line(argv)
    except OperationalError as exc:
        alias = alias_that_never_connected()
        if alias is None:
            raise
        fail(unreachable(alias, exc))


def load_settings() -> None:
    """Read the settings module now, so that a bad environment variable fails in one line."""
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 (reading a setting loads the module)
    except ImproperlyConfigured as exc:
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "")
        fail(f"{exc} (settings: {module}; see .env.example)")


def fail(message: str) -> None:
    """End the process as Django ends a command that raised ``CommandError``."""
    sys.stderr.write(color_style().ERROR(f"CommandError: {message}") + "\n")
    sys.exit(1)
