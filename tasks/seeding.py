"""Seeding: reference data from the JSON fixtures, volume from the factories.

Building one task through factory_boy (declaration resolution, Faker text) costs several times
what the server takes to ingest a row, and saving it through the ORM more again, so a
per-object factory + ``bulk_create`` loop is far from what the database can take. The seeder
therefore lets the factory build a pool of whole task prototypes, spread over the run so that
the server ingests rows meanwhile, and draws each row from it, with its category and assignee
drawn per row; it streams the rows with COPY (PostgreSQL) or executemany (SQLite) in one
transaction per batch. Every value is converted for COPY once — each prototype when it is
built, each category, workspace, assignee and the timestamp before the first row — so that a
row costs the seeder a few list draws and a join, and the server, not the seeder, sets the
pace. Its measure is a COPY of the very rows it wrote (benchmarks/seed.py). Every value still
comes from ``TaskFactory``; memory is bounded by the pool and one batch, whatever the number
of rows.
"""

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import factory.random
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone
from factory.random import randgen

from backfills.inspection import column_state
from tasks.bulk_insert import BulkInsert
from tasks.factories import TaskFactory, UserFactory
from tasks.models import Category, Task, Workspace
from tasks.priority import PriorityRule
from tasks.reference_fixtures import REFERENCE_FIXTURES
from tasks.workspace import WorkspaceRule

ROLE_NAMES = ("Admin", "Manager", "Member")
# Distinct factory-built prototypes per run; rows beyond this reuse them in random order.
PROTOTYPE_POOL_SIZE = 20_000
UNASSIGNED_SHARE = 0.10
UNCATEGORISED_SHARE = 0.05
TASK_FIELDS = (
    "title",
    "description",
    "status",
    "due_date",
    "category",
    "assignee",
    "created_at",
    "updated_at",
)
# Written after those, and only when the tasks are seeded as the application writes them
# today (each column may be left out: the rows the application wrote before it existed).
PRIORITY_FIELD = "priority"
WORKSPACE_FIELD = "workspace"


class ReferenceDataMissing(Exception):
    """The reference fixtures are missing and cannot be loaded at this step of the schema."""


@dataclass(frozen=True)
class SeedResult:
    """What a seed run wrote and how long it took."""

    tasks: int
    users: int
    loaded_reference_data: bool
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Tasks written per second of the whole run."""
        return self.tasks / self.seconds if self.seconds > 0 else 0.0


def ensure_reference_data(*, using: str) -> bool:
    """Load the workspaces, categories and roles fixtures unless they are there; True if it
    loaded them."""
    has_categories = Category.objects.using(using).exists()
    has_roles = Group.objects.using(using).filter(name__in=ROLE_NAMES).count() == len(ROLE_NAMES)
    if has_categories and has_roles:
        return False
    if column_state(Category, "workspace", using=using) == "missing":
        raise ReferenceDataMissing(
            "There are no categories or roles yet, and the reference fixtures are written for "
            "today's schema: load them on the fully migrated database (manage.py migrate; "
            "manage.py loaddata workspaces categories roles), then migrate back to this step."
        )
    call_command("loaddata", *REFERENCE_FIXTURES, database=using, verbosity=0)
    return True


def create_users(count: int, *, using: str) -> list[int]:
    """Create ``count`` users from UserFactory (reusing existing usernames); return their ids."""
    if count == 0:
        return []
    User = get_user_model()
    UserFactory.reset_sequence(0)
    users = UserFactory.build_batch(count)
    usernames = [user.username for user in users]
    existing = set(
        User.objects.using(using).filter(username__in=usernames).values_list("username", flat=True)
    )
    User.objects.db_manager(using).bulk_create([u for u in users if u.username not in existing])
    return list(
        User.objects.using(using)
        .filter(username__in=usernames)
        .order_by("username")
        .values_list("pk", flat=True)
    )


class Prototypes:
    """Task prototypes built by TaskFactory while the rows are written, drawn per row.

    Building one takes the factory about 100 us, so building a whole pool before the first row
    would leave the server idle for seconds; here the pool of ``min(rows, size)`` prototypes is
    built spread over the run, one prototype due every ``rows / size`` rows, while the server
    ingests the rows before it. Row ``i`` is the prototype built for it, if one was due, or else
    one drawn from those built so far: every prototype is written at least once, and with no
    more rows than ``size`` each row is its own. A prototype is (title, description, status,
    due date), and the priority from the rule on ``today`` if ``with_priority``, each value
    already converted by ``cell`` (BulkInsert.cell) as the rows will hold it.
    """

    def __init__(
        self,
        rows: int,
        *,
        size: int,
        today: datetime.date,
        with_priority: bool,
        cell: Callable[[Any], Any],
    ):
        self.rows, self.size, self.today, self.cell = rows, min(rows, size), today, cell
        self.rule = PriorityRule(today) if with_priority else None
        self.built: list[tuple] = []

    def for_row(self, index: int) -> tuple:
        """The prototype of row ``index`` (rows are drawn in order, from 0)."""
        if len(self.built) < self.size and len(self.built) * self.rows // self.size <= index:
            self.built.append(self.build())
            return self.built[-1]
        return randgen.choice(self.built)

    def build(self) -> tuple:
        """One new prototype from TaskFactory (not saved)."""
        task = TaskFactory.build(category=None, assignee=None, today=self.today)
        row = (task.title, task.description, task.status, task.due_date)
        if self.rule is not None:
            row = (*row, self.rule.for_task(status=task.status, due_date=task.due_date))
        return tuple(self.cell(value) for value in row)


def task_rows(
    count: int,
    *,
    prototypes: Prototypes,
    category_ids: list[int],
    user_ids: list[int],
    workspaces: WorkspaceRule | None = None,
    workspace_of: dict[int, int] | None = None,
    created_at: datetime.datetime,
    cell: Callable[[Any], Any],
) -> Iterator[tuple]:
    """Yield ``count`` task rows in TASK_FIELDS order, created (and last updated) at
    ``created_at``, then the prototype's priority (if it has one), then the workspace by
    ``workspaces``, the rule (if given), from ``workspace_of``, the workspace of each category;
    every value converted by ``cell``, each distinct one once."""
    now = cell(created_at)

    # Per category: its value and the tail of its row (its workspace, when rows carry one).
    def tail(category: int | None) -> tuple:
        if workspaces is None:
            return ()
        category_workspace = None if category is None else workspace_of[category]
        return (cell(workspaces.for_task(category_workspace=category_workspace)),)

    categories = [(cell(category), tail(category)) for category in category_ids]
    uncategorised = (cell(None), tail(None))
    assignees = [cell(user) for user in user_ids]
    unassigned = cell(None)
    for index in range(count):
        prototype = prototypes.for_row(index)
        category, category_tail = uncategorised
        if categories and randgen.random() >= UNCATEGORISED_SHARE:
            category, category_tail = randgen.choice(categories)
        assignee = unassigned
        if assignees and randgen.random() >= UNASSIGNED_SHARE:
            assignee = randgen.choice(assignees)
        yield (*prototype[:4], category, assignee, now, now, *prototype[4:], *category_tail)


def seed(
    *,
    tasks: int,
    users: int,
    seed: int,
    batch_size: int,
    using: str,
    with_priority: bool = True,
    with_workspace: bool = True,
    today: datetime.date,
    on_batch: Callable[[int], None] | None = None,
) -> SeedResult:
    """Make sure reference data exists, then create ``users`` users and ``tasks`` tasks.

    The same ``seed`` and ``today`` (the reference date: due dates and priorities are drawn
    around it, and the tasks are created at its start) on the same database state give the
    same rows, on any day. Each batch of
    ``batch_size`` tasks is written in its own transaction; ``on_batch`` is told its size.
    Without ``with_priority`` (``with_workspace``) tasks are written as the application wrote
    them before the priority (workspace) column existed: the INSERT does not name it.
    """
    started = time.perf_counter()
    factory.random.reseed_random(seed)
    loaded = ensure_reference_data(using=using)
    categories = Category.objects.using(using).order_by("slug")
    category_ids = list(categories.values_list("pk", flat=True))
    fields = (*TASK_FIELDS, PRIORITY_FIELD) if with_priority else TASK_FIELDS
    workspaces = workspace_of = None
    if with_workspace:  # before any write: without a default workspace nothing is seeded
        fields = (*fields, WORKSPACE_FIELD)
        workspaces = WorkspaceRule(Workspace.objects.db_manager(using).default_id())
        workspace_of = dict(categories.values_list("pk", "workspace"))
    user_ids = create_users(users, using=using)
    insert = BulkInsert(Task, fields, using=using)
    prototypes = Prototypes(
        tasks,
        size=PROTOTYPE_POOL_SIZE,
        today=today,
        with_priority=with_priority,
        cell=insert.cell,
    )
    rows = task_rows(
        tasks,
        prototypes=prototypes,
        category_ids=category_ids,
        user_ids=user_ids,
        workspaces=workspaces,
        workspace_of=workspace_of,
        created_at=timezone.make_aware(datetime.datetime.combine(today, datetime.time.min)),
        cell=insert.cell,
    )
    written = 0
    while written < tasks:
        size = min(batch_size, tasks - written)
        written += insert.write(islice(rows, size))
        if on_batch is not None:
            on_batch(size)
    return SeedResult(
        tasks=written,
        users=len(user_ids),
        loaded_reference_data=loaded,
        seconds=time.perf_counter() - started,
    )
