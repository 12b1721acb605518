"""A database that cannot be reached, said in one line: where it is (never the password) and
what to check. Used by the commands before their first query and by manage.py for Django's own."""

from django.core.management.base import CommandError
from django.db import OperationalError, connections


def is_sqlite(settings_dict: dict) -> bool:
    """Whether a DATABASES entry is an SQLite file."""
    return settings_dict.get("ENGINE", "").endswith("sqlite3")


def describe(settings_dict: dict) -> str:
    """The database a DATABASES entry points at, as a URL without a password."""
    name = settings_dict.get("NAME") or ""
    if is_sqlite(settings_dict):
        return f"sqlite:///{name}"
    user = settings_dict.get("USER") or ""
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT")
    scheme = settings_dict.get("ENGINE", "").rsplit(".", 1)[-1]
    return f"{scheme}://{user + '@' if user else ''}{host}{f':{port}' if port else ''}/{name}"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, ending with a full stop."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if text.endswith((".", "?", "!")) else text + "."


def unreachable(alias: str, exc: BaseException) -> str:
    """The message for a failed connection to database ``alias``."""
    settings_dict = connections[alias].settings_dict
    check = (
        "Check DATABASE_URL's path and that its directory exists and is writable."
        if is_sqlite(settings_dict)
        else "Check DATABASE_URL (host, port, database name, user and password) and that the "
        "server is running and accepts connections."
    )
    return (
        f"Cannot connect to database {alias!r} at {describe(settings_dict)}: {first_line(exc)} "
        f"{check}"
    )


def alias_that_never_connected() -> str | None:
    """The database whose connection was attempted and never opened, if any: an error on it
    is a failure to connect, not one of a query."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            return connection.alias
    return None


def connected(alias: str) -> str:
    """Open database ``alias`` now (before any output), or fail in one line saying why."""
    try:
        connections[alias].ensure_connection()
    except OperationalError as exc:
        raise CommandError(unreachable(alias, exc)) from exc
    return alias
