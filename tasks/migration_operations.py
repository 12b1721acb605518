"""Migration operations that keep PostgreSQL's long locks out of a live table's schema changes."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import NotSupportedError
from django.db.migrations.operations import AddIndex, AlterField

from tasks.migration_safety import without_statement_timeout


@contextmanager
def _lock_timeout(connection, value: str) -> Iterator[None]:
    """Use ``value`` as the session's lock_timeout for the block, then restore it."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        previous = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('lock_timeout', %s, false)", [value])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [previous])


def _lint_ignore(schema_editor, rule: str, why: str) -> None:
    """Tell squawk (manage.py lint_migrations) that the next statement is safe, and why.

    Only in collected SQL (sqlmigrate): a comment is not a statement to send to the server.
    """
    if schema_editor.collect_sql:
        schema_editor.collected_sql.append(f"-- Safe: {why}.\n-- squawk-ignore {rule}")


class AlterFieldSetNotNull(AlterField):
    """Make a column NOT NULL without scanning the table under ACCESS EXCLUSIVE (PostgreSQL).

    A plain ``ALTER COLUMN ... SET NOT NULL`` scans every row while holding ACCESS EXCLUSIVE,
    blocking all reads and writes for the length of the scan. Instead, on PostgreSQL:

    1. ``ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID`` — ACCESS EXCLUSIVE, but instant:
       existing rows are not checked, new and updated rows are.
    2. ``VALIDATE CONSTRAINT`` — scans under SHARE UPDATE EXCLUSIVE, which lets reads and writes
       go on.
    3. ``SET NOT NULL`` — ACCESS EXCLUSIVE, instant: PostgreSQL 12+ skips the scan when a valid
       check constraint proves the column has no NULL ("existing constraints ... are sufficient").
    4. ``DROP CONSTRAINT`` — the check is redundant with NOT NULL.

    Use it in a non-atomic migration, so that each statement commits (and releases its lock)
    on its own, and only after the column has a database default that every INSERT from code
    that predates the column relies on: a NOT VALID check that exists before the default makes
    those inserts fail. Other databases get Django's own AlterField.
    """

    def _names(self, schema_editor, model) -> tuple[str, str, str]:
        column = model._meta.get_field(self.name).column
        table = model._meta.db_table
        constraint = schema_editor._create_index_name(table, [column], suffix="_notnull")
        quote = schema_editor.quote_name
        return quote(table), quote(column), quote(constraint)

    def _check_only_null_changes(self, from_field, to_field) -> None:
        old = from_field.deconstruct()[3]
        new = to_field.deconstruct()[3]
        old.pop("null", None)
        new.pop("null", None)
        if old != new:
            raise ValueError(
                f"AlterFieldSetNotNull on {self.model_name}.{self.name} may only change null; "
                "make other changes in an AlterField of their own."
            )

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        if schema_editor.connection.in_atomic_block:
            # In a transaction the NOT VALID check's ACCESS EXCLUSIVE lock would be held through
            # VALIDATE's scan: the very outage this operation exists to avoid.
            raise NotSupportedError(
                "AlterFieldSetNotNull must run outside a transaction: set atomic = False on "
                "the migration."
            )
        to_model = to_state.apps.get_model(app_label, self.model_name)
        from_model = from_state.apps.get_model(app_label, self.model_name)
        self._check_only_null_changes(
            from_model._meta.get_field(self.name), to_model._meta.get_field(self.name)
        )
        table, column, constraint = self._names(schema_editor, to_model)
        # Drop first: a leftover of an interrupted run must not make the ADD fail.
        _lint_ignore(schema_editor, "ban-drop-constraint", "only this operation's own check")
        schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}")
        schema_editor.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} "
            f"CHECK ({column} IS NOT NULL) NOT VALID"
        )
        try:
            with without_statement_timeout(schema_editor.connection):
                schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}")
            schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
        except Exception as original:
            # Never leave the check behind: it would make every UPDATE of a row that is still
            # NULL fail while the previous release is running. The drop needs ACCESS EXCLUSIVE
            # too, so give it longer than the migration's lock_timeout that may just have
            # expired.
            try:
                with _lock_timeout(schema_editor.connection, "30s"):
                    schema_editor.execute(
                        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}"
                    )
            except Exception as cleanup_error:
                raise original from cleanup_error
            raise
        _lint_ignore(schema_editor, "ban-drop-constraint", "redundant with NOT NULL now")
        schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        table, column, _ = self._names(schema_editor, model)
        # Metadata only: dropping NOT NULL never scans.
        schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL")

    def describe(self) -> str:
        return f"Set NOT NULL on {self.model_name}.{self.name} without a long lock"

    @property
    def migration_name_fragment(self) -> str:
        return f"{self.model_name_lower}_{self.name_lower}_set_not_null"


class AddIndexSafely(AddIndexConcurrently):
    """Add an index without blocking writes: CREATE INDEX CONCURRENTLY on PostgreSQL.

    A plain CREATE INDEX holds a SHARE lock for the whole build, so every INSERT, UPDATE and
    DELETE on the table waits. CONCURRENTLY takes SHARE UPDATE EXCLUSIVE instead (writes go on)
    at the price of two table scans, and cannot run in a transaction: use it in a non-atomic
    migration. An interrupted concurrent build leaves an INVALID index behind, which a plain
    retry would trip over ("already exists"); this operation drops such a leftover first, and
    skips the build when a valid index of that name is already there. Other databases get an
    ordinary CREATE INDEX.
    """

    def _existing_index_state(self, schema_editor, model) -> str | None:
        """``"valid"``, ``"invalid"`` or None: what PostgreSQL has under the index's name on
        the model's table (None when only collecting SQL, as sqlmigrate does)."""
        if schema_editor.collect_sql:
            return None
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND i.indrelid = %s::regclass "
                "AND pg_table_is_visible(c.oid)",
                [self.index.name, schema_editor.quote_name(model._meta.db_table)],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return "valid" if row[0] else "invalid"

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
        self._ensure_not_in_transaction(schema_editor)
        model = to_state.apps.get_model(app_label, self.model_name)
        existing = self._existing_index_state(schema_editor, model)
        if existing == "valid":
            return
        if existing == "invalid":
            name = schema_editor.quote_name(self.index.name)
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        with without_statement_timeout(schema_editor.connection):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
        super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"Add index {self.index.name} on {self.model_name} without blocking writes"
