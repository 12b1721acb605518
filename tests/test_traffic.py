"""The application the rehearsal plays (tasks/traffic.py): a page ships with the index that
serves it, never before it."""

import random

import pytest
from django.db import connection

from tasks.traffic import DUE_DATE_INDEX, TasksApplication

DUE_DATE_PAGE = "new due-date page"


def legacy_rows(count: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_task (title, description, status, due_date, priority, "
            "created_at, updated_at) "
            "SELECT 'task ' || n, '', 'todo', current_date + (n %% 90), "
            "(ARRAY['low', 'medium', 'high', 'urgent'])[1 + n %% 4], now(), now() "
            "FROM generate_series(1, %s) AS n",
            [count],
        )
        cursor.execute("ANALYZE tasks_task")


def pages_read(application: TasksApplication, reads: int = 300) -> dict[str, list[str]]:
    """The SQL of each kind the new code sent over ``reads`` list pages."""
    sent: dict[str, list[str]] = {}
    rng = random.Random(7)
    with connection.cursor() as cursor:

        def query(kind, sql, params=()):
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            sent.setdefault(kind, []).append(cursor.mogrify(sql, params))
            return rows

        for _ in range(reads):
            application.read(rng, query, new_code=True)
    return sent


def plan_of(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.postgres
def test_the_due_date_page_waits_for_its_valid_index_and_is_then_served_by_it(migrator):
    # given: the priority contracted, its index not built, then built but left invalid
    migrator("0004_priority_contract")
    legacy_rows(20_000)
    application = TasksApplication("priority")
    application.prepare(lambda kind, sql, params: None)

    # then: the new code reads by priority, but not soonest due first
    before = pages_read(application)
    assert before["new list page"] and DUE_DATE_PAGE not in before
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX {DUE_DATE_INDEX} ON tasks_task (priority, due_date)")
        cursor.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            [DUE_DATE_INDEX],
        )
    assert DUE_DATE_PAGE not in pages_read(application)

    # when: the index migration builds it
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {DUE_DATE_INDEX}")
    migrator("0005_priority_index")

    # then: the page is sent, and the index serves it (no sort of the priority's rows)
    after = pages_read(application)
    assert len(after[DUE_DATE_PAGE]) > 20
    plan = plan_of(after[DUE_DATE_PAGE][0])
    assert f"Index Scan using {DUE_DATE_INDEX}" in plan, plan
    assert "Seq Scan on tasks_task" not in plan, plan
