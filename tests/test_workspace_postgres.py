"""The workspace backfill on real PostgreSQL: application writes at the same time, from threads
with their own connections, on 1 and 2 workers."""

import pytest
from django.db import connections
from django.utils import timezone

from tasks.models import Category, Task, Workspace
from tasks.services import task_create
from tests.helpers import WORKSPACE, fill_while_the_application_writes
from tests.test_workspace import stored_workspaces, workspaces_by_an_independent_query

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_writes_during_the_workspace_backfill_overwrite_nothing(
    workspace_expand_step, workers
):
    # given: 15,000 rows written before the column, and the application writing meanwhile:
    # old code (no workspace) and today's code (which also moves tasks between workspaces)
    from django.core.management import call_command

    call_command(
        "seed", tasks=15_000, users=3, seed=5, without_workspace=True, no_progress=True, verbosity=0
    )
    legacy_ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    categories = list(Category.objects.order_by("slug"))
    business = Workspace.objects.get(slug="business")
    inserted: list[int] = []  # by old code: NULL workspace
    created: list[int] = []  # by today's code
    moved: list[int] = []  # a workspace the rule would not give: must be kept

    def old_code_writer(stop) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            now = timezone.now()
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "INSERT INTO tasks_task (title, description, status, priority, "
                    "category_id, created_at, updated_at) "
                    "VALUES (%s, '', 'todo', 'medium', %s, %s, %s) RETURNING id",
                    [f"old code {n}", categories[n % len(categories)].pk, now, now],
                )
                inserted.append(cursor.fetchone()[0])
            Task.objects.filter(pk=legacy_ids[(n * 37) % len(legacy_ids)]).update(
                title=f"renamed {n}"
            )

    def new_code_writer(stop) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            created.append(task_create(title=f"new {n}", category=categories[n % 7]).pk)
            pk = legacy_ids[(n * 7919) % len(legacy_ids)]
            if Task.objects.filter(pk=pk, workspace__isnull=True).update(workspace=business):
                moved.append(pk)

    # when
    run, result, batches, errors = fill_while_the_application_writes(
        WORKSPACE, [old_code_writer, new_code_writer], workers=workers
    )

    # then: every row has a workspace; the rule's where nobody wrote one; the application's
    # own choices are kept
    assert not errors
    assert result.finished and batches > 20
    assert len(inserted) > 20 and len(created) > 20 and len(moved) > 20
    stored, expected = stored_workspaces(), workspaces_by_an_independent_query()
    assert None not in stored.values()
    assert {stored[pk] for pk in moved} == {business.pk}
    untouched = set(stored) - set(moved)
    assert {pk: stored[pk] for pk in untouched} == {pk: expected[pk] for pk in untouched}
