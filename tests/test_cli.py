"""manage.py with a database it cannot use: one line naming the URL (never its password) and
what to check, exit code 1, never a traceback — for the project's commands and Django's own."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-pw"


def manage(*args: str, database_url: str) -> subprocess.CompletedProcess:
    """Run ``manage.py`` as a user would, with ``DATABASE_URL`` set."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "taskproj.settings",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: "), result.stderr
    assert PASSWORD not in result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        pytest.param(
            f"postgres://root:{PASSWORD}@no-such-host.invalid:5432/tasks",
            ["postgresql://root@no-such-host.invalid:5432/tasks", "no-such-host.invalid", "host"],
            id="typo-in-host",
        ),
        pytest.param(
            f"postgres://root:{PASSWORD}@127.0.0.1:{closed_port()}/tasks",
            ["Connection refused", "the server is running"],
            id="closed-port",
        ),
        pytest.param(
            f"mysqlx://root:{PASSWORD}@127.0.0.1/tasks",
            ["'mysqlx://root:***@127.0.0.1/tasks'", "scheme 'mysqlx'", "postgres://"],
            id="unknown-scheme",
        ),
        pytest.param(
            f"mysql://root:{PASSWORD}@127.0.0.1/tasks",
            ["scheme 'mysql' is not a database this project runs on"],
            id="scheme-of-a-database-the-project-does-not-run-on",
        ),
        pytest.param(
            f"postgres://root:{PASSWORD}@127.0.0.1:port/tasks",
            ["not a valid URL", "port"],
            id="port-that-is-not-a-number",
        ),
        pytest.param(
            "sqlite:////no/such/directory/db.sqlite3",
            ["sqlite:////no/such/directory/db.sqlite3", "directory exists"],
            id="sqlite-file-in-a-missing-directory",
        ),
    ],
)
def test_a_database_that_cannot_be_used_is_named_in_one_line(database_url, expected):
    result = manage("migrate", database_url=database_url)

    assert_one_line_error(result, *expected)


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_named_in_one_line():
    from django.conf import settings

    server = settings.DATABASES["default"]
    url = f"postgres://{server['USER']}:{PASSWORD}@{server['HOST']}:{server['PORT']}/no_such_db"

    result = manage("showmigrations", database_url=url)

    assert_one_line_error(result, 'database "no_such_db" does not exist', "database name")


@pytest.mark.parametrize(
    "command",
    [
        ["loaddata", "roles"],
        ["showmigrations"],
        ["seed", "--tasks", "10"],
        ["backfill", "--list"],
        ["backfill_priority", "--status"],
        ["task_stats"],
        ["rehearse", "--rollout", "priority"],
    ],
    ids=" ".join,
)
def test_every_command_says_so_in_one_line_when_the_server_is_down(command):
    url = f"postgres://root:{PASSWORD}@127.0.0.1:{closed_port()}/tasks"

    result = manage(*command, database_url=url)

    assert_one_line_error(result, "at postgresql://root@127.0.0.1:", "Connection refused")


def test_a_bad_setting_from_the_environment_is_one_line_too():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "CONN_MAX_AGE": "forever"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert_one_line_error(result, "CONN_MAX_AGE must be an integer, got 'forever'")
