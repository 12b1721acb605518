"""The project's documented fixtures: what each needs loaded before it, the migration that
creates the tables and columns it writes, and how to tell that its rows are already there.

``manage.py loaddata`` (tasks' override) reads this to load the documented set in any order
and to refuse, in one line naming the fixture or the migration, what cannot load yet.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder


@dataclass(frozen=True)
class ReferenceFixture:
    """One fixture of ``fixtures/``, as the runbook loads it."""

    name: str
    # Fixtures whose rows it refers to (by natural key).
    needs: tuple[str, ...]
    # The migration that creates the last table or column it writes: (app label, name).
    step: tuple[str, str]
    # For a fixture others need: its model and the field that identifies its rows.
    key: tuple[str, str] | None = None

    @property
    def path(self) -> Path:
        return Path(settings.FIXTURE_DIRS[0]) / f"{self.name}.json"

    def is_loaded(self, *, using: str) -> bool:
        """Whether every row of the fixture is in the database (by its identifying field)."""
        assert self.key is not None, f"{self.name} is not a fixture others need"
        label, field = self.key
        values = {
            row["fields"][field]
            for row in json.loads(self.path.read_text())
            if row["model"] == label
        }
        model = apps.get_model(label)
        present = model._default_manager.using(using).filter(**{f"{field}__in": values}).count()
        return present == len(values)


# In an order that loads: each after what it needs.
FIXTURES = {
    fixture.name: fixture
    for fixture in (
        ReferenceFixture(
            "workspaces",
            needs=(),
            step=("tasks", "0006_workspaces"),
            key=("tasks.workspace", "slug"),
        ),
        ReferenceFixture(
            "categories",
            needs=("workspaces",),
            step=("tasks", "0006_workspaces"),
            key=("tasks.category", "slug"),
        ),
        ReferenceFixture(
            "roles", needs=(), step=("tasks", "0006_workspaces"), key=("auth.group", "name")
        ),
        ReferenceFixture(
            "operators", needs=(), step=("backfills", "0001_initial"), key=("auth.group", "name")
        ),
        ReferenceFixture(
            "demo",
            needs=("workspaces", "categories", "roles", "operators"),
            step=("tasks", "0007_workspace_expand"),
        ),
    )
}
# What `manage.py seed` loads when there is no reference data yet.
REFERENCE_FIXTURES = ("workspaces", "categories", "roles")


class CannotLoadYet(Exception):
    """A documented fixture that cannot be loaded in this database at this step."""


def in_loading_order(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The documented fixtures among ``labels`` in the order they load, then the others as given."""
    documented = [name for name in FIXTURES if name in labels]
    return (*documented, *(label for label in labels if label not in FIXTURES))


def check_loadable(labels: tuple[str, ...], *, using: str) -> None:
    """Raise CannotLoadYet naming the migration to run or the fixture to load first."""
    applied = MigrationRecorder(connections[using]).applied_migrations()
    # The furthest step any of them needs (migration names are numbered): migrating to it
    # lets all of them load.
    waiting = sorted(
        (FIXTURES[label] for label in labels if label in FIXTURES),
        key=lambda fixture: fixture.step[1],
    )
    for fixture in reversed(waiting):
        if fixture.step not in applied:
            app_label, migration = fixture.step
            raise CannotLoadYet(
                f"Fixture {fixture.name!r} needs migration {app_label}.{migration}, which is not "
                f"applied to database {using!r}: run manage.py migrate {app_label} {migration} "
                "(or manage.py migrate) first."
            )
    missing = needed_first(labels, using=using)
    if missing:
        waiting = [name for name in labels if set(needs_of(name)) & set(missing)]
        raise CannotLoadYet(
            f"{'Fixture' if len(waiting) == 1 else 'Fixtures'} {', '.join(waiting)} "
            f"{'needs' if len(waiting) == 1 else 'need'} {', '.join(missing)} loaded first: "
            f"manage.py loaddata {' '.join(in_loading_order((*missing, *labels)))}"
        )


def needs_of(label: str) -> tuple[str, ...]:
    """The fixtures a label needs loaded before it (none for a fixture the project does not
    document)."""
    return FIXTURES[label].needs if label in FIXTURES else ()


def needed_first(labels: tuple[str, ...], *, using: str) -> list[str]:
    """The fixtures that ``labels`` need, that are neither among them nor loaded already."""
    needed = {need for name in labels for need in needs_of(name)}
    return [
        name
        for name in FIXTURES
        if name in needed and name not in labels and not FIXTURES[name].is_loaded(using=using)
    ]
