"""Settings for taskproj, read from the environment (see .env.example).

SQLite is the embedded default; a ``postgres://`` DATABASE_URL selects PostgreSQL.
"""

import os
from importlib.util import find_spec
from pathlib import Path

import django
from django.core.exceptions import ImproperlyConfigured

from taskproj.database_url import database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent

# Only good for local development: the project refuses to start with it when DEBUG is off.
DEVELOPMENT_SECRET_KEY = "django-insecure-taskproj-development-key-do-not-use-in-production"


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable ("1", "true", "yes", "on" are true)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated environment variable."""
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    """Read an integer environment variable, failing with the variable's name if it is not one."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from exc


def env_float(name: str, default: float) -> float:
    """Read a number from the environment, failing with the variable's name if it is not one."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from exc


DEBUG = env_bool("DEBUG", default=True)
SECRET_KEY = os.environ.get("SECRET_KEY") or DEVELOPMENT_SECRET_KEY
if not DEBUG and SECRET_KEY == DEVELOPMENT_SECRET_KEY:
    raise ImproperlyConfigured(
        "DEBUG is off but SECRET_KEY is the development key. Set SECRET_KEY to a long random "
        "value (python -c 'import secrets; print(secrets.token_urlsafe(50))') or set DEBUG=true."
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Django's task framework: Django 6 ships it (django.tasks, no app to install); on Django 5.2 it
# is the django-tasks backport, an app of its own, installed with it (pyproject.toml). The same
# test as django-tasks-db's and backfills.workers': django.tasks first, wherever both exist.
if find_spec("django.tasks") is not None:
    TASK_FRAMEWORK_APPS = []
elif find_spec("django_tasks") is not None:
    TASK_FRAMEWORK_APPS = ["django_tasks"]
else:
    raise ImproperlyConfigured(
        f"Django {django.get_version()} has no django.tasks and the django-tasks backport is not "
        "installed: install taskproj with its django52 extra (pip install -e '.[django52]'), or "
        "Django 6 on Python 3.12+."
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # PostgreSQL's indexes and extensions in migrations (the admin's trigram search index).
    "django.contrib.postgres",
    # Django's task framework with its database backend: backfill NAME --background, db_worker.
    *TASK_FRAMEWORK_APPS,
    "django_tasks_db",
    # Schema changes without long locks: migrate, safe operations, lint, rehearse.
    "migration_safety",
    # Batched, resumable backfills of any registered column (never imports tasks).
    "backfills",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "taskproj.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "taskproj.wsgi.application"
ASGI_APPLICATION = "taskproj.asgi.application"

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers wait for
            # `timeout` seconds instead of failing with "database is locked" mid-transaction.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            # WAL lets readers (the admin) run while a seed or backfill batch writes.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

# How connections reach PostgreSQL: "session" (directly, or a pooler in session mode) or
# "transaction" (PgBouncer in transaction mode: consecutive transactions of one Django connection
# may run on different server connections, and a server connection serves other clients between
# them). Django cannot detect a pooler; this says so. In transaction mode nothing this project
# sets or locks outlives its transaction, and server-side cursors are off (docs/zero-downtime.md,
# "Behind PgBouncer").
DATABASE_POOLING = os.environ.get("DATABASE_POOLING", "").strip().lower() or "session"
if DATABASE_POOLING not in {"session", "transaction"}:
    raise ImproperlyConfigured(
        f"DATABASE_POOLING must be 'transaction' (behind PgBouncer in transaction mode) or "
        f"'session' (the default), got {DATABASE_POOLING!r}."
    )
if DATABASE_POOLING == "transaction":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # No prepared statements: a pooler before PgBouncer 1.21 cannot route them.
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

FIXTURE_DIRS = [BASE_DIR / "fixtures"]

# Production hardening: on whenever DEBUG is off, each overridable from the environment.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
if env_bool("SECURE_PROXY_SSL_HEADER", default=False):
    # Only behind a proxy that sets this header itself; otherwise clients could spoof HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}

# Bounded lock waits for `manage.py migrate` on PostgreSQL (migration_safety/management/commands/).
# A DDL statement waiting for its lock makes every later query on the table queue behind it:
# give up after MIGRATION_LOCK_TIMEOUT_MS, wait, retry MIGRATION_LOCK_RETRIES times.
MIGRATION_LOCK_TIMEOUT_MS = env_int("MIGRATION_LOCK_TIMEOUT_MS", 2_000)
# For DDL that must be instant; statements meant to scan (VALIDATE CONSTRAINT, CREATE INDEX
# CONCURRENTLY, backfills) lift it themselves.
MIGRATION_STATEMENT_TIMEOUT_MS = env_int("MIGRATION_STATEMENT_TIMEOUT_MS", 10_000)
MIGRATION_LOCK_RETRIES = env_int("MIGRATION_LOCK_RETRIES", 5)
MIGRATION_RETRY_MIN_WAIT_MS = env_int("MIGRATION_RETRY_MIN_WAIT_MS", 1_000)
MIGRATION_RETRY_MAX_WAIT_MS = env_int("MIGRATION_RETRY_MAX_WAIT_MS", 10_000)

# Background work on Django's task framework, stored in this database; run workers with
# `manage.py db_worker --queue-name backfill` (docs/zero-downtime.md).
TASKS = {
    "default": {
        "BACKEND": os.environ.get("TASKS_BACKEND", "django_tasks_db.DatabaseBackend"),
        "QUEUES": ["default", "backfill"],
    }
}

# Operating backfills (backfills/leases.py, backfills/health.py).
# A process working on a run renews its lease with every batch; another process may take the
# run over once the lease has expired. A run whose lease expired is shown as stalled.
BACKFILL_LEASE_SECONDS = env_float("BACKFILL_LEASE_SECONDS", 30.0)
# A worker task processes a run for this long, then hands over to the next task.
BACKFILL_SLICE_SECONDS = env_float("BACKFILL_SLICE_SECONDS", 60.0)
# Runs on workers: the first batch size (then adaptive), and a pause between batches.
BACKFILL_WORKER_BATCH_SIZE = env_int("BACKFILL_WORKER_BATCH_SIZE", 3_000)
BACKFILL_WORKER_SLEEP_SECONDS = env_float("BACKFILL_WORKER_SLEEP_SECONDS", 0.0)
# Batches aim to hold their row locks (UPDATE to commit) this long (0: fixed --batch-size);
# 60 ms keeps the p99 under 100 ms (docs/benchmarks.md).
BACKFILL_TARGET_BATCH_MS = env_float("BACKFILL_TARGET_BATCH_MS", 60.0)
# Connections that fill a run in parallel, each walking its own lane of keys (PostgreSQL only):
# the default of backfill --workers and of the admin's Start. One is the gentlest;
# two fill 1.5-1.7x faster on 2 cores, with twice the load (docs/benchmarks.md).
BACKFILL_WORKERS = env_int("BACKFILL_WORKERS", 1)
# Health throttling: back off this long when a signal trips.
BACKFILL_BACKOFF_SECONDS = env_float("BACKFILL_BACKOFF_SECONDS", 5.0)
BACKFILL_MAX_REPLICATION_LAG_SECONDS = env_float("BACKFILL_MAX_REPLICATION_LAG_SECONDS", 10.0)
# Replicas (docs/zero-downtime.md, "Replicas"): standbys whose lag is not waited for, by
# application_name (a delayed standby never catches up); and whether to run when the role
# cannot read the standbys' lag (no pg_read_all_stats) instead of refusing to start.
BACKFILL_IGNORE_STANDBYS = env_list("BACKFILL_IGNORE_STANDBYS", [])
BACKFILL_ALLOW_UNMEASURED_LAG = env_bool("BACKFILL_ALLOW_UNMEASURED_LAG", default=False)
# A backfill command backing off for this long without a batch stops, its checkpoint kept
# (backfill --max-throttle; 0: wait as long as it takes).
BACKFILL_MAX_THROTTLE_SECONDS = env_float("BACKFILL_MAX_THROTTLE_SECONDS", 600.0)
# Dotted path of a callable(database_alias) -> reason to wait, or None; empty for none.
BACKFILL_HEALTH_CHECK = os.environ.get("BACKFILL_HEALTH_CHECK", "")
