"""A paginator for big tables: counts a result exactly only while that is cheap."""

import json
from math import ceil

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

# Up to this many rows a count is cheap and nicer to show than an estimate.
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


def estimated_result_count(queryset: QuerySet) -> int | None:
    """PostgreSQL's planner estimate of the rows ``queryset`` returns (EXPLAIN, nothing run),
    or None elsewhere."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    plan = json.loads(queryset.order_by().values("pk").explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """Counts exactly only up to EXACT_COUNT_BELOW rows; a bigger result gets an estimate.

    Counting 1,000,000 rows, or the 250,000 of a filter, scans them all on every page view; the
    admin only needs the count to draw page links, where an estimate is good enough. So, on
    PostgreSQL: the whole table is estimated from its statistics once it is big; a filtered or
    searched result is first estimated by the planner (EXPLAIN, nothing read), and one the
    planner thinks big is shown as that estimate without a count: counting even up to the bound
    reads 10,000 matching rows, slower the more rows the filter's index must skip. A result the
    planner thinks small is counted up to EXACT_COUNT_BELOW + 1 rows (``COUNT(*)`` over a
    ``LIMIT`` subquery, which stops there) and shown exactly below that — statistics can be
    stale, a count cannot — and as "at least the bound" above it. ``count_is_exact`` says
    which, for the templates (admin/tasks/task/). An estimated result is paged only as far as
    its first EXACT_COUNT_BELOW rows (``num_pages``).
    """

    exact_count_below = EXACT_COUNT_BELOW
    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.where:
            estimate = estimated_row_count(queryset.model, queryset.db)
            if estimate is None or estimate < self.exact_count_below:
                return super().count
        else:
            estimate = estimated_result_count(queryset)
            if estimate is None or estimate < self.exact_count_below:
                bounded = queryset.order_by().values("pk")[: self.exact_count_below + 1].count()
                if bounded <= self.exact_count_below:
                    return bounded
                if estimate is None:  # not PostgreSQL
                    return super().count
                estimate = bounded  # the planner thought it small: at least the bound
        self.estimated = True
        return estimate

    @cached_property
    def num_pages(self) -> int:
        """The pages linked and served: a result too big to count gets as many as its first
        ``exact_count_below`` rows fill. A page deep in a big result is an OFFSET over every row
        before it (the last of 1,000,000 tasks reads them all); filters, search and sorting are
        the way there."""
        pages = super().num_pages
        if self.count_is_exact:
            return pages
        return min(pages, ceil(self.exact_count_below / self.per_page))

    @property
    def count_is_exact(self) -> bool:
        """Whether ``count`` was counted, not estimated."""
        _ = self.count  # counted, or estimated, first
        return not self.estimated
