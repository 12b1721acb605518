"""Rollout plans: the steps of one column's rollout, as data, for ``manage.py rehearse``.

The app that owns the table declares each plan once, in its ``rollouts.py`` (found when Django
starts, as ``admin.py`` is):

    register(Rollout(name="priority", table="tasks_task", column="priority", set_up=…,
                     steps=(Step("expand", ("migrate", "tasks", "0002_priority_expand"), …), …),
                     application=TasksApplication))

A plan says how to make a scratch database look like production before the rollout (``set_up``:
commands, the seed sized by the rehearsal), which commands an operator runs and in which order
(``steps``), which code runs meanwhile (``application``: what each kind of application request
sends the database) and what the table must look like at the end.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol

# A query as the application sends it: (kind, sql, params) -> rows (None if it failed). Each
# call is timed and its error recorded under ``kind`` ("old insert", "new list page", ...).
Query = Callable[[str, str, Sequence[Any]], list[tuple] | None]


class Application(Protocol):
    """The code that runs while a rollout happens, as the SQL each request sends."""

    def prepare(self, query: Query) -> None:
        """Read what the requests need (ids, reference rows) before the traffic starts."""

    def old_write(self, rng: Random, query: Query) -> None:
        """One write by the code that predates the column (it never names it)."""

    def new_write(self, rng: Random, query: Query) -> None:
        """One write by the code that writes the column (running once it has shipped)."""

    def read(self, rng: Random, query: Query, *, new_code: bool) -> None:
        """One page read by the old code, or by the new code once it has shipped."""


@dataclass(frozen=True)
class Step:
    """One rollout step: a management command, as an operator runs it."""

    name: str
    command: tuple[str, ...]
    # A transaction holds a lock on the table, longer than lock_timeout, as the step starts.
    blocked: bool = False
    # The code that writes the column runs once this step is done.
    ships_new_code: bool = False
    # The code that predates the column no longer runs from this step on (no app server runs
    # it any more): needed before a contract step that has no database default to fall back on.
    retires_old_code: bool = False


@dataclass(frozen=True)
class Rollout:
    """One column's rollout on ``table`` (see the module docstring)."""

    name: str
    table: str
    column: str
    application: Callable[[], Application]
    steps: tuple[Step, ...]
    # Commands that make a scratch database look like production before the rollout. "{tasks}"
    # and "{seed}" in an argument stand for the rehearsal's --tasks and --seed.
    set_up: tuple[tuple[str, ...], ...] = ()
    # Indexes that must exist, and be valid, at the end.
    indexes: tuple[str, ...] = ()
    # Rows filled by the rollout's backfill so far on a database (None: not reported).
    progress: Callable[[str], int] | None = None
    description: str = ""


class UnknownRollout(LookupError):
    """No rollout of that name is registered."""


_ROLLOUTS: dict[str, Rollout] = {}


def register(rollout: Rollout) -> Rollout:
    """Make ``rollout`` known to ``manage.py rehearse --rollout NAME``; its name must be new."""
    if rollout.name in _ROLLOUTS:
        raise ValueError(f"a rollout named {rollout.name!r} is already registered")
    _ROLLOUTS[rollout.name] = rollout
    return rollout


def unregister(name: str) -> None:
    """Forget the rollout ``name`` (tests that register their own)."""
    _ROLLOUTS.pop(name, None)


def get_rollout(name: str) -> Rollout:
    """The rollout registered as ``name``; UnknownRollout, naming the known ones, otherwise."""
    try:
        return _ROLLOUTS[name]
    except KeyError:
        known = ", ".join(sorted(_ROLLOUTS)) or "none"
        raise UnknownRollout(f"no rollout named {name!r} is registered (known: {known})") from None


def rollouts() -> list[Rollout]:
    """Every registered rollout, in the order they were registered."""
    return list(_ROLLOUTS.values())
