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


@pytest.mark.parametrize(
    ("flag", "dest", "setting", "value"),
    [
        ("--lock-timeout-in-ms", "lock_timeout_in_ms", "MIGRATION_LOCK_TIMEOUT_MS", 1_500),
        ("--lock-timeout-max-retries", "lock_timeout_max_retries", "MIGRATION_LOCK_RETRIES", 7),
        (
            "--lock-timeout-retry-min-wait-in-ms",
            "lock_timeout_retry_min_wait_in_ms",
            "MIGRATION_RETRY_MIN_WAIT_MS",
            250,
        ),
        (
            "--lock-timeout-retry-max-wait-in-ms",
            "lock_timeout_retry_max_wait_in_ms",
            "MIGRATION_RETRY_MAX_WAIT_MS",
            4_000,
        ),
    ],
)
def test_migrate_help_states_the_defaults_it_runs_with(flag, dest, setting, value, settings):
    # given: the project's setting, not the library's default
    setattr(settings, setting, value)
    parser = load_command_class("migration_safety", "migrate").create_parser("manage.py", "migrate")

    # when
    text = " ".join(parser.format_help().split())
    default = getattr(parser.parse_args([]), dest)

    # then: the help names the setting and its value, which is the default the command uses
    assert default == value
    options = text[text.index("options:") :]
    described = options[options.index(f"{flag} {dest.upper()}") :].split(" --")[0]
    assert f"(default: {setting}, {value:,})" in described
    assert "Defaults to" not in described


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

    arguments = {"backfill": ["tasks.task.priority"], "loaddata": ["roles"]}.get(name, [])
    with pytest.raises(CommandError, match="Unknown database 'nope'"):
        call_command(name, *arguments, database="nope")
