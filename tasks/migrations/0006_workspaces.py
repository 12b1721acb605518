"""Before the second rollout: workspaces, and the workspace of every category.

An ordinary migration, in one transaction: tasks_workspace is new and tasks_category is a
reference table of a few rows, so adding its foreign key (validated at once), its index and NOT
NULL locks it for milliseconds; no rollout steps are needed for it. Existing categories go to the
default workspace, which is created here, so that a task without a category has one to go to.
Reversing removes the workspaces and the categories' column.
"""

import django.db.models.deletion
from django.db import migrations, models

from migration_safety.operations import IgnoreLint

SMALL_TABLE = (
    "tasks_category is a reference table of a few rows: adding its foreign key, its index and "
    "NOT NULL (Django drops and re-adds the key for that) locks it for milliseconds"
)


def default_workspace_for_categories(apps, schema_editor) -> None:
    """Create the default workspace and put every category in it."""
    using = schema_editor.connection.alias
    workspaces = apps.get_model("tasks", "Workspace")._default_manager.using(using)
    default, _ = workspaces.get_or_create(slug="default", defaults={"name": "Default"})
    categories = apps.get_model("tasks", "Category")._default_manager.using(using)
    categories.filter(workspace__isnull=True).update(workspace=default)


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0005_priority_index"),
    ]

    operations = [
        IgnoreLint(
            rules=[
                "adding-foreign-key-constraint",
                "constraint-missing-not-valid",
                "ban-drop-constraint",
                "require-concurrent-index-creation",
                "adding-not-nullable-field",
            ],
            because=SMALL_TABLE,
        ),
        migrations.CreateModel(
            name="Workspace",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100)),
                ("slug", models.SlugField(max_length=100, unique=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.AddField(
            model_name="category",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                help_text="Its tasks belong to this workspace. Leave empty for the default one.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="categories",
                to="tasks.workspace",
            ),
        ),
        migrations.RunPython(default_workspace_for_categories, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="category",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                help_text="Its tasks belong to this workspace. Leave empty for the default one.",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="categories",
                to="tasks.workspace",
            ),
        ),
    ]
