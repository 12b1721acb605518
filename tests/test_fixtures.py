import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from tasks.models import Category, Task, Workspace
from tasks.reference_fixtures import REFERENCE_FIXTURES
from tests.helpers import rewind_to

pytestmark = pytest.mark.django_db


def counts() -> dict[str, int]:
    return {
        "categories": Category.objects.count(),
        "groups": Group.objects.count(),
        "users": get_user_model().objects.count(),
        "tasks": Task.objects.count(),
    }


def test_fixtures_load_on_a_fresh_database():
    # when
    call_command("loaddata", *REFERENCE_FIXTURES, "operators", "demo", verbosity=0)

    # then
    assert counts() == {"categories": 7, "groups": 4, "users": 3, "tasks": 8}
    assert set(Workspace.objects.values_list("slug", flat=True)) == {
        "default",
        "product",
        "business",
    }
    assert set(Group.objects.values_list("name", flat=True)) == {
        "Admin",
        "Manager",
        "Member",
        "Operators",
    }
    carol = get_user_model().objects.get(username="carol")
    assert carol.is_staff and list(carol.groups.values_list("name", flat=True)) == ["Member"]
    assert Task.objects.get(pk=2).category.slug == "engineering"
    assert Task.objects.get(pk=2).workspace.slug == "product"  # the category's workspace


def test_loading_the_fixtures_twice_creates_no_duplicates():
    # given
    call_command("loaddata", *REFERENCE_FIXTURES, "operators", "demo", verbosity=0)
    first = counts()

    # when
    call_command("loaddata", *REFERENCE_FIXTURES, "operators", "demo", verbosity=0)

    # then
    assert counts() == first


def test_roles_grant_permissions_by_natural_key():
    call_command("loaddata", "roles", verbosity=0)

    def perms(name: str) -> set[str]:
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    assert {"delete_task", "delete_category"} <= perms("Admin")
    assert "delete_task" in perms("Manager") and "delete_category" not in perms("Manager")
    assert perms("Member") == {"add_task", "change_task", "view_task", "view_category", "view_user"}


def test_operators_view_and_steer_backfill_runs_and_alice_is_one(demo_data):
    operators = Group.objects.get(name="Operators")
    alice = get_user_model().objects.get(username="alice")

    assert set(operators.permissions.values_list("codename", flat=True)) == {
        "view_backfillrun",
        "control_backfillrun",
    }
    assert alice.has_perm("backfills.control_backfillrun")
    assert not get_user_model().objects.get(username="bob").has_perm("backfills.view_backfillrun")


def write_fixture(path, text: str):
    path.write_text(text)
    return str(path)


def test_a_malformed_fixture_fails_clearly_and_loads_nothing(tmp_path):
    # given: a valid category followed by broken JSON
    broken = write_fixture(
        tmp_path / "broken.json",
        '[{"model": "tasks.category", '
        '"fields": {"name": "A", "slug": "a", "workspace": ["default"]}}, {"model": ',
    )

    # when
    with pytest.raises(CommandError, match=r"broken.json.*Nothing was loaded\.$"):
        call_command("loaddata", broken, verbosity=0)

    # then
    assert counts()["categories"] == 0


def test_a_fixture_naming_a_missing_category_fails_clearly_and_loads_nothing(tmp_path):
    # given: one good task, then one in a category that does not exist
    task = {"title": "ok", "status": "todo", "workspace": ["default"]}
    task["created_at"] = "2026-01-01T00:00:00Z"
    task["updated_at"] = task["created_at"]
    rows = [
        {
            "model": "tasks.category",
            "fields": {"name": "Real", "slug": "real", "workspace": ["default"]},
        },
        {"model": "tasks.task", "pk": 1, "fields": {**task, "category": ["real"]}},
        {"model": "tasks.task", "pk": 2, "fields": {**task, "category": ["no-such-slug"]}},
    ]
    fixture = write_fixture(tmp_path / "orphan.json", json.dumps(rows))

    # when
    with pytest.raises(CommandError) as error:
        call_command("loaddata", fixture, verbosity=0)

    # then
    assert "no-such-slug" in str(error.value)
    assert "loaddata categories" in str(error.value)
    assert counts() == {"categories": 0, "groups": 0, "users": 0, "tasks": 0}


DOCUMENTED_SET = (*REFERENCE_FIXTURES, "operators", "demo")


@pytest.mark.parametrize(
    "order",
    [
        DOCUMENTED_SET,
        tuple(reversed(DOCUMENTED_SET)),
        ("demo", "roles", "operators", *REFERENCE_FIXTURES),
    ],
    ids=" ".join,
)
def test_the_documented_fixtures_load_in_any_order(order):
    # when
    call_command("loaddata", *order, verbosity=0)

    # then
    assert counts() == {"categories": 7, "groups": 4, "users": 3, "tasks": 8}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            ("demo",),
            "Fixture demo needs workspaces, categories, roles, operators loaded first: "
            "manage.py loaddata workspaces categories roles operators demo",
        ),
        (
            ("categories", "roles", "demo"),
            "Fixtures categories, demo need workspaces, operators loaded first: "
            "manage.py loaddata workspaces categories roles operators demo",
        ),
    ],
    ids=" ".join,
)
def test_a_fixture_loaded_before_what_it_needs_names_it_and_loads_nothing(labels, expected):
    with pytest.raises(CommandError) as error:
        call_command("loaddata", *labels, verbosity=0)

    assert str(error.value) == expected
    assert counts() == {"categories": 0, "groups": 0, "users": 0, "tasks": 0}


def test_what_a_fixture_needs_may_have_been_loaded_before(reference_data):
    # given: workspaces, categories and roles loaded by an earlier command
    # when
    call_command("loaddata", "operators", "demo", verbosity=0)

    # then
    assert counts() == {"categories": 7, "groups": 4, "users": 3, "tasks": 8}


@pytest.mark.parametrize(
    ("step", "labels", "fixture", "migration"),
    [
        ("0001_initial", DOCUMENTED_SET, "demo", "tasks 0007_workspace_expand"),
        ("0005_priority_index", ("workspaces",), "workspaces", "tasks 0006_workspaces"),
        ("0006_workspaces", ("demo",), "demo", "tasks 0007_workspace_expand"),
    ],
)
def test_a_fixture_loaded_before_the_migration_it_needs_names_the_step(
    transactional_db, step, labels, fixture, migration
):
    with rewind_to(step):
        before = Group.objects.count(), get_user_model().objects.count()

        with pytest.raises(CommandError) as error:
            call_command("loaddata", *labels, verbosity=0)

        assert str(error.value) == (
            f"Fixture {fixture!r} needs migration {migration.replace(' ', '.')}, which is not "
            f"applied to database 'default': run manage.py migrate {migration} "
            "(or manage.py migrate) first."
        )
        assert (Group.objects.count(), get_user_model().objects.count()) == before


def test_operators_before_the_backfills_tables_names_their_migration(transactional_db):
    call_command("migrate", "backfills", "zero", verbosity=0)
    try:
        with pytest.raises(CommandError, match=r"run manage.py migrate backfills 0001_initial"):
            call_command("loaddata", "operators", verbosity=0)
        assert not Group.objects.filter(name="Operators").exists()
    finally:
        # Every app: unapplying backfills unapplied the tasks migrations that depend on it too.
        call_command("migrate", verbosity=0)
