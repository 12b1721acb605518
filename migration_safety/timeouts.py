"""Session timeouts around the statements of a migration that are meant to scan.

``manage.py migrate`` runs every migration under a short ``statement_timeout``, for DDL that must
be instant. Statements that read a whole table while letting reads and writes go on (VALIDATE
CONSTRAINT, CREATE INDEX CONCURRENTLY, a backfill's look for pending rows) lift it here. Their
lock waits stay bounded by ``lock_timeout``, except where django-pg-migration-tools sets it to 0
itself: around CREATE INDEX CONCURRENTLY, whose SHARE UPDATE EXCLUSIVE lock lets reads and
writes go on while it waits. The library's ``apply_timeouts`` sets timeouts but refuses zero,
which is "no limit" here.
"""

from collections.abc import Iterator
from contextlib import contextmanager

# Statements that read a whole table under a lock that lets reads and writes go on.
SCANS = ("VALIDATE CONSTRAINT", "CREATE INDEX CONCURRENTLY")


@contextmanager
def without_statement_timeout(connection) -> Iterator[None]:
    """Lift the session's statement_timeout for the block (PostgreSQL), then restore it."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        previous = cursor.fetchone()[0]
        cursor.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        if connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, false)", [previous])


@contextmanager
def scans_without_statement_timeout(schema_editor) -> Iterator[None]:
    """For the block, run each of the :data:`SCANS` statements that ``schema_editor`` executes
    without the session's statement_timeout, and every other statement (instant DDL) under it.

    For an operation of a library that runs both kinds: its statements go through the schema
    editor's public ``execute``, which is wrapped for the block.
    """
    execute = schema_editor.execute
    wrapped = vars(schema_editor).get("execute")  # another wrapper already on this editor

    def execute_lifting_scans(sql, params=()):
        if any(scan in str(sql) for scan in SCANS):
            with without_statement_timeout(schema_editor.connection):
                return execute(sql, params)
        return execute(sql, params)

    schema_editor.execute = execute_lifting_scans
    try:
        yield
    finally:
        if wrapped is None:
            del schema_editor.execute
        else:
            schema_editor.execute = wrapped
