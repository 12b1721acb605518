import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tasks.models import Task

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
