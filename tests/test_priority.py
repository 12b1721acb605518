import datetime

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.models import Task
from tasks.priority import Priority, PriorityRule, priority_rank
from tasks.services import task_create
from tests.helpers import PriorityStepTask

TODAY = datetime.date(2026, 3, 10)
DAY = datetime.timedelta(days=1)


@pytest.mark.parametrize(
    ("status", "due_date", "expected"),
    [
        ("done", TODAY - 30 * DAY, "low"),  # done wins over overdue
        ("done", None, "low"),
        ("todo", None, "medium"),
        ("todo", TODAY - DAY, "urgent"),
        ("blocked", TODAY, "urgent"),  # due today
        ("todo", TODAY + DAY, "high"),
        ("in_progress", TODAY + 3 * DAY, "high"),
        ("todo", TODAY + 4 * DAY, "medium"),
        ("todo", TODAY + 14 * DAY, "medium"),
        ("todo", TODAY + 15 * DAY, "low"),
    ],
)
def test_the_rule_in_python(status, due_date, expected):
    assert PriorityRule(TODAY).for_task(status=status, due_date=due_date) == expected


def test_priority_values_are_stored_as_plain_strings():
    assert Priority.values == ["low", "medium", "high", "urgent"]


statuses = st.sampled_from(Task.Status.values)
# Day offsets from the reference date: anywhere near it, and every edge of the rule.
EDGES = [-1, 0, 1, 3, 4, 14, 15]
due_dates = st.one_of(st.none(), st.sampled_from(EDGES), st.integers(min_value=-40, max_value=40))
task_shapes = st.lists(st.tuples(statuses, due_dates), min_size=1, max_size=25)


@pytest.mark.django_db
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    today=st.dates(min_value=datetime.date(2000, 1, 1), max_value=datetime.date(2090, 1, 1)),
    shapes=task_shapes,
)
def test_the_database_expression_agrees_with_the_python_twin(today, shapes):
    # given: tasks around the reference date (on whichever database this run uses)
    Task.objects.all().delete()
    Task.objects.bulk_create(
        Task(
            title=f"t{i}",
            status=status,
            due_date=None if offset is None else today + datetime.timedelta(days=offset),
            priority=Priority.MEDIUM,
        )
        for i, (status, offset) in enumerate(shapes)
    )
    rule = PriorityRule(today)

    # when
    rows = Task.objects.annotate(by_database=rule.expression()).values_list(
        "status", "due_date", "by_database"
    )

    # then
    for status, due_date, by_database in rows:
        assert by_database == rule.for_task(status=status, due_date=due_date)


@pytest.mark.django_db
def test_sorting_by_priority_follows_rank_not_the_alphabet():
    for title, priority in [("a", "low"), ("b", "urgent"), ("c", "medium"), ("d", "high")]:
        task_create(title=title)
        Task.objects.filter(title=title).update(priority=priority)

    ordered = Task.objects.order_by_priority().values_list("priority", flat=True)

    assert list(ordered) == ["urgent", "high", "medium", "low"]


def test_a_row_not_backfilled_yet_ranks_below_every_priority(expand_step):
    # given: rows of the priority rollout's time, one still NULL
    for title, priority in [("a", "low"), ("b", None), ("c", "urgent")]:
        PriorityStepTask.objects.create(title=title, priority=priority)

    ranked = PriorityStepTask.objects.annotate(rank=priority_rank()).order_by("-rank")

    assert list(ranked.values_list("title", "rank")) == [("c", 4), ("a", 1), ("b", 0)]


@pytest.mark.django_db
def test_new_tasks_get_their_priority_from_the_rule():
    today = datetime.date.today()

    overdue = task_create(title="late", due_date=today - DAY)
    no_due_date = task_create(title="someday")
    done = task_create(title="finished", status="done", due_date=today)

    assert (overdue.priority, no_due_date.priority, done.priority) == ("urgent", "medium", "low")
    overdue.refresh_from_db()
    assert overdue.priority == "urgent"


@pytest.mark.django_db
def test_a_given_priority_is_kept():
    task = task_create(title="important", due_date=None)
    Task.objects.filter(pk=task.pk).update(priority="urgent")
    task.refresh_from_db()

    task.title = "still important"
    task.save()

    task.refresh_from_db()
    assert task.priority == "urgent"


@pytest.mark.django_db
def test_editing_a_row_read_without_a_priority_writes_it_even_with_update_fields():
    # given: a task as it was read before the contract step, while its priority was NULL
    task_create(title="legacy", status="done")
    task = Task.objects.get(title="legacy")
    task.priority = None

    # when: code saves only the title
    task.title = "legacy, edited"
    task.save(update_fields=["title"])

    # then
    task.refresh_from_db()
    assert (task.title, task.priority) == ("legacy, edited", "low")


@pytest.mark.django_db
def test_bulk_create_derives_the_priority_too():
    today = timezone.localdate()

    Task.objects.bulk_create(
        [Task(title="late", due_date=today), Task(title="given", priority="low")]
    )

    assert dict(Task.objects.values_list("title", "priority")) == {"late": "urgent", "given": "low"}


@pytest.mark.django_db
def test_the_database_expression_agrees_at_every_edge_of_the_rule():
    # given: every status with no due date and with a due date on each edge of the rule
    Task.objects.bulk_create(
        Task(
            title=f"{status} {offset}",
            status=status,
            due_date=None if offset is None else TODAY + offset * DAY,
        )
        for status in Task.Status.values
        for offset in [None, -30, *EDGES, 40]
    )
    rule = PriorityRule(TODAY)

    # when
    rows = list(
        Task.objects.annotate(by_database=rule.expression()).values_list(
            "status", "due_date", "by_database"
        )
    )

    # then
    assert len(rows) == 4 * 10
    assert [by_db for *_, by_db in rows] == [
        rule.for_task(status=status, due_date=due_date) for status, due_date, _ in rows
    ]
