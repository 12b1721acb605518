"""Migration operations that keep PostgreSQL's long locks out of a live table's schema changes.

django-pg-migration-tools' operations do the work wherever they fit; what is added here, and why:

- every operation also runs on other databases, as Django's own operation (the project's default
  database is SQLite, where none of these locks exist);
- the statements meant to scan (VALIDATE, CREATE INDEX CONCURRENTLY) run without
  ``manage.py migrate``'s short statement_timeout, and only those: the instant DDL around them
  stays bounded (:mod:`migration_safety.timeouts`); the library leaves the timeout on, and a big
  table's scan would be cut off after ten seconds;
- a failed NOT NULL leaves no ``NOT VALID`` check behind (the library leaves it for a re-run to
  pick up; meanwhile it would fail every UPDATE of a row that is still NULL);
- a foreign key can be added without validating it (:class:`AddForeignKeyNotValid`) and
  validated in a later step (:class:`ValidateForeignKey`): the library's
  ``SaferAddFieldForeignKey`` validates in the same operation, which scans the table when no
  row has a value yet, instead of in the contract step, when the scan proves the backfill;
- :class:`IgnoreLint` tells ``manage.py lint_migrations`` that rules are knowingly broken, and why.
"""

import datetime
import logging
import time

from django.contrib.postgres.indexes import PostgresIndex
from django.contrib.postgres.operations import TrigramExtension
from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, NotSupportedError, models, transaction
from django.db.migrations.operations import AddField, AddIndex, AlterField, RemoveIndex
from django.db.migrations.operations.base import Operation
from django_pg_migration_tools.operations import (
    SafeIndexOperationManager,
    SaferAddIndexConcurrently,
    SaferAlterFieldSetNotNull,
    SaferRemoveIndexConcurrently,
    build_postgres_identifier,
)
from django_pg_migration_tools.timeouts import apply_timeouts

from migration_safety.timeouts import scans_without_statement_timeout

logger = logging.getLogger(__name__)
# A cleanup that needs ACCESS EXCLUSIVE tries this many times, each waiting this long for it:
# while it waits, every other query on the table queues behind it, so never long at a time.
CLEANUP_ATTEMPTS = 5
CLEANUP_LOCK_TIMEOUT = datetime.timedelta(seconds=1)


class DatabaseOperation(Operation):
    """An operation on the database only: it changes no model state, and reversing it does
    nothing unless a subclass says otherwise. (Django's ``deconstruct`` replays the arguments.)"""

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        pass


def is_postgresql(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def ensure_not_in_transaction(schema_editor, operation: str) -> None:
    """Refuse to run in a transaction, where a short lock would be held until the commit."""
    if schema_editor.connection.in_atomic_block:
        raise NotSupportedError(
            f"{operation} must run outside a transaction: set atomic = False on the migration."
        )


def lint_note(schema_editor, rule: str, why: str) -> None:
    """Tell squawk (manage.py lint_migrations) that the next statement is safe, and why.

    Only in collected SQL (sqlmigrate): a comment is not a statement to send to the server.
    """
    if schema_editor.collect_sql:
        schema_editor.collected_sql.append(f"-- Safe: {why}.\n-- squawk-ignore {rule}")


class AlterFieldSetNotNull(SaferAlterFieldSetNotNull):
    """Make a column NOT NULL without scanning the table under ACCESS EXCLUSIVE (PostgreSQL).

    The library's recipe: ``ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID`` (instant),
    ``VALIDATE CONSTRAINT`` (scans under SHARE UPDATE EXCLUSIVE: reads and writes go on),
    ``SET NOT NULL`` (instant: PostgreSQL 12+ uses the valid check instead of a scan), then
    ``DROP CONSTRAINT``. A re-run after a failure picks up where it stopped.

    Use it in a non-atomic migration (each statement commits, releasing its lock), and only once
    the column has a database default or no code that predates the column inserts rows: the
    check constraint fails such inserts. Other databases get Django's AlterField.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return AlterField.database_forwards(
                self, app_label, schema_editor, from_state, to_state
            )
        # (The library refuses to run in a transaction, where the NOT VALID check's ACCESS
        # EXCLUSIVE lock would be held through VALIDATE's scan.)
        model = to_state.apps.get_model(app_label, self.model_name)
        table, column = model._meta.db_table, model._meta.get_field(self.name).column
        try:
            with scans_without_statement_timeout(schema_editor):
                super().database_forwards(app_label, schema_editor, from_state, to_state)
        except Exception as exc:
            if not schema_editor.collect_sql and not schema_editor.connection.is_usable():
                raise connection_lost(schema_editor, table, column, exc) from exc
            drop_not_null_checks(schema_editor, table, column)
            raise
        if schema_editor.collect_sql:
            note_dropped_check(schema_editor)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return AlterField.database_backwards(
                self, app_label, schema_editor, from_state, to_state
            )
        # Metadata only: dropping NOT NULL never scans.
        super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"Set NOT NULL on {self.model_name}.{self.name} without a long lock"

    @property
    def migration_name_fragment(self) -> str:
        return f"{self.model_name_lower}_{self.name_lower}_set_not_null"


def drop_not_null_checks(schema_editor, table: str, column: str) -> None:
    """Drop what a failed :class:`AlterFieldSetNotNull` left: its NOT VALID check on ``column``.

    Left behind, it would make every UPDATE of a row that is still NULL fail while the previous
    release is running. Found by its definition, not its name (the library's naming is its own).
    The drop needs ACCESS EXCLUSIVE too: while it waits for it every other query on the table
    queues behind it, so it tries a few times, each under a short lock_timeout, pausing between
    them (the migration's own lock_timeout may just have expired behind the same session). If
    it still fails, the original error is the one raised, and the check is logged for a re-run.
    """
    connection = schema_editor.connection
    if schema_editor.collect_sql or not connection.is_usable():
        return
    quote = schema_editor.quote_name
    names = not_valid_checks(schema_editor, table, column)
    for attempt in range(1, CLEANUP_ATTEMPTS + 1):
        try:
            # In a transaction, so the timeout is SET LOCAL: a session one could stay on a
            # pooled server connection (and be restored on another).
            with (
                transaction.atomic(using=connection.alias),
                apply_timeouts(using=connection.alias, lock_timeout=CLEANUP_LOCK_TIMEOUT),
            ):
                while names:
                    schema_editor.execute(
                        f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(names[0])}"
                    )
                    names.pop(0)
            return
        except Exception:  # the caller re-raises the error that made the cleanup necessary
            if attempt == CLEANUP_ATTEMPTS or not connection.is_usable():
                logger.exception("could not drop %s on %s after a failed NOT NULL", names, table)
                return
            time.sleep(CLEANUP_LOCK_TIMEOUT.total_seconds())


def not_valid_checks(schema_editor, table: str, column: str) -> list[str]:
    """The NOT VALID ``CHECK (column IS NOT NULL)`` constraints on ``table``: what an
    interrupted :class:`AlterFieldSetNotNull` leaves (found by definition, not by name)."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c' "
            "AND NOT convalidated AND pg_get_constraintdef(oid) = "
            "'CHECK ((' || quote_ident(%s) || ' IS NOT NULL)) NOT VALID'",
            [schema_editor.quote_name(table), column],
        )
        return [row[0] for row in cursor.fetchall()]


def connection_lost(schema_editor, table: str, column: str, error: Exception) -> CommandError:
    """The one-line answer to a connection lost half-way through a NOT NULL (while VALIDATE
    scanned, say): what is left on the table, read on a new connection, and that rerunning
    migrate completes it (the library picks up a NOT VALID check it finds). Nothing is dropped:
    a check can only be dropped over a connection, and a re-run needs it."""
    connection = schema_editor.connection
    connection.close()
    rerun = "rerun manage.py migrate" + (
        "" if connection.alias == DEFAULT_DB_ALIAS else f" --database {connection.alias}"
    )
    try:
        checks = not_valid_checks(schema_editor, table, column)
    except DatabaseError:
        state = (
            f"the NOT VALID check on {column} may be in place; once the database is back, "
            f"{rerun} to validate it and finish"
        )
    else:
        state = (
            f"the NOT VALID check {checks[0]} is in place (rows written from now on need a "
            f"{column}); {rerun} to validate it and finish"
            if checks
            else f"no check of {column} is left; {rerun} to finish"
        )
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CommandError(
        f"Lost the connection to the database while making {table}.{column} NOT NULL "
        f"({reason}): {state}. This migration is not recorded."
    )


def note_dropped_check(schema_editor) -> None:
    """Put the lint's note right before the recipe's last statement, the drop of its own check
    (on one line: squawk's note covers the line after it, where it reports the drop)."""
    collected = schema_editor.collected_sql
    for index in range(len(collected) - 1, -1, -1):
        if "DROP CONSTRAINT" in collected[index]:
            collected[index] = (
                "-- Safe: the check is this operation's own, redundant with NOT NULL now.\n"
                "-- squawk-ignore ban-drop-constraint\n" + " ".join(collected[index].split())
            )
            return


def only_postgresql_has(index: models.Index) -> bool:
    """An index of a kind only PostgreSQL has (GIN, GiST, BRIN…: django.contrib.postgres)."""
    return isinstance(index, PostgresIndex)


class AddIndexSafely(SaferAddIndexConcurrently):
    """Add an index without blocking writes: CREATE INDEX CONCURRENTLY on PostgreSQL.

    A plain CREATE INDEX holds a SHARE lock for the whole build, so every INSERT, UPDATE and
    DELETE on the table waits. CONCURRENTLY takes SHARE UPDATE EXCLUSIVE instead (writes go on)
    at the price of two table scans, and cannot run in a transaction: use it in a non-atomic
    migration. The library drops an INVALID leftover of an interrupted build first and skips a
    valid index of that name. Other databases get an ordinary CREATE INDEX, except of an index
    only PostgreSQL has (a GIN index, say), which they go without.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            if only_postgresql_has(self.index):
                return
            return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
        with scans_without_statement_timeout(schema_editor):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            if only_postgresql_has(self.index):
                return
            return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
        super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"Add index {self.index.name} on {self.model_name} without blocking writes"


class RemoveIndexSafely(SaferRemoveIndexConcurrently):
    """Drop an index without blocking reads or writes: DROP INDEX CONCURRENTLY on PostgreSQL.

    A plain DROP INDEX takes ACCESS EXCLUSIVE on the table (every query waits for it, and queues
    behind it while it waits); CONCURRENTLY waits for the transactions using the index instead,
    under SHARE UPDATE EXCLUSIVE. Not in a transaction: use it in a non-atomic migration. Drops
    nothing if the index is gone already; reversing builds it again as :class:`AddIndexSafely`
    does. Other databases get Django's RemoveIndex.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return RemoveIndex.database_forwards(
                self, app_label, schema_editor, from_state, to_state
            )
        super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return RemoveIndex.database_backwards(
                self, app_label, schema_editor, from_state, to_state
            )
        with scans_without_statement_timeout(schema_editor):
            super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"Remove index {self.name} from {self.model_name} without blocking writes"


class AddTrigramExtension(TrigramExtension):
    """``CREATE EXTENSION IF NOT EXISTS pg_trgm`` on PostgreSQL, for trigram indexes; nothing
    elsewhere, either way (Django's reverse would ask any database for ``pg_extension``).

    Reversing keeps the extension: another table's index may use it, and unused it costs
    nothing. pg_trgm is trusted (PostgreSQL 13+): the database's owner may create it.
    """

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        pass

    def describe(self) -> str:
        return "Create extension pg_trgm if it is not there (PostgreSQL)"


def constraint_names(
    schema_editor, table: str, column: str, *, kind: str, validated: bool | None = None
) -> list[str]:
    """Names of the constraints of ``kind`` ("f" foreign key, "c" check) on ``table.column``."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a "
            "ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
            "WHERE c.conrelid = %s::regclass AND c.contype = %s AND a.attname = %s "
            "AND (%s::bool IS NULL OR c.convalidated = %s::bool) ORDER BY c.conname",
            [schema_editor.quote_name(table), kind, column, validated, validated],
        )
        return [row[0] for row in cursor.fetchall()]


class AddForeignKeyNotValid(AddField):
    """Add a nullable foreign key column without a scan under lock or a blocking index build.

    Django's AddField of a ForeignKey adds the constraint validated (a scan of the whole table
    under SHARE ROW EXCLUSIVE, which blocks writes) and builds its index with a plain CREATE
    INDEX (SHARE: writes wait for the whole build). On PostgreSQL this operation instead runs,
    each statement committed on its own (use it in a non-atomic migration):

    1. ``ADD COLUMN … NULL``: metadata only;
    2. ``CREATE INDEX CONCURRENTLY`` (the library's, which also clears an invalid leftover);
    3. ``ADD CONSTRAINT … FOREIGN KEY … NOT VALID``: instant; new and changed rows are
       checked from now on, existing ones by :class:`ValidateForeignKey` in a later step.

    Each step is skipped when it is already done, so a re-run after a failure completes it.
    Other databases get Django's AddField.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        ensure_not_in_transaction(schema_editor, "AddForeignKeyNotValid")
        model = to_state.apps.get_model(app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if not field.null or not field.many_to_one:
            raise ValueError(
                f"AddForeignKeyNotValid adds a nullable ForeignKey; {self.model_name}.{self.name} "
                "is not one."
            )
        table, column = model._meta.db_table, field.column
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {quote(column)} "
            f"{field.db_type(schema_editor.connection)} NULL"
        )
        index = models.Index(
            fields=[self.name], name=build_postgres_identifier([table, column], "idx")
        )
        with scans_without_statement_timeout(schema_editor):
            SafeIndexOperationManager().safer_create_index(
                app_label=app_label,
                schema_editor=schema_editor,
                from_state=from_state,
                to_state=to_state,
                index=index,
                unique=False,
                model=model,
            )
        if schema_editor.collect_sql or not constraint_names(
            schema_editor, table, column, kind="f"
        ):
            target = field.target_field
            lint_note(
                schema_editor,
                "adding-foreign-key-constraint",
                "NOT VALID: existing rows are validated in a later step, without blocking writes",
            )
            schema_editor.execute(
                f"ALTER TABLE {quote(table)} ADD CONSTRAINT "
                f"{quote(build_postgres_identifier([table, column], 'fk'))} "
                f"FOREIGN KEY ({quote(column)}) "
                f"REFERENCES {quote(target.model._meta.db_table)} ({quote(target.column)}) "
                "DEFERRABLE INITIALLY DEFERRED NOT VALID"
            )

    def describe(self) -> str:
        return (
            f"Add foreign key {self.model_name}.{self.name}, not validated yet, "
            "its index built concurrently"
        )


class ValidateForeignKey(DatabaseOperation):
    """Validate the NOT VALID foreign key on ``model_name.name`` (PostgreSQL).

    ``VALIDATE CONSTRAINT`` scans the table under SHARE UPDATE EXCLUSIVE, which lets reads and
    writes go on (and ROW SHARE on the referenced table). Already valid: nothing to do. Reversing
    keeps it valid: a validated constraint is valid in the earlier step too. Other databases
    check foreign keys on every write already: nothing to do there.
    """

    def __init__(self, model_name: str, name: str) -> None:
        self.model_name = model_name
        self.name = name

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not is_postgresql(schema_editor):
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        table, column = model._meta.db_table, model._meta.get_field(self.name).column
        if schema_editor.collect_sql:
            names = [build_postgres_identifier([table, column], "fk")]
        else:
            names = constraint_names(schema_editor, table, column, kind="f", validated=False)
        quote = schema_editor.quote_name
        with scans_without_statement_timeout(schema_editor):
            for name in names:
                schema_editor.execute(
                    f"ALTER TABLE {quote(table)} VALIDATE CONSTRAINT {quote(name)}"
                )

    def describe(self) -> str:
        return f"Validate the foreign key {self.model_name}.{self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"validate_{self.model_name.lower()}_{self.name.lower()}"


class IgnoreLint(DatabaseOperation):
    """Tell ``manage.py lint_migrations`` that this migration breaks squawk's ``rules``
    knowingly, and why (``because``).

    Does nothing to the database: in the SQL that sqlmigrate collects it writes ``because`` and
    squawk's ``-- squawk-ignore-file <rule>`` for each rule, so put it first in the migration.
    """

    def __init__(self, rules: list[str], because: str) -> None:
        self.rules = list(rules)
        self.because = because

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if schema_editor.collect_sql:
            ignores = "\n".join(f"-- squawk-ignore-file {rule}" for rule in self.rules)
            schema_editor.collected_sql.append(f"-- Safe: {self.because}.\n{ignores}")

    def describe(self) -> str:
        return f"Accept lint rules {', '.join(self.rules)}: {self.because}"
