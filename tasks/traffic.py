"""The tasks application's requests, as the SQL each generation of its code sends: what
``manage.py rehearse`` plays while a rollout runs (see migration_safety.rehearsal).

A generation of the code knows some of the columns that arrived on the live table: the code
before a rollout never names the rollout's column; the code that ships with its expand step
writes it on every insert and edit (from the rule's Python twin, as ``Task.save`` does) and
reads by it. Written as SQL rather than through the models, because the current models know
every column, and a rehearsal starts from a schema that has fewer.
"""

import datetime
import random

from django.utils import timezone

from migration_safety.rollouts import Query
from tasks.priority import Priority, PriorityRule
from tasks.workspace import DEFAULT_WORKSPACE_SLUG, WorkspaceRule

PAGE_SIZE = 100  # the admin's list_per_page
STATUSES = ("todo", "in_progress", "blocked", "done")
BASE_COLUMNS = (
    "title",
    "description",
    "status",
    "due_date",
    "category_id",
    "created_at",
    "updated_at",
)
# The page of a priority's tasks soonest due first is served by this index (migration 0005);
# before it exists, the page sorts every task of the priority (a few million rows at 10M),
# and reads that long keep the contract from its lock.
DUE_DATE_INDEX = "tasks_task_priority_due_idx"


class TasksApplication:
    """The application during the rollout of ``column`` ("priority" or "workspace"); the code
    before it knows the columns of ``known`` (the rollouts before it)."""

    def __init__(self, column: str, *, known: tuple[str, ...] = ()) -> None:
        self.column = column
        self.known = known
        self.max_id = 1
        self.category_ids: list[int] = []
        self.workspace_of: dict[int, int] | None = None
        self.workspaces: WorkspaceRule | None = None
        self.due_date_index_ready = False

    # -- what the requests need -----------------------------------------------------------

    def prepare(self, query: Query) -> None:
        self.max_id = (query("prepare", "SELECT max(id) FROM tasks_task", []) or [[1]])[0][0] or 1
        rows = query("prepare", "SELECT id FROM tasks_category ORDER BY id", []) or []
        self.category_ids = [row[0] for row in rows]

    def workspace_rule(self, query: Query) -> WorkspaceRule | None:
        """The categories' workspaces and the default one, read once the new code runs."""
        if self.workspaces is None:
            rows = query("new read", "SELECT id, workspace_id FROM tasks_category", [])
            default = query(
                "new read",
                "SELECT id FROM tasks_workspace WHERE slug = %s",
                [DEFAULT_WORKSPACE_SLUG],
            )
            if rows is None or not default:
                return None
            self.workspace_of = dict(rows)
            self.workspaces = WorkspaceRule(default[0][0])
        return self.workspaces

    def due_date_page_ready(self, query: Query) -> bool:
        """Whether the index that serves the due-date page exists and is valid: the code
        offers that page only then (a feature that ships with its index, not before it)."""
        if not self.due_date_index_ready:
            rows = query(
                "new read",
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
                [DUE_DATE_INDEX],
            )
            self.due_date_index_ready = bool(rows and rows[0][0])
        return self.due_date_index_ready

    def values_of(self, columns: tuple[str, ...], task: dict, query: Query) -> list | None:
        """The values the code writes for ``columns`` of ``task``, from the rules' twins."""
        values = []
        for column in columns:
            if column == "priority":
                rule = PriorityRule(timezone.localdate())
                values.append(rule.for_task(status=task["status"], due_date=task["due_date"]))
            elif column == "workspace_id":
                rule = self.workspace_rule(query)
                if rule is None:
                    return None
                category = task["category_id"]
                workspace = None if category is None else self.workspace_of.get(category)
                values.append(rule.for_task(category_workspace=workspace))
            else:
                values.append(task[column])
        return values

    # -- the three kinds of request -------------------------------------------------------

    def old_write(self, rng: random.Random, query: Query) -> None:
        """An insert naming only the columns the old code knows, or an edit of one row."""
        choice = rng.random()
        if choice < 0.4:
            self.insert("old insert", self.old_columns, rng, query)
        elif choice < 0.7:
            query(
                "old update",
                "UPDATE tasks_task SET title = %s, updated_at = now() WHERE id = %s",
                [f"renamed {rng.randint(1, 10**9)}", self.random_id(rng)],
            )
        else:
            query(
                "old update",
                "UPDATE tasks_task SET status = %s, updated_at = now() WHERE id = %s",
                [rng.choice(STATUSES), self.random_id(rng)],
            )

    def new_write(self, rng: random.Random, query: Query) -> None:
        """An insert that names the new column, or an edit that fills it where it is NULL (the
        dual-write of ``Task.save(update_fields=...)``)."""
        if rng.random() < 0.5:
            self.insert("new insert", self.new_columns, rng, query)
            return
        column = self.db_column
        rows = query(
            "new read",
            f"SELECT id, status, due_date, category_id, {column} FROM tasks_task WHERE id = %s",
            [self.random_id(rng)],
        )
        if not rows:
            return
        pk, _, due_date, category_id, current = rows[0]
        task = {"status": rng.choice(STATUSES), "due_date": due_date, "category_id": category_id}
        sets, values = ["status = %s", "updated_at = now()"], [task["status"]]
        if current is None:
            filled = self.values_of((column,), task, query)
            if filled is None:
                return
            sets.append(f"{column} = %s")
            values += filled
        query("new update", f"UPDATE tasks_task SET {', '.join(sets)} WHERE id = %s", [*values, pk])

    def read(self, rng: random.Random, query: Query, *, new_code: bool) -> None:
        """One list page: by status, newest first, as the old code reads it; by the new column
        once the new code is out (and a priority's tasks soonest due first, once its index is
        there)."""
        columns = ", ".join(f"t.{name}" for name in ("id", *self.old_columns, "assignee_id"))
        select = (
            f"SELECT {columns}, c.name, u.username FROM tasks_task t "
            "LEFT JOIN tasks_category c ON c.id = t.category_id "
            "LEFT JOIN auth_user u ON u.id = t.assignee_id "
        )
        limit = f" LIMIT {PAGE_SIZE}"
        if new_code and rng.random() < 0.5:
            kind = "new list page"
            select = select.replace(" FROM", f", t.{self.db_column} FROM", 1)
            if self.column == "priority":
                value, choice = rng.choice(Priority.values), rng.random()
                if choice < 0.2:
                    sql, params = f"{select}ORDER BY t.id DESC", []
                elif choice < 0.4 and self.due_date_page_ready(query):
                    kind = "new due-date page"
                    order = "t.due_date ASC NULLS LAST, t.id DESC"
                    sql, params = f"{select}WHERE t.priority = %s ORDER BY {order}", [value]
                else:
                    sql, params = f"{select}WHERE t.priority = %s ORDER BY t.id DESC", [value]
            else:
                if self.workspace_rule(query) is None or not self.workspace_of:
                    return
                workspace = rng.choice(sorted(set(self.workspace_of.values())))
                sql, params = f"{select}WHERE t.workspace_id = %s ORDER BY t.id DESC", [workspace]
            query(kind, sql + limit, params)
            return
        status = rng.choice(STATUSES)
        query("old list page", f"{select}WHERE t.status = %s ORDER BY t.id DESC{limit}", [status])

    # -- helpers ---------------------------------------------------------------------------

    @property
    def db_column(self) -> str:
        return "workspace_id" if self.column == "workspace" else self.column

    @property
    def old_columns(self) -> tuple[str, ...]:
        return (*BASE_COLUMNS, *self.known)

    @property
    def new_columns(self) -> tuple[str, ...]:
        return (*self.old_columns, self.db_column)

    def insert(self, kind: str, columns: tuple[str, ...], rng: random.Random, query: Query) -> None:
        now = timezone.now()
        task = {
            "title": f"{kind} task {rng.randint(1, 10**9)}",
            "description": "",
            "status": "todo",
            "due_date": self.random_due_date(rng),
            "category_id": rng.choice(self.category_ids) if self.category_ids else None,
            "created_at": now,
            "updated_at": now,
        }
        values = self.values_of(columns, task, query)
        if values is None:
            return
        placeholders = ", ".join(["%s"] * len(columns))
        query(
            kind,
            f"INSERT INTO tasks_task ({', '.join(columns)}) VALUES ({placeholders})",
            values,
        )

    def random_id(self, rng: random.Random) -> int:
        return rng.randint(1, self.max_id)

    def random_due_date(self, rng: random.Random) -> datetime.date | None:
        if rng.random() < 0.2:
            return None
        return timezone.localdate() + datetime.timedelta(days=rng.randint(-30, 60))
