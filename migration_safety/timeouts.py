"""Timeouts around the statements of a migration: instant DDL under them, scans without them.

``manage.py migrate`` runs every migration under a short ``statement_timeout``, for DDL that must
be instant. Statements that read a whole table while letting reads and writes go on (VALIDATE
CONSTRAINT, CREATE INDEX CONCURRENTLY, a backfill's look for pending rows) lift it here. Their
lock waits stay bounded by ``lock_timeout``, except where django-pg-migration-tools sets it to 0
itself: around CREATE INDEX CONCURRENTLY, whose SHARE UPDATE EXCLUSIVE lock lets reads and
writes go on while it waits. The library's ``apply_timeouts`` sets timeouts but refuses zero,
which is "no limit" here.

Behind a transaction pooler (``DATABASE_POOLING=transaction``) a session setting would stay on a
server connection that other clients then use, and the next statement of the same process may
run on another one: there :func:`timeouts_per_transaction` gives every transaction its own
(``set_config(..., true)``, which ends with it) and runs each statement that is not already in
one in a transaction of its own, except those PostgreSQL refuses in one (CREATE INDEX
CONCURRENTLY and the like), which take no lock that blocks the application and need none.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.db import transaction
from psycopg.pq import TransactionStatus

# Statements that read a whole table under a lock that lets reads and writes go on.
SCANS = ("VALIDATE CONSTRAINT", "CREATE INDEX CONCURRENTLY")
# Statements PostgreSQL runs only outside a transaction block; none takes a blocking lock.
OUTSIDE_TRANSACTIONS = ("CONCURRENTLY", "VACUUM")
# Set by without_statement_timeout behind a transaction pooler: the transactions it starts
# run without a statement_timeout.
STATEMENT_TIMEOUT_LIFTED: ContextVar[bool] = ContextVar("statement_timeout_lifted", default=False)


def behind_transaction_pooler() -> bool:
    """Whether consecutive transactions may run on different server connections."""
    return settings.DATABASE_POOLING == "transaction"


@contextmanager
def without_statement_timeout(connection) -> Iterator[None]:
    """Lift the statement_timeout for the block (PostgreSQL), then restore it.

    In a transaction only for it (what the block runs after the transaction ends is not
    lifted); behind a transaction pooler also for the transactions the block starts.
    """
    if connection.vendor != "postgresql":
        yield
        return
    in_transaction = connection.in_atomic_block
    if not in_transaction and behind_transaction_pooler():
        lifted = STATEMENT_TIMEOUT_LIFTED.set(True)
        try:
            yield
        finally:
            STATEMENT_TIMEOUT_LIFTED.reset(lifted)
        return
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        previous = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('statement_timeout', '0', %s)", [in_transaction])
    try:
        yield
    finally:
        if connection.is_usable() and connection.in_atomic_block == in_transaction:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, %s)", [previous, in_transaction]
                )


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


@contextmanager
def timeouts_per_transaction(
    connection, *, lock_timeout_ms: int, statement_timeout_ms: int
) -> Iterator[None]:
    """For the block, every transaction on ``connection`` starts with ``lock_timeout`` and
    ``statement_timeout`` of its own, and a statement outside a transaction runs in one —
    unless PostgreSQL refuses it there (:data:`OUTSIDE_TRANSACTIONS`) or it is a ``SET``/
    ``SHOW`` (a library's own save and restore of a setting). Nothing outlives a transaction.
    """

    def set_local_timeouts() -> None:
        lifted = STATEMENT_TIMEOUT_LIFTED.get()
        with connection.connection.cursor() as raw:  # not through this wrapper again
            raw.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('statement_timeout', %s, true)",
                [f"{lock_timeout_ms}ms", "0" if lifted else f"{statement_timeout_ms}ms"],
            )

    def execute_in_transaction(execute, sql, params, many, context):
        text = str(sql).lstrip().upper()
        if connection.get_autocommit():
            if any(word in text for word in OUTSIDE_TRANSACTIONS) or text.startswith(
                ("SET ", "SHOW ")
            ):
                return execute(sql, params, many, context)
            with transaction.atomic(using=connection.alias):
                set_local_timeouts()
                return execute(sql, params, many, context)
        if connection.connection.info.transaction_status == TransactionStatus.IDLE:
            set_local_timeouts()  # the statement about to run starts a transaction
        return execute(sql, params, many, context)

    with connection.execute_wrapper(execute_in_transaction):
        yield
