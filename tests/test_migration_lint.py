"""The migration lint (squawk over sqlmigrate SQL) passes ours and catches unsafe ones."""

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, migrations, models
from django.db.migrations.loader import MigrationLoader

from migration_safety.lint import lint_sql, project_apps
from migration_safety.operations import IgnoreLint

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def sample_sql(*operations) -> str:
    """The SQL an (atomic) migration of ``operations`` on top of ours would run, as sqlmigrate
    prints it."""
    state = MigrationLoader(connection).project_state(("tasks", "0009_workspace_contract"))
    migration = migrations.Migration("9999_unsafe_sample", "tasks")
    migration.operations = list(operations)
    with connection.schema_editor(collect_sql=True, atomic=True) as editor:
        migration.apply(state, editor, collect_sql=True)
    return "BEGIN;\n" + "\n".join(editor.collected_sql) + "\nCOMMIT;\n"


def rules(sql: str) -> set[str]:
    return {finding.rule for finding in lint_sql({"tasks.9999_unsafe_sample": sql})}


@pytest.mark.django_db(transaction=True)  # sqlmigrate of a non-atomic migration
def test_our_migrations_pass_the_lint():
    out = StringIO()

    call_command("lint_migrations", stdout=out, stderr=StringIO())

    assert "12 migrations linted with squawk: no problems." in out.getvalue()


def test_a_plain_index_on_the_live_table_is_caught():
    sql = sample_sql(
        migrations.AddIndex("task", models.Index(fields=["title"], name="tasks_task_title_idx"))
    )

    assert "require-concurrent-index-creation" in rules(sql)


def test_not_null_without_the_safe_recipe_is_caught():
    sql = sample_sql(
        migrations.AlterField("task", "due_date", models.DateField(null=False, blank=True))
    )

    assert "adding-not-nullable-field" in rules(sql)


def test_a_code_default_dropped_after_add_column_is_caught():
    # Django adds the column with DEFAULT, fills it, then drops the default: old code's
    # INSERTs (which never name the column) fail from then on.
    sql = sample_sql(migrations.AddField("task", "effort", models.IntegerField(default=1)))

    assert "DROP DEFAULT" in sql
    assert "ban-drop-default" in rules(sql)


def test_the_command_fails_and_names_the_unsafe_migration(monkeypatch):
    unsafe = sample_sql(
        migrations.AddIndex("task", models.Index(fields=["title"], name="tasks_task_title_idx"))
    )
    monkeypatch.setattr(
        "migration_safety.management.commands.lint_migrations.migration_sql",
        lambda app_label, using: {"tasks.9999_unsafe_sample": unsafe},
    )
    err = StringIO()

    with pytest.raises(CommandError, match="1 unsafe statement"):
        call_command("lint_migrations", stdout=StringIO(), stderr=err)

    assert re.search(
        r"tasks\.9999_unsafe_sample:\d+: require-concurrent-index-creation", err.getvalue()
    )


def test_a_migration_says_which_rule_it_breaks_knowingly_and_only_that_one_is_ignored():
    index = migrations.AddIndex("task", models.Index(fields=["title"], name="tasks_task_title_idx"))
    drop_default = migrations.AlterField("task", "priority", models.CharField(max_length=20))
    ignored = IgnoreLint(rules=["require-concurrent-index-creation"], because="a test")

    assert "require-concurrent-index-creation" in rules(sample_sql(index, drop_default))
    assert "require-concurrent-index-creation" not in rules(
        sample_sql(ignored, index, drop_default)
    )
    assert rules(sample_sql(ignored, index, drop_default)) != set()


def test_by_default_every_app_of_the_project_is_linted_and_an_unknown_one_is_refused():
    assert project_apps() == ["backfills", "tasks"]
    with pytest.raises(CommandError, match="No installed app is labelled 'nope'"):
        call_command("lint_migrations", "nope", stdout=StringIO(), stderr=StringIO())


def test_an_app_without_migrations_is_linted_at_once():
    out = StringIO()

    call_command("lint_migrations", "migration_safety", stdout=out, stderr=StringIO())

    assert "0 migrations linted with squawk: no problems." in out.getvalue()
