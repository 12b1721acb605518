"""Task.workspace: the rule and its Python twin, the code that writes it, and its backfill
through the generic command, the admin and the workers (on the run's database)."""

import functools

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfills.models import BackfillRun
from tasks.models import Category, Task, Workspace
from tasks.workspace import WorkspaceRule
from tests.helpers import WORKSPACE, backfill_output, create_legacy_tasks, rewind_to
from tests.test_backfill_runs import run_worker_until_idle

RUNS = reverse("admin:backfills_backfillrun_changelist")
TASKS = "/admin/tasks/task/"


backfill = functools.partial(backfill_output, "backfill", WORKSPACE.name)


def workspaces_by_an_independent_query() -> dict[int, int]:
    """Each task's expected workspace, by a join written out by hand."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.id, COALESCE(c.workspace_id, "
            "(SELECT id FROM tasks_workspace WHERE slug = 'default')) "
            "FROM tasks_task t LEFT JOIN tasks_category c ON c.id = t.category_id"
        )
        return dict(cursor.fetchall())


def stored_workspaces() -> dict[int, int | None]:
    return dict(Task.objects.values_list("pk", "workspace_id"))


def legacy(count: int) -> list[Task]:
    """Rows as the code before the column wrote them: some in each category, some in none."""
    categories = [None, *Category.objects.order_by("slug")]
    return create_legacy_tasks(
        [Task(title=f"legacy {i}", category=categories[i % len(categories)]) for i in range(count)]
    )


# -- the rule ----------------------------------------------------------------------------------


def test_the_rule_in_python():
    rule = WorkspaceRule(default_workspace=7)

    assert rule.for_task(category_workspace=3) == 3
    assert rule.for_task(category_workspace=None) == 7


@pytest.mark.django_db
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=st.lists(st.integers(min_value=-1, max_value=3), min_size=1, max_size=20))
def test_the_database_expression_agrees_with_the_python_twin(shape):
    # given: three workspaces, a category in each, tasks in a category or none (-1)
    Task.objects.all().delete()
    default = Workspace.objects.default_id()
    spaces = [
        Workspace.objects.get_or_create(slug=f"w{i}", defaults={"name": f"W{i}"})[0]
        for i in range(3)
    ]
    categories = [
        Category.objects.get_or_create(
            slug=f"c{i}", defaults={"name": f"C{i}", "workspace": space}
        )[0]
        for i, space in enumerate(spaces)
    ]
    categories.append(Category.objects.get_or_create(slug="c-default", defaults={"name": "D"})[0])
    Task.objects.bulk_create(
        Task(title=f"t{i}", category=None if pick < 0 else categories[pick])
        for i, pick in enumerate(shape)
    )
    rule = WorkspaceRule(default)

    # when
    rows = Task.objects.annotate(by_database=rule.expression(Category)).values_list(
        "category__workspace", "by_database"
    )

    # then
    for category_workspace, by_database in rows:
        assert by_database == rule.for_task(category_workspace=category_workspace)


# -- the code that writes it (the dual-write) ----------------------------------------------------


@pytest.mark.django_db
def test_a_new_task_gets_its_categorys_workspace_or_the_default_one(reference_data):
    engineering = Category.objects.get(slug="engineering")

    in_category = Task.objects.create(title="a", category=engineering)
    without = Task.objects.create(title="b")

    assert in_category.workspace.slug == "product" == engineering.workspace.slug
    assert without.workspace.slug == "default"


@pytest.mark.parametrize("category_field", ["category", "category_id"])
@pytest.mark.django_db
def test_moving_a_task_to_another_category_moves_it_with_update_fields_too(
    reference_data, category_field
):
    task = Task.objects.create(title="a", category=Category.objects.get(slug="engineering"))

    task.category = Category.objects.get(slug="finance")
    task.save(update_fields=[category_field, "updated_at"])

    task.refresh_from_db()
    assert task.workspace.slug == "business"


@pytest.mark.django_db
def test_a_task_without_a_category_keeps_the_workspace_it_was_given(reference_data):
    business = Workspace.objects.get(slug="business")

    task = Task.objects.create(title="a", workspace=business)

    assert Task.objects.get(pk=task.pk).workspace == business


@pytest.mark.django_db
def test_bulk_create_derives_every_workspace_with_two_queries(reference_data):
    categories = list(Category.objects.all())
    tasks = [
        Task(title=f"t{i}", category=categories[i % len(categories)] if i % 3 else None)
        for i in range(30)
    ]

    with CaptureQueriesContext(connection) as queries:
        Task.objects.bulk_create(tasks)

    assert stored_workspaces() == workspaces_by_an_independent_query()
    assert len([q for q in queries.captured_queries if q["sql"].startswith("SELECT")]) == 2


@pytest.mark.django_db
def test_a_category_goes_to_the_default_workspace_unless_given_one():
    assert Category.objects.create(name="X", slug="x").workspace.slug == "default"


def test_editing_a_legacy_row_writes_its_workspace_even_with_update_fields(workspace_expand_step):
    # given: a row written before the column existed (NULL workspace)
    [task] = legacy(2)[1:]
    task = Task.objects.get(pk=task.pk)
    assert task.workspace_id is None

    # when: code saves only the title
    task.title = "edited"
    task.save(update_fields=["title"])

    # then
    assert stored_workspaces()[task.pk] == workspaces_by_an_independent_query()[task.pk]


# -- the backfill, through the generic command -----------------------------------------------------


def test_the_command_fills_every_null_row_by_the_rule(workspace_expand_step):
    # given: rows without a workspace, in every category and in none
    legacy(23)
    already = Task.objects.create(title="new code", category=Category.objects.get(slug="design"))

    # when
    output = backfill(batch_size="5")

    # then: the values of an independent query, in set-based batches
    assert stored_workspaces() == workspaces_by_an_independent_query()
    assert "rows with a NULL workspace" in output and "NULL rows left: 0." in output
    assert "Updated 23 rows in 5 batches" in output
    run = BackfillRun.objects.get()
    assert (run.name, run.status, run.rows_done) == (WORKSPACE.name, "succeeded", 23)
    assert run.parameters == {"default_workspace": Workspace.objects.default_id()}
    assert Task.objects.get(pk=already.pk).workspace.slug == "product"


def test_each_batch_is_one_update_with_a_subquery_never_a_row_in_python(workspace_expand_step):
    legacy(12)

    with CaptureQueriesContext(connection) as queries:
        backfill(batch_size="5")

    updates = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "tasks_task"')
    ]
    assert len(updates) == 3
    assert all('SET "workspace_id" = COALESCE((SELECT' in sql for sql in updates)


def test_a_dry_run_names_the_workspaces_and_writes_nothing(workspace_expand_step):
    legacy(16)

    output = backfill(dry_run=True)

    lines = {
        line.split()[0]: int(line.split()[1].replace(",", "")) for line in output.splitlines()[1:-1]
    }
    expected = {}
    for pk in workspaces_by_an_independent_query().values():
        name = Workspace.objects.get(pk=pk).name
        expected[name] = expected.get(name, 0) + 1
    assert lines == {**expected, "Total": 16}
    assert "Dry run (default workspace " in output and "Nothing was written." in output
    assert Task.objects.filter(workspace__isnull=True).count() == 16
    assert not BackfillRun.objects.exists()


def test_without_a_default_workspace_it_says_what_to_load_and_writes_nothing(workspace_expand_step):
    # given: no default workspace (the migration made one; someone deleted it)
    legacy(3)
    product = Workspace.objects.get(slug="product")
    Category.objects.update(workspace=product)
    Workspace.objects.filter(slug="default").delete()
    try:
        # when / then: the command and the data migration refuse, in one line each
        with pytest.raises(
            CommandError, match="No workspace with slug 'default'.*loaddata workspaces"
        ):
            backfill()
        with pytest.raises(CommandError, match="RunBackfill.*No workspace with slug 'default'"):
            call_command("migrate", "tasks", "0008_workspace_backfill", verbosity=0)
        assert Task.objects.filter(workspace__isnull=True).count() == 3
        assert not BackfillRun.objects.exists()
    finally:
        call_command("loaddata", "workspaces", verbosity=0)  # for the fixture's way forward


def test_before_the_expand_step_it_says_which_migration_to_apply(transactional_db):
    with rewind_to("0006_workspaces"):
        with pytest.raises(CommandError, match="migrate tasks 0007_workspace_expand"):
            backfill()


@pytest.mark.django_db
def test_after_the_contract_step_there_is_nothing_to_do():
    assert "workspace is already NOT NULL" in backfill()
    assert not BackfillRun.objects.exists()


# -- the admin and the workers ---------------------------------------------------------------------


@pytest.fixture
def alice(workspace_expand_step, client):
    """alice (Operators) logged in, between the workspace rollout's expand and contract."""
    user = get_user_model().objects.create_user("alice", password="x", is_staff=True)
    user.groups.set(Group.objects.filter(name__in=["Admin", "Operators"]))
    client.force_login(user)
    return client


def test_the_task_list_shows_and_filters_the_rows_not_backfilled_yet(alice):
    legacy(4)
    new = Task.objects.create(title="new", category=Category.objects.get(slug="finance"))

    page = alice.get(TASKS)
    not_set = alice.get(TASKS, {"workspace": "none"})
    business = alice.get(TASKS, {"workspace": str(new.workspace_id)})

    assert page.status_code == 200 and "not set yet" in page.content.decode()
    assert len(not_set.context["cl"].result_list) == 4
    assert [task.title for task in business.context["cl"].result_list] == ["new"]


def test_start_offers_every_registered_backfill_and_starts_the_chosen_one(alice):
    from django_tasks_db.models import DBTaskResult

    legacy(6)

    listing = alice.get(RUNS).content.decode()
    response = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": WORKSPACE.name}, follow=True
    )

    assert (
        f'<option value="{WORKSPACE.name}"' in listing and 'value="tasks.task.priority"' in listing
    )
    run = BackfillRun.objects.get()
    assert (run.name, run.status, run.origin, run.started_by) == (
        WORKSPACE.name,
        "pending",
        "admin",
        "alice",
    )
    assert str(DBTaskResult.objects.get().id) == run.worker_task_id
    assert f"Run #{run.pk} of {WORKSPACE.name} started on task workers" in response.content.decode()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("BACKFILL_WORKERS", 0, "0 workers: use 1 to 16"),
        (
            "BACKFILL_HEALTH_CHECK",
            "nowhere.check",
            "BACKFILL_HEALTH_CHECK = &#x27;nowhere.check&#x27;",
        ),
    ],
)
def test_start_with_bad_worker_settings_says_so_and_writes_nothing(
    alice, settings, setting, value, message
):
    legacy(3)
    setattr(settings, setting, value)

    response = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": WORKSPACE.name}, follow=True
    )

    assert message in response.content.decode()
    assert not BackfillRun.objects.exists()


def test_start_of_an_unknown_backfill_says_so_and_writes_nothing(alice):
    unknown = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": "nope"}, follow=True
    )

    assert "No backfill named &#x27;nope&#x27; is registered" in unknown.content.decode()
    assert not BackfillRun.objects.exists()


def test_a_worker_carries_out_a_workspace_run_started_in_the_background(workspace_expand_step):
    # given
    legacy(9)
    backfill(background=True)

    # when
    run_worker_until_idle()

    # then
    run = BackfillRun.objects.get()
    assert (run.name, run.status, run.origin, run.rows_done) == (
        WORKSPACE.name,
        "succeeded",
        "command",
        9,
    )
    assert stored_workspaces() == workspaces_by_an_independent_query()
    assert "worker" in set(run.events.values_list("origin", flat=True))
