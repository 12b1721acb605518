"""DATABASE_URL read into Django's DATABASES entry; a URL it cannot use named without its
password, with the forms that work."""

from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

# The databases the project is built and tested for (SQLite embedded, PostgreSQL in production).
ENGINES = ("django.db.backends.sqlite3", "django.db.backends.postgresql")
SUPPORTED = "sqlite:///<path> or postgres://user:password@host:port/name"


def without_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def database_from_url(url: str, *, conn_max_age: int) -> dict:
    """The DATABASES entry for ``url``, or ImproperlyConfigured naming the URL and what works."""
    cause = None
    try:
        database = dj_database_url.parse(url, conn_max_age=conn_max_age)
    except dj_database_url.UnknownSchemeError as exc:
        database, cause = {}, exc
    except ValueError as exc:  # a port that is not a number, characters that need %-quoting
        problem = "it is not a valid URL (is the port a number? are special characters %-quoted?)"
        raise ImproperlyConfigured(
            f"DATABASE_URL {without_password(url)!r} cannot be used: {problem}. Use {SUPPORTED}."
        ) from exc
    if database.get("ENGINE") not in ENGINES:
        scheme = url.split("://", 1)[0]
        raise ImproperlyConfigured(
            f"DATABASE_URL {without_password(url)!r} cannot be used: the scheme {scheme!r} is "
            f"not a database this project runs on. Use {SUPPORTED}."
        ) from cause
    return database
