"""`manage.py migrate` on PostgreSQL: lock waits are bounded, retried, and blockers are named."""

import logging
import time

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from backfills.inspection import column_state
from migration_safety import blockers as migration_safety
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
    at_initial, caplog, monkeypatch
):
    # given: a blocker that goes away right after the first lock timeout has been reported
    blocker = open_transaction_reading_tasks()
    pid = blocker.info.backend_pid
    report = migration_safety.log_lock_timeout

    def report_then_release(retry_state) -> None:
        report(retry_state)
        blocker.rollback()

    monkeypatch.setattr(migration_safety, "log_lock_timeout", report_then_release)

    # when
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.migrate"):
            call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)
    finally:
        blocker.close()

    assert applied("0002_priority_expand")
    assert column_state(Task, "priority", using="default") == "nullable"
    assert any(f"pid {pid}" in record.getMessage() for record in caplog.records)


def test_ddl_runs_under_the_statement_timeout_but_scans_are_not_cut_off(at_initial, settings):
    # given
    settings.MIGRATION_STATEMENT_TIMEOUT_MS = 4_000
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        before = cursor.fetchone()[0]
    seen: list[tuple[str, str]] = []

    def record(execute, sql, params, many, context):
        if sql.lstrip().startswith(("ALTER TABLE", "CREATE INDEX")):
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
        assert cursor.fetchone()[0] == before  # restored after migrate


def test_a_second_migrate_at_the_same_time_is_refused_clearly(at_initial):
    # given: another migrate holds the library's advisory lock
    from django_pg_migration_tools.management.commands.migrate_with_timeouts import Locking

    holder = psycopg.connect(conninfo(), autocommit=True)
    lock_id = Locking()._cast_lock_value_to_int("migrate-with-timeouts")
    # (our migrate releases it when done: the test's own session must not be holding it)
    assert holder.execute(f"SELECT pg_try_advisory_lock({lock_id})").fetchone()[0]
    try:
        with pytest.raises(CommandError, match="Another manage.py migrate is running"):
            call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)
    finally:
        holder.close()
    assert not applied("0002_priority_expand")


def test_set_not_null_refuses_to_run_inside_a_transaction(at_initial):
    from django.db import NotSupportedError, transaction
    from django.db.migrations.loader import MigrationLoader

    call_command("migrate", "tasks", "0003", verbosity=0)
    loader = MigrationLoader(connection)
    contract = loader.get_migration("tasks", "0004_priority_contract")
    from_state = loader.project_state(("tasks", "0003_priority_backfill"))
    contract.operations[0].state_forwards("tasks", from_state)
    to_state = from_state.clone()
    contract.operations[2].state_forwards("tasks", to_state)

    with pytest.raises(NotSupportedError, match="atomic = False"):
        with transaction.atomic(), connection.schema_editor(atomic=False) as editor:
            contract.operations[2].database_forwards("tasks", editor, from_state, to_state)


@pytest.mark.parametrize(
    "bad",
    [
        {"MIGRATION_RETRY_MIN_WAIT_MS": 20_000},  # above the maximum wait
        {"MIGRATION_LOCK_TIMEOUT_MS": 0},
        {"MIGRATION_LOCK_TIMEOUT_MS": 20_000, "MIGRATION_STATEMENT_TIMEOUT_MS": 10_000},
    ],
)
def test_bad_timeout_settings_are_one_line_and_apply_nothing(at_initial, bad):
    from django.test import override_settings

    with (
        override_settings(**bad),
        pytest.raises(CommandError, match="Bad migration timeout settings"),
    ):
        call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)

    assert column_state(Task, "priority", using="default") == "missing"


def test_an_error_of_a_migration_is_not_taken_for_a_settings_error(at_initial):
    from backfills.registry import register, unregister
    from tests.helpers import PRIORITY

    # given: the data migration's backfill is no longer registered
    call_command("migrate", "tasks", "0002_priority_expand", verbosity=0)
    unregister(PRIORITY.name)
    try:
        # when / then: its own one-line error, not "Bad migration timeout settings"
        with pytest.raises(
            CommandError, match=r"RunBackfill\('tasks.task.priority'\): No backfill"
        ):
            call_command("migrate", "tasks", "0003_priority_backfill", verbosity=0)
    finally:
        register(PRIORITY)


def contract_operation(index: int):
    """Operation ``index`` of the priority contract, with the states around it at 0003."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection)
    contract = loader.get_migration("tasks", "0004_priority_contract")
    from_state = loader.project_state(("tasks", "0003_priority_backfill"))
    contract.operations[0].state_forwards("tasks", from_state)
    to_state = from_state.clone()
    contract.operations[index].state_forwards("tasks", to_state)
    return contract.operations[index], from_state, to_state


def not_valid_checks() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'tasks_task'::regclass "
            "AND contype = 'c' AND NOT convalidated"
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_failed_set_not_null_leaves_no_check_behind_even_behind_a_reader(at_initial):
    import threading

    from django.db import IntegrityError

    # given: a NULL priority the VALIDATE will find, and a reader that keeps ACCESS SHARE on
    # the table for a while after the VALIDATE (which it does not block) fails
    call_command("migrate", "tasks", "0003", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_task (title, description, status, created_at, updated_at) "
            "VALUES ('null', '', 'todo', now(), now())"
        )
    operation, from_state, to_state = contract_operation(2)
    readers = []

    # when: the reader starts right before the VALIDATE (after the NOT VALID check, which it
    # would block) and keeps its lock for 2.5 s, through the first tries of the cleanup
    with pytest.raises(IntegrityError), connection.schema_editor(atomic=False) as editor:
        execute = editor.execute

        def execute_with_a_reader(sql, params=()):
            if "VALIDATE CONSTRAINT" in str(sql) and not readers:
                readers.append(open_transaction_reading_tasks())
                threading.Timer(2.5, readers[0].close).start()
            return execute(sql, params)

        editor.execute = execute_with_a_reader
        operation.database_forwards("tasks", editor, from_state, to_state)

    # then: the check it added NOT VALID is gone (it would fail every UPDATE of the NULL row),
    # dropped once the reader was done; the column is still nullable
    assert readers, "the VALIDATE ran"
    assert not_valid_checks() == []
    assert column_state(Task, "priority", using="default") == "nullable"


# In the test database only: every ALTER TABLE … VALIDATE CONSTRAINT first waits for advisory
# lock 4242, before it takes its table lock, so a test holding that lock stops the migration
# there, its NOT VALID check committed.
VALIDATE_WAITS_FOR_THE_TEST = """
CREATE FUNCTION test_validate_waits() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_query() LIKE '%VALIDATE CONSTRAINT%' THEN
        PERFORM pg_advisory_xact_lock(4242);
    END IF;
END $$;
CREATE EVENT TRIGGER test_validate_waits ON ddl_command_start WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION test_validate_waits();
"""


def test_a_connection_lost_while_validating_says_what_is_left_and_a_rerun_finishes(at_initial):
    from tests.test_backfill_operations_postgres import manage
    from tests.test_backfill_postgres import wait_until_blocked_by

    # given: the contract's VALIDATE will wait for a lock of this session
    call_command("migrate", "tasks", "0003", verbosity=0)
    holder = psycopg.connect(conninfo(), autocommit=True)
    holder.execute(VALIDATE_WAITS_FOR_THE_TEST)
    holder.execute("SELECT pg_advisory_lock(4242)")
    try:
        process = manage(
            "migrate", "tasks", "0004_priority_contract",
            env={"MIGRATION_LOCK_TIMEOUT_MS": "30000", "MIGRATION_STATEMENT_TIMEOUT_MS": "60000"},
        )  # fmt: skip
        wait_until_blocked_by(holder.info.backend_pid)

        # when: its connection is lost there (the server ends its session)
        holder.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE %s = ANY(pg_blocking_pids(pid))",
            [holder.info.backend_pid],
        )
        out, err = process.communicate(timeout=60)
    finally:
        holder.execute("DROP EVENT TRIGGER test_validate_waits")
        holder.execute("DROP FUNCTION test_validate_waits()")
        holder.close()

    # then: one line that says what the table is left with and what to do; nothing recorded
    [check] = not_valid_checks()
    assert process.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "CommandError: Lost the connection to the database while making tasks_task.priority "
        "NOT NULL (terminating connection due to administrator command): the NOT VALID check "
        f"{check} is in place (rows written from now on need a priority); rerun manage.py "
        "migrate to validate it and finish. This migration is not recorded."
    ]
    assert not applied("0004_priority_contract")
    assert column_state(Task, "priority", using="default") == "nullable"

    # when: migrate runs again
    call_command("migrate", "tasks", "0004_priority_contract", verbosity=0)

    # then: the check was validated and replaced by NOT NULL
    assert applied("0004_priority_contract")
    assert column_state(Task, "priority", using="default") == "not null"
    assert not_valid_checks() == []
