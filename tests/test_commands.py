"""Smoke tests that every project command answers --help."""

from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

COMMANDS_DIR = Path(__file__).resolve().parent.parent / "tasks" / "management" / "commands"
PROJECT_COMMANDS = sorted(
    path.stem for path in COMMANDS_DIR.glob("*.py") if not path.stem.startswith("_")
)


def test_the_project_has_its_commands():
    assert {"seed"} <= set(PROJECT_COMMANDS)
    assert all(get_commands()[name] == "tasks" for name in PROJECT_COMMANDS)


@pytest.mark.parametrize("name", PROJECT_COMMANDS)
def test_help_describes_the_command_and_its_options(name, capsys):
    command = load_command_class("tasks", name)

    with pytest.raises(SystemExit) as exit_info:
        command.run_from_argv(["manage.py", name, "--help"])

    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert command.help.split()[0] in out
    assert "--database" in out


@pytest.mark.django_db
def test_task_stats_prints_the_count_of_every_status_and_priority(demo_data):
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
    ]
