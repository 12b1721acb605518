"""Migration operations that name a registered backfill: finish it, or make sure it is finished.

A migration imports only these, never the app's code::

    from backfills.operations import EnsureBackfillFinished, RunBackfill

    operations = [RunBackfill("tasks.task.priority")]

The backfill is looked up by name in the registry when the migration runs, and filled with the
migration's historical models, so the migration keeps working as the app's models move on. Keep
a backfill registered for as long as a migration names it.
"""

from django.core.management.base import CommandError

from backfills.engine import BackfillBusy, BackfillFailed
from backfills.orchestration import finish_in_migration
from backfills.registry import BackfillNotReady, UnknownBackfill, get_definition
from migration_safety.operations import DatabaseOperation, ensure_not_in_transaction
from migration_safety.timeouts import without_statement_timeout


class BackfillNotFinished(CommandError):
    """Rows still need the backfill's value: the migration refuses and changes nothing.

    A ``CommandError``, so ``manage.py migrate`` (Django's or ours) prints its one line and
    exits with 1.
    """


class BackfillOperation(DatabaseOperation):
    """An operation that names a registered backfill (it is looked up when it runs)."""

    reduces_to_sql = False

    def __init__(self, name: str) -> None:
        self.name = name

    def definition(self):
        """The registered backfill, or a one-line error: keep it registered while a migration
        names it."""
        try:
            return get_definition(self.name)
        except UnknownBackfill as exc:
            raise CommandError(
                f"{type(self).__name__}({self.name!r}): {exc} A migration that names a backfill "
                "needs it registered (in its app's backfills.py)."
            ) from exc

    @property
    def migration_name_fragment(self) -> str:
        return self.name.replace(".", "_")


class RunBackfill(BackfillOperation):
    """Fill every row the backfill ``name`` still has pending, batch by batch.

    Carries on the run the command or the workers left open (same parameters, same ledger), or
    starts one; a quick no-op where the backfill already finished. Rows still arriving after
    four walks (code that predates the column) are left to the next step, the run open; a run
    an operator pauses or cancels meanwhile makes the migration fail, unrecorded. Each batch
    commits on its own, so use it in a non-atomic migration: in a transaction the batches' row
    locks would be held on the whole table until the migration commits. The scans it needs run
    without ``manage.py migrate``'s short statement_timeout (each batch sets its own). Reversing
    keeps the filled values: they are valid in every earlier state.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        definition = self.definition()
        connection = schema_editor.connection
        # Each batch commits on its own: in a transaction they would hold their row locks on the
        # whole table until the migration commits.
        ensure_not_in_transaction(schema_editor, f"RunBackfill({self.name!r})")
        try:
            with without_statement_timeout(connection):
                result = finish_in_migration(definition, apps=to_state.apps, using=connection.alias)
        except (BackfillNotReady, BackfillBusy) as exc:
            raise CommandError(f"RunBackfill({self.name!r}): {exc}; nothing was migrated.") from exc
        except BackfillFailed as exc:
            raise CommandError(
                f"RunBackfill({self.name!r}) stopped: {exc}. Every committed batch is "
                "checkpointed; migrate again to resume."
            ) from exc
        # Rows that keep arriving behind the walks come from code that predates the column,
        # which may still run here (priority's contract fills its rows with a default; a
        # contract without one checks with EnsureBackfillFinished): the run stays open for
        # the next step. A run an operator stopped is not finished: this migration is not.
        if result.stopped in ("paused", "cancelled"):
            raise BackfillNotFinished(
                f"RunBackfill({self.name!r}) stopped before the end: the run was "
                f"{result.stopped} meanwhile; it keeps its checkpoint, and this migration is not "
                f"recorded. Resume it (manage.py backfill {self.name} --resume, or start a new "
                "one), then migrate again."
            )

    def describe(self) -> str:
        return f"Finish the backfill {self.name}"


class EnsureBackfillFinished(BackfillOperation):
    """Refuse, changing nothing, while any row still needs the backfill ``name``'s value.

    For a contract step that is safe only once the backfill is done (a NOT NULL without a
    database default to fall back on): it fails with :class:`BackfillNotFinished`, which says
    how many rows are left and what to run, instead of a constraint violation half-way
    through. Put it first in the migration. Reversing does nothing.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        definition = self.definition()
        using = schema_editor.connection.alias
        model = definition.model_class(to_state.apps)
        with without_statement_timeout(schema_editor.connection):
            # One scan, whether rows are left or not.
            left = definition.pending_rows(model, using=using).count()
            if not left:
                return
        raise BackfillNotFinished(
            f"{left:,} {'row' if left == 1 else 'rows'} of {model._meta.db_table} still "
            f"{'has' if left == 1 else 'have'} {definition.pending_label}: "
            f"the backfill {self.name} is not finished, so this migration changed nothing. "
            f"Finish it (manage.py backfill {self.name} --database {using}), then migrate "
            "again. If such rows keep appearing, code that predates the column is still "
            "writing them: retire it first."
        )

    def describe(self) -> str:
        return f"Refuse unless the backfill {self.name} is finished"
