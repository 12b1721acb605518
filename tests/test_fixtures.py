import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.serializers.base import DeserializationError

from tasks.models import Category, Task, Workspace
from tasks.seeding import REFERENCE_FIXTURES

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
    with pytest.raises(DeserializationError, match="broken.json"):
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
    with pytest.raises(DeserializationError) as error:
        call_command("loaddata", fixture, verbosity=0)

    # then
    assert "no-such-slug" in str(error.value)
    assert "loaddata categories" in str(error.value)
    assert counts() == {"categories": 0, "groups": 0, "users": 0, "tasks": 0}
