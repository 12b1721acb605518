import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskproj.settings import env_bool, env_list

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "k3y-for-tests-" + "x9Q2vL7pR4tW8zN1mB6cF3hJ5kD0sG" * 2,
    "ALLOWED_HOSTS": "tasks.example.com",
}


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` after django.setup() in a fresh interpreter with ``env`` on top of ours."""
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "taskproj.settings", **env},
        capture_output=True,
        text=True,
    )


def test_database_defaults_to_sqlite_at_the_project_root():
    result = run_django(
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['ENGINE'], d['NAME'])"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", str(ROOT / "db.sqlite3")]


def test_a_postgres_database_url_selects_postgresql():
    result = run_django(
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(d['ENGINE'], d['NAME'], d['HOST'], d['PORT'])",
        DATABASE_URL="postgres://someone@db.internal:6543/tasks",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "tasks",
        "db.internal",
        "6543",
    ]


def test_transaction_pooling_turns_server_side_cursors_and_prepared_statements_off():
    result = run_django(
        "from django.conf import settings; d = settings.DATABASES['default']; "
        "print(settings.DATABASE_POOLING, d['DISABLE_SERVER_SIDE_CURSORS'], "
        "d['OPTIONS']['prepare_threshold'])",
        DATABASE_URL="postgres://someone@pgbouncer.internal:6432/tasks",
        DATABASE_POOLING="transaction",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["transaction", "True", "None"]


def test_an_unknown_pooling_mode_is_refused_with_the_ones_there_are():
    result = run_django("pass", DATABASE_POOLING="statement")

    assert result.returncode != 0
    assert "DATABASE_POOLING must be 'transaction'" in result.stderr


def test_allowed_hosts_and_debug_come_from_the_environment():
    result = run_django(
        "from django.conf import settings; print(settings.DEBUG, settings.ALLOWED_HOSTS)",
        **PRODUCTION_ENV,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False ['tasks.example.com']"


def test_refuses_to_start_with_debug_off_and_the_development_secret_key():
    result = run_django("pass", DEBUG="false")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr


@pytest.mark.parametrize(
    "extra",
    [{}, {"SECURE_PROXY_SSL_HEADER": "true", "CSRF_TRUSTED_ORIGINS": "https://tasks.example.com"}],
    ids=["tls-at-the-app", "behind-a-tls-proxy"],
)
def test_check_deploy_passes_with_production_like_variables(extra):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**os.environ, **PRODUCTION_ENV, **extra},
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    # Clean, not quiet: no warning silenced by SILENCED_SYSTEM_CHECKS either.
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_without_a_task_framework_manage_py_says_what_to_install():
    # given: Django 5.2 on a Python where pip did not bring the django-tasks backport (neither
    # django.tasks nor django_tasks can be imported)
    code = (
        "import runpy, sys; sys.modules['django.tasks'] = sys.modules['django_tasks'] = None; "
        "sys.argv = ['manage.py', 'check']; runpy.run_path('manage.py', run_name='__main__')"
    )

    # when
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ, capture_output=True, text=True
    )

    # then: one line naming the extra that brings it, no traceback
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "has no django.tasks and the django-tasks backport is not installed" in result.stderr
    assert "pip install -e '.[django52]'" in result.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("false", False)],
)
def test_env_bool_reads_common_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("SOME_FLAG", raw)

    assert env_bool("SOME_FLAG", default=not expected) is expected


def test_env_bool_and_env_list_fall_back_to_their_defaults(monkeypatch):
    monkeypatch.delenv("SOME_FLAG", raising=False)
    monkeypatch.setenv("SOME_LIST", " a.example , b.example ,")

    assert env_bool("SOME_FLAG", default=True) is True
    assert env_list("SOME_LIST", []) == ["a.example", "b.example"]
