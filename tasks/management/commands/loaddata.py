"""Django's ``loaddata``, for the project's fixtures: the documented ones load in any order
(``loaddata demo roles categories workspaces operators`` works), and a fixture that cannot load
yet, or any fixture that fails, ends in one ``CommandError`` line and loads nothing."""

from django.core.management.base import CommandError
from django.core.management.commands import loaddata
from django.core.serializers.base import DeserializationError
from django.db import DatabaseError

from commandline.base import known_database
from commandline.databases import first_line
from tasks.reference_fixtures import CannotLoadYet, check_loadable, in_loading_order


class Command(loaddata.Command):
    help = loaddata.Command.help + (
        " The project's fixtures (workspaces, categories, roles, operators, demo) load in any "
        "order; each says what to migrate or load first if it cannot load yet."
    )

    def handle(self, *fixture_labels: str, **options) -> None:
        using = known_database(options["database"])
        labels = in_loading_order(fixture_labels)
        try:
            check_loadable(labels, using=using)
        except CannotLoadYet as exc:
            raise CommandError(str(exc)) from exc
        try:
            super().handle(*labels, **options)
        except (DeserializationError, DatabaseError) as exc:
            # loaddata runs in one transaction: a failure leaves the database as it was.
            raise CommandError(f"{first_line(exc)} Nothing was loaded.") from exc
