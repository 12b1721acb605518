"""A paginator for big tables: estimates the unfiltered row count instead of counting it."""

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

# Below this many rows an exact COUNT(*) is cheap and nicer to show than an estimate.
EXACT_COUNT_BELOW = 10_000


def estimated_row_count(model, using: str) -> int | None:
    """PostgreSQL's planner estimate of the rows in ``model``'s table, or None elsewhere.

    ``reltuples`` is kept current by ANALYZE and autovacuum; it is -1 for a table never analysed
    (PostgreSQL 14+), which we treat as unknown.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [connection.ops.quote_name(model._meta.db_table)],
        )
        row = cursor.fetchone()
    if row is None or row[0] < 0:
        return None
    return row[0]


class EstimatedCountPaginator(Paginator):
    """Uses the table estimate for an unfiltered queryset on a big PostgreSQL table.

    Counting 1,000,000 rows scans the whole table (or its smallest index) on every page view;
    the admin only needs the count to draw page links, where an estimate is good enough.
    Filtered querysets (search, filters) are still counted exactly.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not getattr(queryset, "query", None) or queryset.query.where:
            return super().count
        estimate = estimated_row_count(queryset.model, queryset.db)
        if estimate is None or estimate < EXACT_COUNT_BELOW:
            return super().count
        return estimate
