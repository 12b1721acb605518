"""manage.py lint_migrations: fail when a migration would block a live table on PostgreSQL."""

from django.apps import apps
from django.core.management.base import CommandError, CommandParser
from django.db import connections

from commandline.base import CheckedCommand
from migration_safety.lint import SquawkFailed, SquawkMissing, lint_sql, migration_sql, project_apps


class Command(CheckedCommand):
    help = (
        "Lint the SQL of every migration (as sqlmigrate prints it for PostgreSQL) with squawk, "
        "using .squawk.toml. Exits with 1 and lists the problems if any migration is unsafe."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "app_labels",
            nargs="*",
            help="Apps to lint (default: every app of the project that has migrations).",
        )
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        using = self.database_alias(options["database"])
        if connections[using].vendor != "postgresql":
            raise CommandError(
                "lint_migrations needs PostgreSQL (the SQL it lints is PostgreSQL's): "
                "set DATABASE_URL=postgres://… or pass --database."
            )
        labels = options["app_labels"] or project_apps()
        unknown = [
            label for label in labels if label not in {c.label for c in apps.get_app_configs()}
        ]
        if unknown:
            raise CommandError(
                f"No installed app is labelled {', '.join(map(repr, unknown))}: name apps by "
                "their label (see INSTALLED_APPS), or leave them out to lint every app."
            )
        sql = {}
        for app_label in labels:
            sql.update(migration_sql(app_label, using=using))
        try:
            findings = lint_sql(sql)
        except (SquawkMissing, SquawkFailed) as exc:
            raise CommandError(str(exc)) from exc
        for finding in findings:
            self.stderr.write(str(finding))
        if findings:
            raise CommandError(
                f"{len(findings)} unsafe statement(s) in {len(sql)} migrations; see "
                "docs/zero-downtime.md, 'Adding the next column'."
            )
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(f"{len(sql)} migrations linted with squawk: no problems.")
            )
