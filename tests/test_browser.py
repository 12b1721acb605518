"""The admin in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser), against a live server and a real task worker (`manage.py db_worker`) on PostgreSQL.

Saves a screenshot of the finished run's page to test-artifacts/backfill-run.png.
"""

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from backfills.models import BackfillRun
from tasks.models import Task
from tests.helpers import rewind_to
from tests.test_backfill_postgres import database_url

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.postgres

if CHROMIUM is None and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError("CI=true: Debian's chromium is required (.ci/run installs it with apt)")


@pytest.fixture
def browser(monkeypatch):
    """A headless Chromium page. Playwright's sync API runs an event loop in this thread, so
    Django's guard against ORM calls from async code is lifted for the test's own queries."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        yield page
        chromium.close()
        # Queries made while Playwright's loop runs get connections of their own (Django keeps
        # them per async context): close them here, or the test database cannot be dropped.
        connections.close_all()


@pytest.fixture
def worker():
    """A task worker for the backfill queue, on the test database, in slow small batches so
    that a person (here, the test) has time to pause and resume."""
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "db_worker",
            "--queue-name=backfill",
            "--no-reload",
            "--no-startup-delay",
            "--interval=0.2",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url(),
            "BACKFILL_TARGET_BATCH_MS": "0",
            "BACKFILL_WORKER_SLEEP_SECONDS": "0.05",
            "BACKFILL_SLICE_SECONDS": "5",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    process.terminate()
    process.wait(timeout=30)


def rows_done() -> int:
    return BackfillRun.objects.get().rows_done


@pytest.fixture
def demo_at_workspace_expand(transactional_db):
    """The demo data, then tasks migrated back to the workspace rollout's expand step."""
    with rewind_to("0007_workspace_expand", "demo"):
        yield


def test_an_operator_filters_sorts_and_runs_a_backfill_from_the_admin(
    demo_at_workspace_expand, live_server, browser, worker, settings
):
    from playwright.sync_api import expect

    # given: the demo data and 20,000 tasks written before the workspace column
    call_command(
        "seed", tasks=20_000, users=3, seed=7, without_workspace=True, no_progress=True, verbosity=0
    )
    settings.BACKFILL_WORKER_BATCH_SIZE = 200
    page = browser

    # log in as alice, a staff user from the demo fixture
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "taskproj-demo")
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()

    # the tasks no backfill has reached yet, then one workspace's tasks
    page.goto(f"{live_server.url}/admin/tasks/task/")
    page.get_by_role("link", name="Not set yet", exact=True).click()
    page.wait_for_url("**workspace=none**")
    expect(page.locator("#result_list")).to_be_visible()
    assert set(page.locator("td.field-workspace_name").all_inner_texts()) == {"not set yet"}
    page.goto(f"{live_server.url}/admin/tasks/task/")
    page.get_by_role("link", name="Product", exact=True).click()
    page.wait_for_url("**workspace=**")
    assert set(page.locator("td.field-workspace_name").all_inner_texts()) == {"Product"}

    # filter by priority, then sort by priority: by rank, not alphabetically
    page.goto(f"{live_server.url}/admin/tasks/task/")
    page.get_by_role("link", name="Urgent", exact=True).click()
    page.wait_for_url("**priority=urgent**")
    levels = page.locator("td.field-priority_level").all_inner_texts()
    assert levels and set(levels) == {"Urgent"}
    page.goto(f"{live_server.url}/admin/tasks/task/")
    page.locator("th.column-priority_level a").first.click()
    page.wait_for_url("**o=**")
    expect(page.locator("#result_list")).to_be_visible()
    levels = page.locator("td.field-priority_level").all_inner_texts()
    ranks = {"Urgent": 4, "High": 3, "Medium": 2, "Low": 1}
    ordered = [ranks[level] for level in levels]
    assert ordered == sorted(ordered) or ordered == sorted(ordered, reverse=True)

    # open the run list, choose the workspace backfill and start it on the worker
    page.goto(f"{live_server.url}/admin/backfills/backfillrun/")
    page.select_option("#start-backfill-name", "tasks.task.workspace")
    page.click("#start-backfill")
    expect(page.locator(".messagelist")).to_contain_text("started on task workers")
    deadline = time.monotonic() + 60
    while rows_done() < 2_000:
        assert time.monotonic() < deadline and worker.poll() is None, "the worker did not start"
        time.sleep(0.1)

    # pause: the worker stops within a batch
    page.click("#pause-run")
    expect(page.locator(".messagelist")).to_contain_text("is now paused")
    time.sleep(1.0)
    paused_at = rows_done()
    time.sleep(1.0)
    assert rows_done() == paused_at < 20_000
    expect(page.locator("#resume-run")).to_be_visible()

    # resume, and watch the page (it reloads itself) reach 100%
    page.click("#resume-run")
    expect(page.locator(".messagelist")).to_contain_text("is now")
    expect(page.locator(".field-status_column")).to_contain_text("succeeded", timeout=90_000)
    expect(page.locator(".field-progress_column")).to_contain_text("100%")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "backfill-run.png"), full_page=True)
    run = BackfillRun.objects.get()
    assert (run.name, run.status, run.rows_done) == ("tasks.task.workspace", "succeeded", 20_000)
    assert not Task.objects.filter(workspace__isnull=True).exists()
    kinds = set(run.events.values_list("kind", flat=True))
    assert {"created", "enqueued", "processing", "paused", "resumed", "succeeded"} <= kinds


def runs_of_every_kind() -> None:
    """Backfill runs as a busy week leaves them: open and finished ones, from the command (with
    the longest "started by", a process name), the admin, a migration and task workers."""
    now = timezone.now()
    common = {"parameters": {"today": "2026-12-01"}, "rows_estimated": 1_000_000}
    BackfillRun.objects.create(
        name="tasks.task.workspace", status="running", rows_done=432_100, batch_size=1_901,
        rows_per_second=36_731.4, heartbeat_at=now, origin="worker", background=True,
        started_by="alice", workers=2, **common,
    )  # fmt: skip
    BackfillRun.objects.create(
        name="tasks.task.priority", status="succeeded", rows_done=1_000_000, batch_size=3_577,
        rows_per_second=65_873.0, heartbeat_at=now - datetime.timedelta(days=2),
        started_by="command deploy-runner@build-host-01.example.internal pid 48211",
        finished_at=now - datetime.timedelta(days=2), **common,
    )  # fmt: skip
    BackfillRun.objects.create(
        name="tasks.task.priority", status="failed", rows_done=12_000, batch_size=3_000,
        origin="migration", started_by="migrate root@app-server-03.example.internal pid 901",
        last_error="canceling statement due to lock timeout", **common,
    )  # fmt: skip


def test_the_run_list_shows_every_column_in_a_1400_pixel_window(demo_data, live_server, browser):
    # given: runs of every kind, and the window of a laptop (the fixture's 1,400 px)
    runs_of_every_kind()
    page = browser
    page.goto(f"{live_server.url}/admin/login/?next=/admin/backfills/backfillrun/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "taskproj-demo")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "backfill-runs-1400.png"), full_page=True)

    # then: every column is inside the window, and the table fits its box (no side scroll)
    width = page.viewport_size["width"]
    for column in page.locator("#result_list thead th").all():
        box = column.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, column.inner_text()
    table = page.evaluate(
        "() => { const t = document.querySelector('#result_list');"
        " return [t.scrollWidth, t.parentElement.clientWidth]; }"
    )
    assert table[0] <= table[1]
