"""factory_boy factories: the one definition of realistic tasks, users, categories and
workspaces.

Deterministic under a seed: call ``factory.random.reseed_random(seed)`` first (the seeder
does). Random values come from factory_boy's seeded generator, never from ``random`` directly.
"""

import datetime
import re

import factory
from django.conf import settings
from django.utils import timezone
from django.utils.text import slugify
from factory.django import DjangoModelFactory
from factory.random import randgen

from tasks.models import Category, Task, Workspace

# Weights of each status among generated tasks: most work is open, a good share is done.
STATUS_WEIGHTS = {
    Task.Status.TODO: 0.35,
    Task.Status.IN_PROGRESS: 0.25,
    Task.Status.BLOCKED: 0.10,
    Task.Status.DONE: 0.30,
}
NO_DUE_DATE_SHARE = 0.15
DUE_DAYS_RANGE = (-60, 120)  # from two months overdue to four months ahead

TITLE_VERBS = (
    "Review", "Fix", "Update", "Write", "Plan", "Prepare", "Migrate", "Test", "Document",
    "Refactor", "Deploy", "Investigate", "Draft", "Schedule", "Clean up", "Automate",
)  # fmt: skip


def random_status() -> str:
    """A status drawn with STATUS_WEIGHTS."""
    return randgen.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]


def random_due_date(today: datetime.date) -> datetime.date | None:
    """A due date between two months overdue and four months ahead of ``today``, or none for
    some tasks."""
    if randgen.random() < NO_DUE_DATE_SHARE:
        return None
    return today + datetime.timedelta(days=randgen.randint(*DUE_DAYS_RANGE))


class WorkspaceFactory(DjangoModelFactory):
    """A workspace; reuses the row when the slug exists."""

    class Meta:
        model = Workspace
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Workspace {n}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))


class CategoryFactory(DjangoModelFactory):
    """A category in a workspace of its own; reuses the row when the slug exists."""

    class Meta:
        model = Category
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Category {n}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))
    description = factory.Faker("sentence", nb_words=10)
    workspace = factory.SubFactory(WorkspaceFactory)


class UserFactory(DjangoModelFactory):
    """A user who cannot log in (no usable password); reuses the row when the username exists."""

    class Meta:
        model = settings.AUTH_USER_MODEL
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    username = factory.LazyAttributeSequence(
        lambda o, n: re.sub(r"[^a-z0-9.]", "", f"{o.first_name}.{o.last_name}.{n}".lower())
    )
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    # An unusable password: hashing a real one costs ~0.5 s per user with PBKDF2.
    password = "!seeded-user"
    is_active = True


class TaskFactory(DjangoModelFactory):
    """A task with a realistic title, a spread of statuses and due dates, in a category (its
    workspace is the category's, set when it is saved)."""

    class Meta:
        model = Task

    class Params:
        phrase = factory.Faker("bs")
        # The day due dates are drawn around: pass one for the same tasks on any day.
        today = factory.LazyFunction(timezone.localdate)

    title = factory.LazyAttribute(lambda o: f"{randgen.choice(TITLE_VERBS)} {o.phrase}")
    description = factory.Faker("paragraph", nb_sentences=2)
    status = factory.LazyFunction(random_status)
    due_date = factory.LazyAttribute(lambda o: random_due_date(o.today))
    category = factory.SubFactory(CategoryFactory)
    assignee = factory.SubFactory(UserFactory)
