"""`manage.py migrate` on PostgreSQL: lock waits are bounded, retried, and blockers are named."""

import logging
import threading
import time

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from tasks.backfill import column_state
from tasks.models import Task
from tests.test_backfill_postgres import conninfo

pytestmark = pytest.mark.postgres

FAST_RETRIES = {
    "MIGRATION_LOCK_TIMEOUT_MS": 100,
    "MIGRATION_STATEMENT_TIMEOUT_MS": 5_000,
    "MIGRATION_LOCK_RETRIES": 2,
    "MIGRATION_RETRY_MIN_WAIT_MS": 50,
    "MIGRATION_RETRY_MAX_WAIT_MS": 100,
}


@pytest.fixture
def at_initial(transactional_db, settings):
    """tasks at 0001, fast lock retries; fully migrated again afterwards."""
    call_command("migrate", "tasks", "0001", verbosity=0)
    for name, value in FAST_RETRIES.items():
        setattr(settings, name, value)
    yield
    settings.MIGRATION_LOCK_TIMEOUT_MS = 2_000
    settings.MIGRATION_STATEMENT_TIMEOUT_MS = 10_000
    call_command("migrate", "tasks", verbosity=0)


def open_transaction_reading_tasks() -> psycopg.Connection:
    """A session idle in a transaction that has read tasks_task (it holds ACCESS SHARE)."""
    blocker = psycopg.connect(conninfo())
    blocker.execute("SELECT count(*) FROM tasks_task")
    return blocker


def applied(name: str) -> bool:
    return MigrationRecorder(connection).migration_qs.filter(app="tasks", name=name).exists()


def test_a_blocked_migration_gives_up_names_the_blocker_and_applies_nothing(at_initial):
    blocker = open_transaction_reading_tasks()
    pid = blocker.info.backend_pid
    try:
        started = time.monotonic()
        with pytest.raises(CommandError) as error:
            call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)
        elapsed = time.monotonic() - started

        message = str(error.value)
        assert f"pid {pid} (idle in transaction" in message
        assert "tasks_task" in message and "SELECT count(*) FROM tasks_task" in message
        assert "pg_terminate_backend" in message
        assert elapsed < 5  # 3 attempts of 100 ms plus short waits, not an endless queue
        assert column_state(Task, "priority", using="default") == "missing"
        assert not applied("0002_priority_expand")
    finally:
        blocker.close()


def test_a_blocked_migration_is_retried_and_goes_through_once_the_lock_is_free(
    at_initial, settings, caplog
):
    settings.MIGRATION_LOCK_RETRIES = 10
    blocker = open_transaction_reading_tasks()
    pid = blocker.info.backend_pid
    release = threading.Timer(0.5, blocker.rollback)
    release.start()
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.migrate"):
            call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)
    finally:
        release.join()
        blocker.close()

    assert applied("0002_priority_expand")
    assert column_state(Task, "priority", using="default") == "nullable"
    assert any(f"pid {pid}" in record.getMessage() for record in caplog.records)


def test_ddl_runs_under_the_statement_timeout_but_scans_are_not_cut_off(at_initial, settings):
    # given
    settings.MIGRATION_STATEMENT_TIMEOUT_MS = 4_000
    seen: list[tuple[str, str]] = []

    def record(execute, sql, params, many, context):
        if sql.startswith(("ALTER TABLE", "CREATE INDEX")):
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('statement_timeout')")
                seen.append((" ".join(sql.split()[:6]), cursor.fetchone()[0]))
        return execute(sql, params, many, context)

    # when: expand, backfill, contract, index
    with connection.execute_wrapper(record):
        call_command("migrate", "tasks", "0005_priority_index", verbosity=0)

    # then: instant DDL is bounded; VALIDATE and CREATE INDEX CONCURRENTLY are not
    timeouts = dict(seen)
    scans = {sql: t for sql, t in seen if "VALIDATE" in sql or "CONCURRENTLY" in sql}
    others = {sql: t for sql, t in seen if sql not in scans}
    assert len(scans) == 2 and set(scans.values()) == {"0"}
    assert others and set(others.values()) == {"4s"}
    assert any("ADD COLUMN" in sql for sql in timeouts)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        assert cursor.fetchone()[0] == "0"  # restored after migrate
