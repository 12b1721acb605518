import datetime
import importlib

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models
from django.db.migrations.operations import CreateModel
from django.test.utils import CaptureQueriesContext

from tasks.models import Category, Task
from tasks.services import task_create, task_update

pytestmark = pytest.mark.django_db


def test_category_is_found_by_its_slug_natural_key(category):
    # when
    found = Category.objects.get_by_natural_key("engineering")

    # then
    assert found == category
    assert category.natural_key() == ("engineering",)


def test_missing_category_natural_key_says_which_fixture_to_load():
    with pytest.raises(Category.DoesNotExist, match="loaddata categories"):
        Category.objects.get_by_natural_key("nope")


def test_category_slug_is_unique(category):
    with pytest.raises(IntegrityError):
        Category.objects.create(name="Other", slug="engineering")


def test_task_has_no_priority_column_before_its_migrations():
    # 0001_initial must not contain priority: it arrives with its own rollout migrations.
    initial = importlib.import_module("tasks.migrations.0001_initial").Migration
    create_task = next(
        op for op in initial.operations if isinstance(op, CreateModel) and op.name == "Task"
    )

    assert "priority" not in dict(create_task.fields)
    assert "title" in dict(create_task.fields)


def test_new_task_defaults_to_todo_and_records_its_timestamps(category):
    # when
    task = task_create(title="Write the runbook", category=category)

    # then
    task.refresh_from_db()
    assert task.status == Task.Status.TODO
    assert task.created_at is not None
    assert task.updated_at >= task.created_at
    assert task.description == ""
    assert task.due_date is None and task.assignee is None


def test_task_title_is_required_and_at_most_200_characters():
    with pytest.raises(ValidationError) as missing:
        task_create(title="")
    with pytest.raises(ValidationError) as too_long:
        task_create(title="x" * 201)

    assert "title" in missing.value.message_dict
    assert "title" in too_long.value.message_dict
    assert Task.objects.count() == 0


def test_task_status_must_be_one_of_the_four_choices():
    with pytest.raises(ValidationError) as error:
        task_create(title="Ship it", status="archived")

    assert "status" in error.value.message_dict
    assert [value for value, _ in Task.Status.choices] == ["todo", "in_progress", "blocked", "done"]


def test_task_update_saves_changes_and_bumps_updated_at():
    # given
    task = task_create(title="Draft", due_date=datetime.date(2026, 1, 1))
    before = task.updated_at

    # when
    task_update(task=task, status=Task.Status.DONE, title="Final")

    # then
    task.refresh_from_db()
    assert (task.title, task.status) == ("Final", "done")
    assert task.updated_at > before


def test_task_update_rejects_unknown_fields():
    task = task_create(title="Draft")

    with pytest.raises(TypeError, match="created_at"):
        task_update(task=task, created_at=None)


def test_tasks_are_listed_newest_first():
    first = task_create(title="first")
    second = task_create(title="second")

    assert list(Task.objects.all()) == [second, first]


def test_deleting_a_category_keeps_its_tasks(category):
    task = task_create(title="Keep me", category=category)

    category.delete()

    task.refresh_from_db()
    assert task.category is None


@pytest.mark.parametrize("kind", ["year", "month"])
@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_dates_by_index_probes_match_djangos_distinct_query(kind, order):
    # given: due dates across a year boundary, gaps, and a task without one
    for due in ["2024-06-30", "2025-12-31", "2026-01-01", "2026-03-15", "2026-03-20", None]:
        task_create(
            title=f"due {due}",
            due_date=None if due is None else datetime.date.fromisoformat(due),
        )
    tasks = Task.objects.filter(title__startswith="due")

    # when
    ours = list(tasks.dates("due_date", kind, order))
    djangos = list(models.QuerySet.dates(tasks, "due_date", kind, order))

    # then
    assert ours == djangos
    assert len(ours) == {"year": 3, "month": 4}[kind]


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_the_days_of_one_month_are_probed_not_read_with_distinct(order):
    # given: tasks on three days of March, two on the same day, and one in April
    for due in ["2026-03-01", "2026-03-15", "2026-03-15", "2026-03-31", "2026-04-01"]:
        task_create(title=f"due {due}", due_date=datetime.date.fromisoformat(due))
    march = Task.objects.filter(due_date__year=2026, due_date__month=3)

    # when
    with CaptureQueriesContext(connection) as queries:
        ours = list(march.dates("due_date", "day", order))

    # then: Django's answer, without a DISTINCT over the month's rows
    assert ours == list(models.QuerySet.dates(march, "due_date", "day", order))
    assert len(ours) == 3
    assert not any("DISTINCT" in q["sql"].upper() for q in queries.captured_queries)


def test_days_over_a_span_longer_than_a_month_are_read_with_distinct():
    for due in ["2026-01-01", "2026-03-15"]:
        task_create(title=f"due {due}", due_date=datetime.date.fromisoformat(due))

    with CaptureQueriesContext(connection) as queries:
        days = list(Task.objects.dates("due_date", "day"))

    assert days == [datetime.date(2026, 1, 1), datetime.date(2026, 3, 15)]
    assert sum("DISTINCT" in q["sql"].upper() for q in queries.captured_queries) == 1


def test_dates_of_an_empty_selection_is_empty():
    assert list(Task.objects.none().dates("due_date", "year")) == []
    assert list(Task.objects.filter(title="nothing").dates("due_date", "month")) == []
