"""Smoke tests that every project command answers --help."""

from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

ROOT = Path(__file__).resolve().parent.parent
APPS = ("tasks", "backfills", "migration_safety")
PROJECT_COMMANDS = sorted(
    (app, path.stem)
    for app in APPS
    for path in (ROOT / app / "management" / "commands").glob("*.py")
    if not path.stem.startswith("_")
)


def test_the_project_has_its_commands():
    names = {name for _, name in PROJECT_COMMANDS}
    assert {"seed", "backfill", "backfill_priority", "migrate", "rehearse"} <= names
    assert all(get_commands()[name] == app for app, name in PROJECT_COMMANDS)


@pytest.mark.parametrize(("app", "name"), PROJECT_COMMANDS)
def test_help_describes_the_command_and_its_options(app, name, capsys):
    command = load_command_class(app, name)

    with pytest.raises(SystemExit) as exit_info:
        command.run_from_argv(["manage.py", name, "--help"])

    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert command.help.split()[0] in out
    assert "--database" in out


@pytest.mark.django_db
def test_task_stats_prints_the_count_of_every_status_priority_and_workspace(demo_data):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("task_stats", stdout=out)

    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines == [
        ["Tasks", "by", "status"],
        ["To", "do", "4"],
        ["In", "progress", "2"],
        ["Blocked", "1"],
        ["Done", "1"],
        ["Total", "8"],
        ["Tasks", "by", "priority"],
        ["Urgent", "5"],
        ["High", "0"],
        ["Medium", "2"],
        ["Low", "1"],
        ["Not", "set", "yet", "0"],
        ["Tasks", "by", "workspace"],
        ["Business", "3"],
        ["Default", "2"],
        ["Product", "3"],
    ]


@pytest.mark.django_db
def test_task_stats_counts_a_status_outside_the_known_four_under_its_raw_value(demo_data):
    from io import StringIO

    from django.core.management import call_command

    from tasks.models import Task

    # given: two tasks with a status other code wrote, one the model does not know
    Task.objects.filter(pk__in=Task.objects.order_by("pk").values("pk")[:2]).update(
        status="archived"
    )
    out = StringIO()

    # when
    call_command("task_stats", stdout=out)

    # then: they are counted under that value, and the total is every task
    lines = [line.split() for line in out.getvalue().splitlines()]
    by_status = lines[1 : lines.index(["Tasks", "by", "priority"])]
    assert ["archived", "2"] in by_status
    assert by_status[-1] == ["Total", str(Task.objects.count())]
    assert sum(int(line[-1]) for line in by_status[:-1]) == Task.objects.count() == 8


@pytest.mark.parametrize(("app", "name"), PROJECT_COMMANDS)
def test_every_command_refuses_an_unknown_database_in_one_line(app, name):
    from django.core.management import CommandError, call_command

    arguments = {"lint_migrations": [], "backfill": ["tasks.task.priority"]}.get(name, [])
    with pytest.raises(CommandError, match="Unknown database 'nope'"):
        call_command(name, *arguments, database="nope")
