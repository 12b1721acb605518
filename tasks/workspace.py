"""The workspace rule: one definition, as a database expression and as its Python twin.

A task belongs to the workspace of its category; a task without a category belongs to the
workspace whose slug is ``default``. The id of that default workspace is fixed once when a
backfill run starts (a run parameter), so every batch of a run agrees.

``expression()`` is used by the set-based backfill (one UPDATE per batch, the category's
workspace read by a subquery); ``for_task()`` by the code that writes tasks (``Task.save``,
``bulk_create``), which has already read the categories. They are kept side by side, and a test
(tests/test_workspace.py) proves they agree on SQLite and PostgreSQL.
"""

from dataclasses import dataclass

from django.db import models
from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

DEFAULT_WORKSPACE_SLUG = "default"


@dataclass(frozen=True)
class WorkspaceRule:
    """The rule, for the id of the default workspace."""

    default_workspace: int

    def for_task(self, *, category_workspace: int | None) -> int:
        """The workspace of a task whose category is in ``category_workspace`` (None: it has no
        category) — the Python twin."""
        return self.default_workspace if category_workspace is None else category_workspace

    def expression(self, category_model: type[models.Model], *, category: str = "category"):
        """The same rule as a database expression over the task's ``category`` column.

        ``category_model`` is passed in so that migrations can use it with historical models.
        """
        return Coalesce(
            Subquery(
                category_model._default_manager.filter(pk=OuterRef(category)).values("workspace")[
                    :1
                ]
            ),
            Value(self.default_workspace),
            output_field=models.BigIntegerField(),
        )
