"""The registry of backfills: each declared once, found by name by everything else.

The app that owns the table declares its backfills in its ``backfills.py`` (imported when Django
starts, as ``admin.py`` is)::

    register(BackfillDefinition(
        name="tasks.task.priority",           # app.model.field, by convention
        model="tasks.Task",
        field="priority",
        value=lambda model, parameters: …,     # the database expression to fill it with
        parameters=lambda model, using: {…},   # fixed when a run starts, stored on the run
    ))

The command (``manage.py backfill NAME``), the admin, the task workers and the migration
operations (``RunBackfill(NAME)``) look the definition up by its name and know nothing else about
the column. ``model`` may be a historical model (in a migration): ``value`` and ``parameters``
receive the model to use and must reach other models through its relations, never by import.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps as global_apps
from django.db import models
from django.db.models import Q

from backfills.engine import Backfill


class UnknownBackfill(LookupError):
    """No backfill of that name is registered."""


class DuplicateBackfill(ValueError):
    """A backfill of that name is already registered."""


class BackfillNotReady(Exception):
    """What a run's parameters need is missing (say what to do in the message)."""


@dataclass(frozen=True)
class BackfillDefinition:
    """One backfill: fill ``model.field`` with ``value`` on the rows matching ``pending``.

    ``value(model, parameters)`` returns the expression of one set-based UPDATE (it may use
    subqueries; it runs for every batch inside the database, never per row in Python).
    ``parameters(model, using)`` returns a JSON-serialisable dict fixed when a run starts, or
    raises :class:`BackfillNotReady`. ``pending`` defaults to ``field IS NULL``.
    """

    name: str
    model: str | type[models.Model]
    field: str
    value: Callable[[type[models.Model], Mapping[str, Any]], Any]
    pending: Q | None = None
    parameters: Callable[[type[models.Model], str], dict[str, Any]] | None = None
    description: str = ""
    # How messages name the pending rows ("rows with ..."); default: "a NULL <field>".
    pending_description: str = ""
    key: str = "pk"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            object.__setattr__(self, "model", self.model._meta.label)
        if self.pending is None:
            object.__setattr__(self, "pending", Q(**{f"{self.field}__isnull": True}))

    @property
    def pending_is_null(self) -> bool:
        """Whether the pending rows are simply those where the field is NULL (the default)."""
        return self.pending == Q(**{f"{self.field}__isnull": True})

    @property
    def pending_label(self) -> str:
        """What the pending rows have, for messages: "a NULL priority"."""
        return self.pending_description or f"a NULL {self.field}"

    def model_class(self, apps=None) -> type[models.Model]:
        """The model (from ``apps``, a migration's historical registry, or the current one)."""
        return (apps or global_apps).get_model(self.model)

    def pending_rows(self, model: type[models.Model], *, using: str) -> models.QuerySet:
        """The rows of ``model`` (current or historical) that still need the value."""
        return model._default_manager.using(using).filter(self.pending)

    def new_parameters(self, model: type[models.Model], *, using: str) -> dict[str, Any]:
        """The parameters of a run starting now."""
        return {} if self.parameters is None else self.parameters(model, using)

    def walk(self, model: type[models.Model]) -> Backfill:
        """The rows this backfill walks on ``model``, with no value: for looking at them (which
        needs no run's parameters), not for filling them."""
        return Backfill(
            model=model, field=self.field, value=None, pending=self.pending, key=self.key
        )

    def backfill(self, model: type[models.Model], parameters: Mapping[str, Any]) -> Backfill:
        """What the engine fills for a run with these ``parameters``, on ``model``."""
        return Backfill(
            model=model,
            field=self.field,
            value=self.value(model, parameters),
            pending=self.pending,
            key=self.key,
        )


_DEFINITIONS: dict[str, BackfillDefinition] = {}


def register(definition: BackfillDefinition) -> BackfillDefinition:
    """Make ``definition`` known by its name; a name may be registered once."""
    if definition.name in _DEFINITIONS:
        raise DuplicateBackfill(
            f"a backfill named {definition.name!r} is already registered; give each backfill "
            "its own name (app.model.field by convention)"
        )
    _DEFINITIONS[definition.name] = definition
    return definition


def unregister(name: str) -> None:
    """Forget the backfill ``name`` (tests that register their own)."""
    _DEFINITIONS.pop(name, None)


def get_definition(name: str) -> BackfillDefinition:
    """The backfill registered as ``name``; UnknownBackfill, naming the known ones, otherwise."""
    try:
        return _DEFINITIONS[name]
    except KeyError:
        known = ", ".join(sorted(_DEFINITIONS)) or "none"
        raise UnknownBackfill(
            f"No backfill named {name!r} is registered (registered: {known}). "
            "See manage.py backfill --list."
        ) from None


def definitions() -> list[BackfillDefinition]:
    """Every registered backfill, by name."""
    return [_DEFINITIONS[name] for name in sorted(_DEFINITIONS)]
