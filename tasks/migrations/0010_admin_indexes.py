"""The admin's indexes: one per column the task list sorts by, and its title search.

Not a step of a column's rollout: both columns are in place (0005, 0009), and this is what the
admin needs to stay as fast at 1,000,000 tasks as at 10,000 (docs/benchmarks.md):

- each sortable column followed by the primary key — the task list sorts by one column, then
  by id in the same direction (tasks/admin.py), so one index serves both directions; the
  priority by its rank, the expression the admin sorts by;
- ``(due_date, id)`` replaces ``(due_date)``, which it covers (the date hierarchy's probes,
  the due-date filter), so that inserts write one index fewer than they would with both;
- a trigram index of ``UPPER(title)``: the admin's search is Django's ``icontains``, which on
  PostgreSQL is ``UPPER(title) LIKE UPPER('%term%')``, and only an index of that expression
  serves it (pg_trgm, which reversing keeps).

Every index is built with CREATE INDEX CONCURRENTLY and the old one dropped with DROP INDEX
CONCURRENTLY on PostgreSQL (writes go on), hence not atomic. Other databases get ordinary
indexes and no trigram index. Reversing drops them and builds ``(due_date)`` again.
"""

import django.contrib.postgres.indexes
import django.db.models.functions.text
from django.db import migrations, models

from migration_safety.operations import AddIndexSafely, AddTrigramExtension, RemoveIndexSafely


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0009_workspace_contract"),
    ]

    operations = [
        AddIndexSafely(
            model_name="task",
            index=models.Index(fields=["title", "id"], name="tasks_task_title_id_idx"),
        ),
        AddIndexSafely(
            model_name="task",
            index=models.Index(fields=["status", "id"], name="tasks_task_status_id_idx"),
        ),
        AddIndexSafely(
            model_name="task",
            index=models.Index(
                models.Case(
                    models.When(priority="low", then=models.Value(1)),
                    models.When(priority="medium", then=models.Value(2)),
                    models.When(priority="high", then=models.Value(3)),
                    models.When(priority="urgent", then=models.Value(4)),
                    default=models.Value(0),
                    output_field=models.IntegerField(),
                ),
                models.F("id"),
                name="tasks_task_priority_rank_idx",
            ),
        ),
        AddIndexSafely(
            model_name="task",
            index=models.Index(fields=["due_date", "id"], name="tasks_task_due_date_id_idx"),
        ),
        RemoveIndexSafely(model_name="task", name="tasks_task_due_date_idx"),
        AddTrigramExtension(),
        AddIndexSafely(
            model_name="task",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.indexes.OpClass(
                    django.db.models.functions.text.Upper("title"), name="gin_trgm_ops"
                ),
                name="tasks_task_title_trgm_idx",
            ),
        ),
    ]
