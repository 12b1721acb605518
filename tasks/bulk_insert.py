"""Fast, set-based insertion of many rows: COPY on PostgreSQL, executemany elsewhere."""

import datetime
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

from django.db import connections, models, transaction

# Lines handed to COPY per write: large enough that the cost of a call vanishes, small enough
# that the server ingests while the next lines are made.
LINES_PER_WRITE = 1000
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: Any) -> str:
    """``value`` as one column of a line of COPY's text format (``\\N`` for NULL)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime.date):  # a datetime is a date too
        return value.isoformat()
    return str(value).translate(_COPY_ESCAPES)


def _as_given(value: Any) -> Any:
    return value


class BulkInsert:
    """Writes rows of ``fields`` into ``model``'s table, one transaction per ``write``.

    On PostgreSQL the rows are streamed with COPY (one statement, no per-row round trip), as
    lines of COPY's text format, in a transaction that does not wait at its commit for its WAL
    to reach the disk (``synchronous_commit`` off, for this transaction only: bulk rows are
    written again after a crash, and a wait per batch would leave the server idle between
    batches). ``cell`` turns a value into what a row holds, so that a caller that writes the
    same value many times (a foreign key, a timestamp) converts it once rather than once per
    row, as psycopg's ``write_row`` would. Elsewhere rows hold the values themselves and are
    written by one prepared INSERT with executemany. Values must be database-ready (ids for
    foreign keys, aware datetimes).
    """

    def __init__(self, model: type[models.Model], fields: Sequence[str], *, using: str):
        self.using = using
        connection = connections[using]
        quote = connection.ops.quote_name
        self.table = quote(model._meta.db_table)
        columns = [quote(model._meta.get_field(name).column) for name in fields]
        self.column_list = ", ".join(columns)
        self.placeholders = ", ".join(["%s"] * len(columns))
        self.copies = connection.vendor == "postgresql"
        self.cell: Callable[[Any], Any] = copy_text if self.copies else _as_given

    def write(self, rows: Iterable[Sequence[Any]]) -> int:
        """Write ``rows`` (tuples of ``cell`` values, in field order) in one transaction;
        return how many were written."""
        connection = connections[self.using]
        with transaction.atomic(using=self.using), connection.cursor() as cursor:
            if self.copies:
                return self._copy(cursor, iter(rows))
            rows = list(rows)
            cursor.executemany(
                f"INSERT INTO {self.table} ({self.column_list}) VALUES ({self.placeholders})",
                rows,
            )
            return len(rows)

    def _copy(self, cursor, rows: Iterable[Sequence[str]]) -> int:
        cursor.execute("SELECT set_config('synchronous_commit', 'off', true)")
        written = 0
        with cursor.cursor.copy(f"COPY {self.table} ({self.column_list}) FROM STDIN") as copy:
            while lines := ["\t".join(row) for row in islice(rows, LINES_PER_WRITE)]:
                copy.write("\n".join(lines) + "\n")
                written += len(lines)
        return written
