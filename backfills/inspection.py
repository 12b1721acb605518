"""What a backfill would do, read from the database without writing: the column's state, the
rows pending and the values they would get, and the migration that adds a column."""

import datetime
import json
import logging
from typing import Any

from django.db import DatabaseError, connections, models, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AddField
from django.db.models import Count
from django_pg_migration_tools.timeouts import apply_timeouts

from backfills.engine import Backfill

logger = logging.getLogger(__name__)
# The ANALYZE of a fresh column gives up on its lock after this: an estimate is not worth a wait.
ANALYZE_LOCK_TIMEOUT = datetime.timedelta(seconds=1)


def column_state(model: type[models.Model], field_name: str, *, using: str) -> str:
    """``"missing"``, ``"nullable"`` or ``"not null"``: the column as the database has it now."""
    connection = connections[using]
    column = model._meta.get_field(field_name).column
    with connection.cursor() as cursor:
        if model._meta.db_table not in connection.introspection.table_names(cursor):
            return "missing"
        description = connection.introspection.get_table_description(cursor, model._meta.db_table)
    for info in description:
        if info.name == column:
            return "nullable" if info.null_ok else "not null"
    return "missing"


def preview(backfill: Backfill, *, using: str) -> dict[Any, int]:
    """How many pending rows would get each value (for a dry run); writes nothing."""
    rows = (
        backfill.queryset(using)
        .order_by()
        .annotate(_backfill_value=backfill.value)
        .values("_backfill_value")
        .annotate(rows=Count("pk"))
        .values_list("_backfill_value", "rows")
    )
    return dict(rows)


def estimate_pending(backfill: Backfill, *, using: str) -> int:
    """How many rows still need the value: PostgreSQL's estimate, an exact count elsewhere.

    The estimate is the planner's row count for the pending rows (EXPLAIN, from the table's
    statistics), so it costs nothing on a big table. A column added since the last ANALYZE has
    no statistics, and the planner would guess 0.5% of the rows for ``IS NULL``: the column is
    analysed first (a sample of rows; SHARE UPDATE EXCLUSIVE, which blocks no reads or writes),
    giving up after one second if that lock is not free.
    """
    queryset = backfill.queryset(using)
    connection = connections[using]
    if connection.vendor != "postgresql":
        return queryset.count()
    table = backfill.model._meta.db_table
    column = backfill.model._meta.get_field(backfill.field).column
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_stats WHERE schemaname = current_schema() "
            "AND tablename = %s AND attname = %s",
            [table, column],
        )
        if cursor.fetchone() is None:
            try:
                # For the ANALYZE only, and put back after it (also in a caller's transaction).
                with (
                    transaction.atomic(using=using),
                    apply_timeouts(using=using, lock_timeout=ANALYZE_LOCK_TIMEOUT),
                ):
                    cursor.execute(
                        f"ANALYZE {connection.ops.quote_name(table)} "
                        f"({connection.ops.quote_name(column)})"
                    )
            except DatabaseError:
                logger.info("could not analyse %s.%s for an estimate", table, column)
    return planned_rows(queryset, key=backfill.key)


def planned_rows(queryset: models.QuerySet, *, key: str) -> int:
    """The planner's estimate of the rows ``queryset`` would return (PostgreSQL's EXPLAIN)."""
    # Only the key is selected: the plan's row count is the same, and a model that has moved on
    # (a column added since) still explains against an older schema.
    plan = json.loads(queryset.order_by().values(key).explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def migration_adding(model: type[models.Model], field_name: str, *, using: str) -> str | None:
    """The migration that adds ``model.field_name`` ("app_label migration_name"), if any:
    what to apply before a backfill of that column can start."""
    loader = MigrationLoader(connections[using], ignore_no_migrations=True)
    label, model_name = model._meta.app_label, model._meta.model_name
    for (app_label, name), migration in sorted(loader.disk_migrations.items()):
        if app_label != label:
            continue
        for operation in migration.operations:
            if (
                isinstance(operation, AddField)
                and operation.model_name_lower == model_name
                and operation.name_lower == field_name.lower()
            ):
                return f"{app_label} {name}"
    return None
