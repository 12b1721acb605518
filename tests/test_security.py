"""Least privilege in the admin: each rule of tasks/users_admin.py and of the roles' fixtures,
tried through the admin with the POST a user could craft (an attempt to escalate changes
nothing), as the demo's alice (Admin and Operators), bob (Manager) and carol (Member)."""

import json
import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.urls import reverse

from backfills.models import BackfillRun
from tasks.models import Category, Task
from tests.helpers import create_legacy_tasks

pytestmark = pytest.mark.django_db
User = get_user_model()
NEW_PASSWORD = "an0ther-Long-passphrase"


def user(username: str):
    return User.objects.get(username=username)


def permission(label: str) -> Permission:
    app_label, codename = label.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def role(name: str, *permissions: str) -> Group:
    """A group beside the fixtures' roles, holding ``permissions`` ("app_label.codename")."""
    group = Group.objects.create(name=name)
    group.permissions.set([permission(label) for label in permissions])
    return group


def staff(username: str, *groups: Group):
    account = User.objects.create_user(username, password="x", is_staff=True)
    account.groups.set(groups)
    return account


def change_url(account) -> str:
    return reverse("admin:auth_user_change", args=[account.pk])


def password_url(account) -> str:
    return reverse("admin:auth_user_password_change", args=[account.pk])


def user_form(account, **changes) -> dict:
    """The POST of ``account``'s change form as the admin renders it, with ``changes``."""
    fields = {
        "username": account.username,
        "first_name": account.first_name,
        "last_name": account.last_name,
        "email": account.email,
        "is_active": account.is_active,
        "is_staff": account.is_staff,
        "is_superuser": account.is_superuser,
        "groups": [group.pk for group in account.groups.all()],
        "user_permissions": [perm.pk for perm in account.user_permissions.all()],
        "date_joined_0": f"{account.date_joined:%Y-%m-%d}",
        "date_joined_1": f"{account.date_joined:%H:%M:%S}",
        **changes,
    }
    # A ticked checkbox is sent as "on"; an unticked one is not sent at all.
    return {
        name: "on" if value is True else value
        for name, value in fields.items()
        if value is not False
    }


def privileges(account) -> tuple:
    account.refresh_from_db()
    return (
        account.is_superuser,
        set(account.groups.values_list("name", flat=True)),
        set(account.user_permissions.values_list("codename", flat=True)),
    )


# Admin: changing users, within her own privileges


def test_an_admin_who_ticks_superuser_on_her_own_page_stays_what_she_was(client, demo_data):
    # given
    alice = user("alice")
    client.force_login(alice)
    before = privileges(alice)

    # when
    page = client.get(change_url(alice))
    response = client.post(change_url(alice), user_form(alice, is_superuser=True, first_name="Al"))

    # then: the rest of the form is saved, the superuser flag is not even a field
    assert response.status_code == 302
    assert 'name="is_superuser"' not in page.content.decode()
    assert privileges(alice) == before
    assert alice.first_name == "Al"


def test_an_admin_cannot_give_anyone_a_group_that_holds_more_than_she_does(client, demo_data):
    # given: a role that may edit roles, which alice may not
    editors = role("Role editors", "auth.view_group", "auth.change_group")
    alice, bob = user("alice"), user("bob")
    client.force_login(alice)
    before = privileges(alice), privileges(bob)

    # when
    to_bob = client.post(change_url(bob), user_form(bob, groups=[editors.pk]))
    to_herself = client.post(change_url(alice), user_form(alice, groups=[editors.pk]))

    # then
    assert to_bob.status_code == to_herself.status_code == 200  # the form, with its error
    assert "groups" in to_bob.context["adminform"].form.errors
    assert (privileges(alice), privileges(bob)) == before


def test_an_admin_cannot_give_anyone_a_permission_she_does_not_hold(client, demo_data):
    # given
    alice, carol = user("alice"), user("carol")
    delete_user = permission("auth.delete_user")
    client.force_login(alice)
    before = privileges(alice), privileges(carol)

    # when
    to_carol = client.post(change_url(carol), user_form(carol, user_permissions=[delete_user.pk]))
    to_herself = client.post(change_url(alice), user_form(alice, user_permissions=[delete_user.pk]))

    # then
    assert to_carol.status_code == to_herself.status_code == 200
    assert "user_permissions" in to_carol.context["adminform"].form.errors
    assert (privileges(alice), privileges(carol)) == before
    assert delete_user not in to_carol.context["adminform"].form.fields["user_permissions"].queryset


def test_an_admin_adds_a_user_and_grants_roles_and_permissions_she_holds(client, demo_data):
    # given
    client.force_login(user("alice"))
    manager = Group.objects.get(name="Manager")

    # when
    added = client.post(
        reverse("admin:auth_user_add"),
        {
            "username": "dave",
            "usable_password": "true",
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
        },
    )
    dave = user("dave")
    granted = client.post(
        change_url(dave),
        user_form(
            dave,
            is_staff=True,
            groups=[manager.pk],
            user_permissions=[permission("backfills.view_backfillrun").pk],
        ),
    )

    # then
    assert added.status_code == granted.status_code == 302
    assert privileges(dave) == (False, {"Manager"}, {"view_backfillrun"})
    assert dave.is_staff


def test_only_a_superuser_changes_a_superuser_or_sets_their_password(client, demo_data):
    # given
    root = User.objects.create_superuser("root", "root@example.com", "root-Passphrase-1")
    client.force_login(user("alice"))

    # when
    shown = client.get(change_url(root))
    changed = client.post(change_url(root), user_form(root, email="alice@example.com"))
    password_page = client.get(password_url(root))
    new_password = client.post(
        password_url(root),
        {"usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )

    # then: alice may look, read-only, and change nothing
    root.refresh_from_db()
    assert shown.status_code == 200 and 'name="email"' not in shown.content.decode()
    assert changed.status_code == password_page.status_code == new_password.status_code == 403
    assert root.email == "root@example.com"
    assert root.check_password("root-Passphrase-1")


def test_an_admin_sets_passwords_only_of_users_holding_nothing_she_lacks(client, demo_data):
    # given: erin holds a permission alice does not
    erin = staff("erin", role("Role editors", "auth.change_group"))
    erin.set_password("erin-Passphrase-1")
    erin.save()
    carol = user("carol")
    client.force_login(user("alice"))
    data = {"usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}

    # when
    for_erin = client.post(password_url(erin), data)
    for_carol = client.post(password_url(carol), data)

    # then
    erin.refresh_from_db()
    carol.refresh_from_db()
    assert for_erin.status_code == 403
    assert erin.check_password("erin-Passphrase-1")
    assert for_carol.status_code == 302
    assert carol.check_password(NEW_PASSWORD)


def test_a_user_who_may_delete_users_cannot_delete_a_superuser(client, demo_data):
    # given: someone granted deleting users (no fixture role is)
    root = User.objects.create_superuser("root", "root@example.com", "root-Passphrase-1")
    remover = staff("remover", role("User removers", "auth.view_user", "auth.delete_user"))
    client.force_login(remover)

    # when
    page = client.get(reverse("admin:auth_user_delete", args=[root.pk]))
    response = client.post(reverse("admin:auth_user_delete", args=[root.pk]), {"post": "yes"})
    bulk = client.post(
        reverse("admin:auth_user_changelist"),
        {"action": "delete_selected", "_selected_action": [root.pk], "post": "yes"},
    )

    # then
    assert page.status_code == response.status_code == bulk.status_code == 403
    assert User.objects.filter(pk=root.pk).exists()


# Roles: a group's permissions, within the editor's own


def test_a_role_editor_puts_into_a_role_only_permissions_she_holds(client, demo_data):
    # given: eve may edit roles and holds the Member's permissions, not more
    eve = staff("eve", role("Role editors", "auth.view_group", "auth.change_group"))
    eve.groups.add(Group.objects.get(name="Member"))
    member = Group.objects.get(name="Member")
    before = set(member.permissions.all())
    client.force_login(eve)
    url = reverse("admin:auth_group_change", args=[member.pk])

    # when
    kept = [perm.pk for perm in before]
    escalated = client.post(
        url, {"name": "Member", "permissions": [*kept, permission("auth.change_user").pk]}
    )
    admin_role = client.post(
        reverse("admin:auth_group_change", args=[Group.objects.get(name="Admin").pk]),
        {"name": "Admin", "permissions": kept},
    )
    allowed = client.post(
        url, {"name": "Member", "permissions": [*kept, permission("auth.view_group").pk]}
    )

    # then: a permission she holds goes in; one she lacks does not; Admin's role is not hers
    assert (
        escalated.status_code == 200 and "permissions" in escalated.context["adminform"].form.errors
    )
    assert admin_role.status_code == 403
    assert Group.objects.get(name="Admin").permissions.filter(codename="delete_task").exists()
    assert allowed.status_code == 302
    assert set(member.permissions.all()) == before | {permission("auth.view_group")}


# Directory readers: names, never e-mail addresses


@pytest.mark.parametrize("username", ["carol", "bob"])
def test_members_and_managers_see_names_but_not_e_mail_addresses(client, demo_data, username):
    # given
    client.force_login(user(username))
    changelist = reverse("admin:auth_user_changelist")

    # when
    listing = client.get(changelist)
    page = client.get(change_url(user("alice")))
    searched = client.get(changelist, {"q": "alice@example.com"})
    filtered = client.get(changelist, {"email__startswith": "a"})

    # then
    assert listing.status_code == page.status_code == 200
    assert {u.username for u in listing.context["cl"].result_list} == {"alice", "bob", "carol"}
    for response in (listing, page):
        assert "@example.com" not in response.content.decode()
    assert list(searched.context["cl"].result_list) == []
    assert filtered.status_code == 400  # not a lookup a directory reader may make


def test_the_assignee_autocomplete_finds_names_not_addresses(client, demo_data):
    # given
    client.force_login(user("carol"))
    url = reverse("admin:autocomplete")
    field = {"app_label": "tasks", "model_name": "task", "field_name": "assignee"}

    # when
    by_name = client.get(url, {**field, "term": "Alice"}).json()
    by_address = client.get(url, {**field, "term": "alice@"}).json()

    # then
    assert [result["text"] for result in by_name["results"]] == ["alice"]
    assert by_address["results"] == []


def test_an_admin_sees_e_mail_addresses(client, demo_data):
    client.force_login(user("alice"))

    response = client.get(reverse("admin:auth_user_changelist"))

    assert "carol@example.com" in response.content.decode()


@pytest.mark.parametrize("username", ["carol", "bob"])
def test_members_and_managers_change_no_user_not_even_themselves(client, demo_data, username):
    # given
    account = user(username)
    client.force_login(account)
    before = privileges(account)

    # when
    response = client.post(change_url(account), user_form(account, is_superuser=True, email="x@x"))

    # then
    assert response.status_code == 403
    assert privileges(account) == before
    assert account.email == f"{username}@example.com"


# The roles themselves (fixtures/roles.json, fixtures/operators.json)


def fixture_permissions() -> dict[str, set[str]]:
    """Each role's permissions as the fixtures grant them ("app_label.codename")."""
    roles = {}
    for name in ("roles", "operators"):
        for row in json.loads((settings.FIXTURE_DIRS[0] / f"{name}.json").read_text()):
            perms = row["fields"]["permissions"]
            roles[row["fields"]["name"]] = {f"{app}.{codename}" for codename, app, _ in perms}
    return roles


def test_no_role_edits_roles_or_permissions_or_deletes_users():
    granted = set().union(*fixture_permissions().values())

    assert not {p for p in granted if p.endswith(("_group", "_permission"))}
    assert "auth.delete_user" not in granted


def test_only_admins_add_or_change_users_and_operators_only_steer_backfills():
    roles = fixture_permissions()

    assert [name for name, perms in roles.items() if "auth.change_user" in perms] == ["Admin"]
    assert [name for name, perms in roles.items() if "auth.add_user" in perms] == ["Admin"]
    assert roles["Operators"] == {"backfills.view_backfillrun", "backfills.control_backfillrun"}
    others = set().union(*(perms for name, perms in roles.items() if name != "Operators"))
    assert not {p for p in others if p.startswith("backfills.")}


# Database privileges (docs/zero-downtime.md, "Database privileges")


def runbook_grants(role_name: str) -> list[str]:
    """The runbook's GRANT statements for the backfill's role, for role ``role_name``."""
    runbook = (settings.BASE_DIR / "docs" / "zero-downtime.md").read_text()
    block = re.search(r"```sql\n(-- the backfill's role.*?)```", runbook, re.DOTALL).group(1)
    sql = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
    return [
        statement.strip().replace("taskproj_backfill", role_name)
        for statement in sql.split(";")
        if statement.strip()
    ]


@pytest.mark.postgres
def test_the_backfill_runs_as_a_role_with_only_the_runbooks_grants(workspace_expand_step):
    # given: tasks written before the workspace column, and a role with exactly those grants
    categories = list(Category.objects.order_by("slug"))
    create_legacy_tasks([Task(title=f"t{n}", category=categories[n % 7]) for n in range(300)])
    role_name = f"taskproj_backfill_{uuid.uuid4().hex[:12]}"
    db = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE ROLE {role_name} LOGIN"
        )  # a cluster's roles are shared: dropped below
        cursor.execute("SELECT pg_backend_pid()")
        our_pid = cursor.fetchone()[0]
    url = f"postgres://{role_name}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    # (two workers: the lanes' table is used too)
    command = [sys.executable, "manage.py", "backfill", "tasks.task.workspace", "--workers", "2"]

    def backfill_as_role() -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, "--no-progress"],
            cwd=settings.BASE_DIR,
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
        )

    try:
        without_grants = backfill_as_role()
        with connection.cursor() as cursor:
            for statement in runbook_grants(role_name):
                cursor.execute(statement)

        # when: the command, in its own process, connected as that role
        result = backfill_as_role()
        # and what its health signals read: other roles' sessions (ours) in pg_stat_*
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=role_name, dbname=db["NAME"]
        ) as conn:
            seen = conn.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", [our_pid]
            ).fetchone()[0]
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role_name}")
            cursor.execute(f"DROP ROLE {role_name}")

    # then: without the grants it says what is missing, with them it fills every row
    assert without_grants.returncode == 1
    assert "Traceback" not in without_grants.stderr
    assert "permission denied for table tasks_task" in without_grants.stderr
    assert '"Database privileges"' in without_grants.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert not Task.objects.filter(workspace__isnull=True).exists()
    assert BackfillRun.objects.get(name="tasks.task.workspace").status == "succeeded"
    assert seen is not None  # hidden without pg_read_all_stats
