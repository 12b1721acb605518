import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from backfills.models import BackfillRun
from tasks.models import Category, Task
from tasks.pagination import EstimatedCountPaginator

pytestmark = pytest.mark.django_db
TASKS = reverse("admin:tasks_task_changelist")


def staff_in(group: str, username: str = "someone"):
    user = get_user_model().objects.create_user(username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get(TASKS)

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_users_who_are_not_staff_cannot_enter(client, reference_data):
    user = get_user_model().objects.create_user("outsider", password="x", is_staff=False)
    client.force_login(user)

    response = client.get(TASKS)

    assert response.status_code == 302


def test_a_demo_staff_user_logs_in_with_the_documented_password(client, demo_data):
    assert client.login(username="carol", password="taskproj-demo")

    assert client.get(TASKS).status_code == 200


def test_task_list_shows_columns_filters_search_and_date_hierarchy(client, demo_data):
    client.force_login(staff_in("Member"))

    response = client.get(TASKS)

    assert response.status_code == 200
    html = response.content.decode()
    for column in (
        "column-title",
        "column-status",
        "column-priority_level",
        "column-due_date",
        "column-category",
        "column-workspace_name",
    ):
        assert column in html
    assert "column-assignee" in html
    assert 'id="changelist-search"' in html
    assert "xfull" not in html  # no "show all N" total (no full count)
    assert "Plan the priority rollout" in html
    assert 'class="toplinks"' in html  # the due-date hierarchy


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status__exact=blocked", {"Fix the login redirect loop"}),
        ("?q=budget", {"Prepare the quarterly budget"}),
        ("?due_date__isnull=True", {"Fix the login redirect loop", "Prepare the quarterly budget"}),
    ],
)
def test_task_list_filters_and_search(client, demo_data, query, expected):
    client.force_login(staff_in("Member"))

    response = client.get(TASKS + query)

    assert response.status_code == 200
    shown = {task.title for task in response.context["cl"].result_list}
    assert shown == expected


def test_sorting_the_task_list_by_priority_follows_rank_not_the_alphabet(client, demo_data):
    # (a superuser: the action checkbox is the list's column 0, so the priority is column 3)
    client.force_login(get_user_model().objects.create_superuser("root", password="x"))
    Task.objects.all().delete()
    for level in ("low", "urgent", "medium", "high"):
        Task.objects.create(title=level, priority=level)

    descending = client.get(TASKS + "?o=-3")  # the priority column
    ascending = client.get(TASKS + "?o=3")
    urgent = client.get(TASKS + "?priority=urgent")

    assert [t.priority for t in descending.context["cl"].result_list] == [
        "urgent",
        "high",
        "medium",
        "low",
    ]
    assert [t.priority for t in ascending.context["cl"].result_list] == [
        "low",
        "medium",
        "high",
        "urgent",
    ]
    assert [t.title for t in urgent.context["cl"].result_list] == ["urgent"]


def test_task_list_filters_by_workspace_and_shows_it_read_only(client, demo_data):
    client.force_login(staff_in("Member"))
    task = Task.objects.get(title="Sketch the new task board")

    listing = client.get(TASKS + f"?workspace={task.workspace_id}")
    page = client.get(reverse("admin:tasks_task_change", args=[task.pk]))

    assert {t.workspace_id for t in listing.context["cl"].result_list} == {task.workspace_id}
    assert "field-workspace" in page.content.decode()
    assert "workspace" not in page.context["adminform"].form.fields


def test_task_list_filters_by_category(client, demo_data):
    client.force_login(staff_in("Member"))
    design = Task.objects.get(title="Sketch the new task board").category

    response = client.get(TASKS + f"?category__id__exact={design.pk}")

    assert [t.title for t in response.context["cl"].result_list] == ["Sketch the new task board"]


def test_members_can_edit_tasks_but_not_delete_them_or_add_categories(client, demo_data):
    client.force_login(staff_in("Member"))
    task = Task.objects.get(pk=1)

    assert client.get(reverse("admin:tasks_task_change", args=[task.pk])).status_code == 200
    assert client.get(reverse("admin:tasks_task_delete", args=[task.pk])).status_code == 403
    assert client.get(reverse("admin:tasks_category_add")).status_code == 403


def test_managers_can_delete_tasks_and_add_categories(client, demo_data):
    client.force_login(staff_in("Manager"))
    task = Task.objects.get(pk=1)

    assert client.get(reverse("admin:tasks_task_delete", args=[task.pk])).status_code == 200
    assert client.get(reverse("admin:tasks_category_add")).status_code == 200
    assert client.post(reverse("admin:tasks_task_delete", args=[task.pk]), {"post": "yes"})
    assert not Task.objects.filter(pk=task.pk).exists()


def test_a_staff_user_without_a_role_sees_nothing(client, demo_data):
    user = get_user_model().objects.create_user("norole", password="x", is_staff=True)
    client.force_login(user)

    assert client.get(TASKS).status_code == 403


def test_category_admin_lists_categories(client, demo_data):
    client.force_login(staff_in("Admin"))

    response = client.get(reverse("admin:tasks_category_changelist"))

    assert response.status_code == 200
    assert "Engineering" in response.content.decode()


def test_task_autocomplete_finds_categories_and_users(client, demo_data):
    client.force_login(staff_in("Member"))
    url = reverse("admin:autocomplete")
    common = {"app_label": "tasks", "model_name": "task"}

    categories = client.get(url, {**common, "field_name": "category", "term": "eng"}).json()
    users = client.get(url, {**common, "field_name": "assignee", "term": "bob"}).json()

    assert [r["text"] for r in categories["results"]] == ["Engineering"]
    assert [r["text"] for r in users["results"]] == ["bob"]


@pytest.mark.postgres
def test_task_list_does_not_count_a_big_table_on_postgresql(client, demo_data):
    # given: a table big enough for the estimate, with fresh statistics
    call_command("seed", tasks=12_000, users=2, seed=1, no_progress=True, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")
    client.force_login(staff_in("Member"))

    # when
    with CaptureQueriesContext(connection) as queries:
        response = client.get(TASKS)

    # then
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert response.status_code == 200
    assert not any("tasks_task" in sql for sql in counts)
    assert abs(response.context["cl"].result_count - 12_008) < 1_200


@pytest.mark.postgres
def test_the_default_ordering_is_served_by_an_index_on_postgresql(demo_data):
    call_command("seed", tasks=5_000, users=2, seed=1, no_progress=True, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")
        sql, params = Task.objects.all()[:100].query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "tasks_task_pkey" in plan
    assert "Sort" not in plan


# -- the task list at scale: sorting, search and counts --------------------------------------

# Column numbers of the task list for a Member (no actions, so no checkbox column first).
TITLE, STATUS, PRIORITY, DUE_DATE, CATEGORY, WORKSPACE, ASSIGNEE = range(7)
# The index each sortable column is read through (migration 0010).
SORT_INDEXES = {
    TITLE: "tasks_task_title_id_idx",
    STATUS: "tasks_task_status_id_idx",
    PRIORITY: "tasks_task_priority_rank_idx",
    DUE_DATE: "tasks_task_due_date_id_idx",
}


def shown(response) -> list[tuple[str, int]]:
    return [(task.title, task.pk) for task in response.context["cl"].result_list]


def test_a_sort_by_one_column_breaks_ties_by_id_in_the_same_direction(client, reference_data):
    # given: two tasks of the same title and one before them
    client.force_login(staff_in("Member"))
    b1, b2, a = (Task.objects.create(title=title) for title in ("B", "B", "A"))

    # when
    ascending = client.get(TASKS + f"?o={TITLE}")
    descending = client.get(TASKS + f"?o=-{TITLE}")

    # then: (title, id) read forwards, and backwards
    assert shown(ascending) == [("A", a.pk), ("B", b1.pk), ("B", b2.pk)]
    assert shown(descending) == [("B", b2.pk), ("B", b1.pk), ("A", a.pk)]


def test_the_list_sorts_by_one_column_at_a_time_and_only_by_indexed_ones(client, demo_data):
    client.force_login(staff_in("Member"))

    by_status_then_title = client.get(TASKS + f"?o={STATUS}.{TITLE}")
    by_category = client.get(TASKS + f"?o={CATEGORY}")

    # a second column in the URL (a click on another header) is not sorted by: the first is
    cl = by_status_then_title.context["cl"]
    assert cl.get_ordering_field_columns() == {STATUS: "asc"}
    assert [task.status for task in cl.result_list] == sorted(t.status for t in cl.result_list)
    # the category, workspace and assignee columns have no sort link, and the URL is ignored
    html = by_category.content.decode()
    for column in ("category", "workspace_name", "assignee"):
        assert re.search(rf'<th scope="col" class="column-{column}">', html), column
    assert 'class="sortable column-title' in html
    newest_first = list(Task.objects.order_by("-id").values_list("pk", flat=True))
    assert [task.pk for task in by_category.context["cl"].result_list] == newest_first


def test_the_list_offers_no_facet_counts(client, demo_data):
    client.force_login(staff_in("Member"))

    response = client.get(TASKS + "?_facets=True")

    assert not response.context["cl"].add_facets
    assert "Show counts" not in response.content.decode()


def seed_analysed(tasks: int) -> None:
    """``tasks`` seeded tasks with fresh planner statistics (PostgreSQL)."""
    call_command("seed", tasks=tasks, users=2, seed=1, no_progress=True, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")


def plan_of(queryset) -> str:
    return queryset.explain()


@pytest.mark.postgres
def test_each_sortable_column_is_read_through_its_index_both_ways(client, demo_data):
    # given: enough rows that sorting them would cost more than reading an index
    seed_analysed(5_000)
    client.force_login(staff_in("Member"))

    for column, index in SORT_INDEXES.items():
        for order in (f"{column}", f"-{column}"):
            # when: the page as the changelist queries it
            cl = client.get(TASKS + f"?o={order}").context["cl"]
            plan = plan_of(cl.queryset[: cl.list_per_page])

            # then: read in order from the column's index, never sorted
            assert index in plan, (order, plan)
            assert "Sort" not in plan, (order, plan)


@pytest.mark.postgres
def test_the_search_is_served_by_the_trigram_index(client, demo_data):
    # given: a big table and a few tasks with a rare word in their title
    seed_analysed(12_000)
    for n in range(3):
        Task.objects.create(title=f"Paint the zebra crossing {n}")
    client.force_login(staff_in("Member"))

    # when
    response = client.get(TASKS + "?q=Zebra")

    # then: found case-insensitively, and the rows matching are found through the index
    cl = response.context["cl"]
    assert sorted(task.title for task in cl.result_list) == [
        f"Paint the zebra crossing {n}" for n in range(3)
    ]
    assert "tasks_task_title_trgm_idx" in plan_of(cl.queryset.order_by().values("pk"))


def test_a_searched_list_has_no_date_hierarchy_to_bound(client, demo_data):
    client.force_login(staff_in("Member"))

    with CaptureQueriesContext(connection) as queries:
        searched = client.get(TASKS + "?q=budget")
    filtered = client.get(TASKS + "?status__exact=blocked")

    # then: no MIN/MAX of the due date over the matches, and the due-date filter still there
    assert [task.title for task in searched.context["cl"].result_list] == [
        "Prepare the quarterly budget"
    ]
    assert not any("MIN(" in q["sql"].upper() for q in queries.captured_queries)
    assert 'class="toplinks"' not in searched.content.decode()
    assert 'data-filter-title="due date"' in searched.content.decode()
    assert 'class="toplinks"' in filtered.content.decode()


@pytest.mark.postgres
def test_a_filtered_list_shows_its_exact_count_where_the_statistics_say_otherwise(
    client, demo_data
):
    # given: a big table whose statistics know nothing of a new category and its 3 tasks
    seed_analysed(12_000)
    design = Category.objects.create(name="Murals", slug="murals")
    for n in range(3):
        Task.objects.create(title=f"Mural {n}", category=design)
    client.force_login(staff_in("Member"))

    # when
    by_category = client.get(TASKS + f"?category__id__exact={design.pk}")
    blocked = client.get(TASKS + "?status__exact=blocked")
    searched = client.get(TASKS + "?q=mural")

    # then: each filtered or searched list counts its rows exactly
    assert by_category.context["cl"].result_count == 3
    assert "3 tasks" in by_category.content.decode()
    assert blocked.context["cl"].result_count == Task.objects.filter(status="blocked").count()
    assert searched.context["cl"].result_count == 3
    assert "3 results" in searched.content.decode()


@pytest.mark.postgres
def test_a_huge_filtered_result_is_estimated_without_counting_its_rows(
    client, demo_data, monkeypatch
):
    # given: a bound of 1,000 rows (10,000 in production) and a filter matching thousands
    monkeypatch.setattr(EstimatedCountPaginator, "exact_count_below", 1_000)
    seed_analysed(12_000)
    todo = Task.objects.filter(status="todo").count()
    client.force_login(staff_in("Member"))

    # when
    with CaptureQueriesContext(connection) as queries:
        response = client.get(TASKS + "?status__exact=todo")

    # then: no COUNT reads the tasks, and the page says the total is the planner's estimate
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert not any("tasks_task" in sql for sql in counts)
    estimate = response.context["cl"].result_count
    assert abs(estimate - todo) < todo * 0.2
    assert f"about {estimate:,} tasks" in response.content.decode()


@pytest.mark.postgres
def test_a_big_result_the_statistics_think_small_is_counted_up_to_the_bound(
    client, demo_data, monkeypatch
):
    # given: a bound of 1,000 rows, and 2,000 tasks retitled after the statistics were taken
    monkeypatch.setattr(EstimatedCountPaginator, "exact_count_below", 1_000)
    seed_analysed(12_000)
    Task.objects.filter(pk__in=Task.objects.order_by("pk").values("pk")[:2_000]).update(
        title="Paint the mural"
    )
    client.force_login(staff_in("Member"))

    # when
    with CaptureQueriesContext(connection) as queries:
        response = client.get(TASKS + "?q=mural")

    # then: the planner's guess is not believed; the count stops at the bound and says so
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "LIMIT 1001" in counts[0]
    assert response.context["cl"].result_count == 1_001
    assert "about 1,001 results" in response.content.decode()


@pytest.mark.postgres
def test_a_result_too_big_to_count_is_paged_only_through_its_first_rows(
    client, demo_data, monkeypatch
):
    # given: a bound of 1,000 rows (10 pages of 100) and 12,000 tasks, estimated
    monkeypatch.setattr(EstimatedCountPaginator, "exact_count_below", 1_000)
    seed_analysed(12_000)
    client.force_login(staff_in("Member"))

    # when
    first = client.get(TASKS)
    last = client.get(TASKS + "?p=10")
    beyond = client.get(TASKS + "?p=11")

    # then: pages 1-10 are linked and served, page 11 (an OFFSET of 1,000 more rows) is not
    pages = {int(p) for p in re.findall(r'href="\?p=(\d+)"', first.content.decode())}
    assert max(pages) == 10
    assert len(last.context["cl"].result_list) == 100
    assert beyond.status_code == 302 and "e=1" in beyond.url


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # sqlmigrate of a non-atomic migration
def test_the_admin_index_migration_builds_and_drops_concurrently():
    out = StringIO()

    call_command("sqlmigrate", "tasks", "0010_admin_indexes", stdout=out)

    sql = out.getvalue()
    creates = re.findall(r"CREATE (?:UNIQUE )?INDEX[^;]*", sql)
    assert len(creates) == 5 and all("CONCURRENTLY" in create for create in creates)
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "tasks_task_due_date_idx"' in sql
    assert "BEGIN;" not in sql
    with connection.cursor() as cursor:  # (sqlmigrate leaves out an extension already there)
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        assert cursor.fetchone() == (1,)


# -- backfill runs -----------------------------------------------------------------------------


def test_a_pending_run_no_worker_has_picked_up_says_so_and_what_to_do(client, demo_data):
    # given: a run enqueued for task workers, and one a worker is carrying out
    client.force_login(get_user_model().objects.get(username="alice"))
    waiting = BackfillRun.objects.create(
        name="tasks.task.priority", status="pending", background=True, origin="admin"
    )
    running = BackfillRun.objects.create(
        name="tasks.task.workspace", status="running", background=True, origin="admin",
        lease_owner="worker on host-a", heartbeat_at=timezone.now(),
    )  # fmt: skip

    # when
    waiting_page = client.get(reverse("admin:backfills_backfillrun_change", args=[waiting.pk]))
    running_page = client.get(reverse("admin:backfills_backfillrun_change", args=[running.pk]))

    # then
    notice = waiting_page.content.decode()
    assert 'id="waiting-for-worker"' in notice
    assert "No worker has picked this run up yet" in notice
    assert "manage.py db_worker --queue-name backfill" in notice
    assert 'id="waiting-for-worker"' not in running_page.content.decode()
