"""Migration lint: squawk over the SQL that each migration runs on PostgreSQL.

squawk (https://squawkhq.com, the ``squawk-cli`` package) knows which statements take which
locks and flags the ones that block a live table: a plain CREATE INDEX, SET NOT NULL without a
validated check, a dropped default, and so on. Its settings, with the reason for every excluded
rule, are in the file MIGRATION_LINT_CONFIG names (default: ``.squawk.toml`` at the project
root); a migration that breaks a rule knowingly says so with
:class:`~migration_safety.operations.IgnoreLint`.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader


@dataclass(frozen=True)
class Finding:
    """One rule squawk says a migration breaks."""

    migration: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.migration}:{self.line}: {self.rule}: {self.message}"


class SquawkMissing(Exception):
    """The squawk executable is not installed."""


class SquawkFailed(Exception):
    """squawk ran but did not report (a crash, an unreadable configuration)."""


def squawk_executable() -> str:
    """Path of the squawk binary installed with squawk-cli (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "squawk"
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if not found:
        raise SquawkMissing("squawk is not installed: pip install squawk-cli (the dev extra)")
    return found


def config_path() -> Path:
    """squawk's settings file: MIGRATION_LINT_CONFIG, or .squawk.toml at the project root."""
    return Path(
        getattr(settings, "MIGRATION_LINT_CONFIG", Path(settings.BASE_DIR) / ".squawk.toml")
    )


def project_apps() -> list[str]:
    """The labels of the apps that live in the project (under BASE_DIR, outside the Python
    environment, which may be there too) and have migrations: not the libraries'."""
    root = Path(settings.BASE_DIR).resolve()
    environment = Path(sys.prefix).resolve()
    return [
        config.label
        for config in apps.get_app_configs()
        if (path := Path(config.path).resolve()).is_relative_to(root)
        and not path.is_relative_to(environment)
        and (path / "migrations").is_dir()
    ]


def migration_sql(app_label: str, *, using: str) -> dict[str, str]:
    """The SQL of every migration of ``app_label``, as ``sqlmigrate`` prints it, by name."""
    loader = MigrationLoader(connections[using])
    names = sorted(name for app, name in loader.disk_migrations if app == app_label)
    sql = {}
    for name in names:
        out = StringIO()
        call_command("sqlmigrate", app_label, name, database=using, stdout=out)
        sql[f"{app_label}.{name}"] = out.getvalue()
    return sql


def lint_sql(sql_by_name: dict[str, str]) -> list[Finding]:
    """Run squawk over each named SQL text; return what it flags (empty: all safe)."""
    if not sql_by_name:
        return []  # squawk given no file reads its standard input
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for name, sql in sql_by_name.items():
            path = Path(folder) / f"{name}.sql"
            path.write_text(sql)
            files[str(path)] = name
        result = subprocess.run(
            [squawk_executable(), "--config", str(config_path()), "--reporter", "json", *files],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
    if result.returncode not in (0, 1) or not result.stdout.strip().startswith("["):
        raise SquawkFailed(f"squawk failed: {result.stderr or result.stdout}")
    return [
        Finding(
            migration=files[item["file"]],
            line=item["line"] + 1,
            rule=item["rule_name"],
            message=item["message"],
        )
        for item in json.loads(result.stdout)
    ]
