"""The workspace backfill on real PostgreSQL: application writes at the same time, from threads
with their own connections, on 1 and 2 workers; and its data migration when another process
holds the run or an operator pauses it."""

import pytest
from django.db import connection, connections
from django.utils import timezone

from tasks.models import Category, Task, Workspace
from tasks.services import task_create
from tests.helpers import WORKSPACE, fill_while_the_application_writes, wait_until
from tests.test_workspace import stored_workspaces, workspaces_by_an_independent_query

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_writes_during_the_workspace_backfill_overwrite_nothing(
    workspace_expand_step, workers
):
    # given: 15,000 rows written before the column, and the application writing meanwhile:
    # old code (no workspace) and today's code (which also moves tasks between workspaces)
    legacy_rows(15_000, users=3, seed=5)
    legacy_ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    categories = list(Category.objects.order_by("slug"))
    business = Workspace.objects.get(slug="business")
    by_rule = workspaces_by_an_independent_query()
    movable = [pk for pk in legacy_ids if by_rule[pk] != business.pk]
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
            created.append(
                task_create(title=f"new {n}", category=categories[n % len(categories)]).pk
            )
            pk = movable[(n * 7919) % len(movable)]
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


def legacy_rows(count: int, *, users: int = 1, seed: int = 2) -> None:
    """``count`` rows as the code before the workspace column wrote them."""
    from django.core.management import call_command

    call_command(
        "seed",
        tasks=count,
        users=users,
        seed=seed,
        without_workspace=True,
        no_progress=True,
        verbosity=0,
    )


def test_the_data_migration_refuses_in_one_line_while_another_process_holds_the_run(
    workspace_expand_step,
):
    # given: rows to fill, and a run another process holds (its lease renewed a moment ago)
    import datetime

    from django.core.management import CommandError, call_command
    from django.db.migrations.recorder import MigrationRecorder
    from django.utils import timezone

    from backfills.models import BackfillRun

    legacy_rows(30)
    call_command("backfill", WORKSPACE.name, batch_size=10, max_batches=1, verbosity=0)
    BackfillRun.objects.update(
        status="running",
        lease_owner="command root@host-b pid 99",
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )

    try:
        # when / then
        with pytest.raises(CommandError, match="is being processed by command root@host-b pid 99"):
            call_command("migrate", "tasks", "0008_workspace_backfill", verbosity=0)
        recorder = MigrationRecorder(connection).migration_qs
        assert not recorder.filter(app="tasks", name="0008_workspace_backfill").exists()
        assert Task.objects.filter(workspace__isnull=True).count() == 20
        assert BackfillRun.objects.get().lease_owner == "command root@host-b pid 99"
    finally:
        BackfillRun.objects.update(lease_owner="", lease_expires_at=None)  # the holder is done


def test_a_data_migration_paused_half_way_is_not_recorded_as_done(workspace_expand_step, settings):
    # given: two fixed batches' worth of rows, the last row locked so that the second batch waits
    from django.core.management import CommandError, call_command
    from django.db.migrations.recorder import MigrationRecorder

    from backfills.engine import BatchPolicy as Policy
    from backfills.models import BackfillRun
    from tests.test_backfill_postgres import finished, hold_row_lock, in_thread

    settings.BACKFILL_TARGET_BATCH_MS = 0
    legacy_rows(Policy().batch_size + 10)
    blocker = hold_row_lock(Task.objects.order_by("-pk").values_list("pk", flat=True)[0])
    outcome = {}
    migration = in_thread(
        lambda: call_command("migrate", "tasks", "0008_workspace_backfill", verbosity=0), outcome
    )
    try:
        wait_until(
            lambda: BackfillRun.objects.filter(rows_done__gt=0).exists(), what="the first batch"
        )
        # when: an operator pauses the run while its second batch waits for the row
        call_command("backfill", WORKSPACE.name, pause=True, verbosity=0)
    finally:
        blocker.rollback()
        blocker.close()

    # then: the migration stops, says so in one line, and is not recorded as applied
    with pytest.raises(CommandError, match="stopped before the end: the run was paused meanwhile"):
        finished(migration, outcome)
    recorder = MigrationRecorder(connection).migration_qs
    assert not recorder.filter(app="tasks", name="0008_workspace_backfill").exists()
    assert BackfillRun.objects.get().status == "paused"
