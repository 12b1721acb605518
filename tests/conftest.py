"""Test set-up shared by the whole suite.

The suite runs once per database: DATABASE_URL picks it (SQLite by default). Tests marked
``postgres`` need a real PostgreSQL server and are skipped, with the reason shown, on a SQLite
run. On a PostgreSQL run whose server cannot be reached every test is skipped with the reason,
except under CI=true, where an unreachable server fails the run.
"""

import os

import psycopg
import pytest
from django.conf import settings

from tasks.models import Category
from tasks.reference_fixtures import REFERENCE_FIXTURES
from tests.helpers import rewind_to

# Loaded by `manage.py loaddata` in this order: categories name their workspace.

IS_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def postgres_unreachable_reason() -> str | None:
    """Why the configured PostgreSQL server cannot be used, or None if it can."""
    db = settings.DATABASES["default"]
    try:
        psycopg.connect(
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            # The server's maintenance database: the one Django connects to to create test_<NAME>.
            dbname="postgres",
            connect_timeout=3,
        ).close()
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return f"PostgreSQL at {db.get('HOST')}:{db.get('PORT')} is unreachable: {first_line}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_POSTGRES:
        reason = postgres_unreachable_reason()
        if reason is None:
            return
        if os.environ.get("CI", "").lower() == "true":
            pytest.exit(f"{reason} (CI=true: PostgreSQL is required)", returncode=1)
        skip = pytest.mark.skip(reason=f"{reason}; start it or unset DATABASE_URL")
        for item in items:
            item.add_marker(skip)
        return
    skip_pg = pytest.mark.skip(
        reason="needs PostgreSQL: runs in the PostgreSQL pass (DATABASE_URL=postgres://…)"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip_pg)


@pytest.fixture
def transactional_db(transactional_db):
    """pytest-django's, plus the rows the migrations create: each transactional test starts
    from a flushed database, which would have lost the default workspace (migration 0006)."""
    from tasks.models import Workspace
    from tasks.workspace import DEFAULT_WORKSPACE_SLUG

    Workspace.objects.get_or_create(slug=DEFAULT_WORKSPACE_SLUG, defaults={"name": "Default"})
    yield


@pytest.fixture
def reference_data(db) -> None:
    """The reference fixtures, as `manage.py loaddata workspaces categories roles` loads them."""
    from django.core.management import call_command

    call_command("loaddata", *REFERENCE_FIXTURES, verbosity=0)


@pytest.fixture
def demo_data(reference_data) -> None:
    """The Operators role and the demo users and tasks, on top of the reference data."""
    from django.core.management import call_command

    call_command("loaddata", "operators", "demo", verbosity=0)


@pytest.fixture
def category(db) -> Category:
    return Category.objects.create(name="Engineering", slug="engineering")


@pytest.fixture
def migrator(transactional_db):
    """Migrate tasks to a step; always leaves the database fully migrated afterwards."""
    from django.core.management import call_command

    def migrate(step: str) -> None:
        call_command("migrate", "tasks", step, verbosity=0)

    yield migrate
    call_command("migrate", "tasks", verbosity=0)


@pytest.fixture
def expand_step(transactional_db):
    """The database between the priority rollout's expand and contract steps: priority exists
    and may be NULL (tasks at 0002_priority_expand; the Task model of that step is
    ``tests.helpers.PriorityStepTask``)."""
    with rewind_to("0002_priority_expand"):
        yield


@pytest.fixture
def workspace_expand_step(transactional_db):
    """The database between the workspace rollout's expand and contract steps: workspace_id
    exists and may be NULL (tasks at 0007_workspace_expand); today's models work here."""
    with rewind_to("0007_workspace_expand"):
        yield
