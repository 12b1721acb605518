"""`make demo` tells the story: each step says what happens and why, in the runbook's order,
each command shown as a learner would type it, and the figures it prints agree."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3",
        reason="plays the demo on SQLite: runs in the SQLite pass",
    ),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    database = tmp_path_factory.mktemp("demo") / "demo.sqlite3"
    # Our interpreter, as if installed (the stamp is the venv's; a run from .venv has it).
    python = Path(sys.executable)
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "demo",
         f"DEMO_DB={database}", "DEMO_TASKS=400", f"PY={python}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_steps_come_in_the_runbooks_order_with_both_rollouts(demo):
    headers = re.findall(r"^== (\d)\. ", demo, re.MULTILINE)
    steps = re.findall(r"^   (\d[a-d])\. ", demo, re.MULTILINE)

    assert headers == ["1", "2", "3", "4", "5", "6"]
    assert steps == ["3a", "3b", "3c", "3d", "4a", "4b", "4c", "4d"]
    commands = re.findall(r"^   \$ manage\.py (.+)$", demo, re.MULTILINE)
    migrations = [c.split()[2] for c in commands if c.startswith("migrate tasks ")]
    assert migrations == [
        "0001_initial", "0002_priority_expand", "0005_priority_index", "0006_workspaces",
        "0007_workspace_expand", "0009_workspace_contract",
    ]  # fmt: skip


def test_commands_are_shown_as_typed_and_every_step_is_named(demo):
    assert "DATABASE_URL=" not in demo and "bin/python manage.py" not in demo.split("Open the")[0]
    assert "index 0005" in demo and "contract 0004" in demo and "Data migration 0003" in demo
    assert "reference date" in demo.split("$ manage.py backfill_priority --dry-run")[0]
    # Every app is migrated in step 1: nothing but tasks is applied later.
    later = demo.split("== 2.")[1]
    assert re.findall(r"Applying (\w+)\.", later) == ["tasks"] * 9


def test_the_summary_and_the_status_give_the_same_rate(demo):
    summaries = re.findall(r"Updated [\d,]+ rows in .*? \(([\d,]+) rows/s\)", demo)
    status = demo.split("$ manage.py backfill --status")[1].split("$ manage.py")[0]
    rates = re.findall(r"^\s+#(\d+)\s+succeeded\s+100%\s+[\d,]+\s+[\d,]+\s+([\d,]+)", status, re.M)

    assert len(summaries) == 2
    assert dict(rates) == {"1": summaries[0], "2": summaries[1]}
