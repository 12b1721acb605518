"""Admin task list on a big PostgreSQL table: how long each page view takes.

    python benchmarks/admin_pages.py [--tasks 1000000]

Seeds --tasks tasks on a scratch database, then renders the task changelist through Django's
test client as a logged-in Member (the slowest role: no superuser shortcuts), five times per
view, reporting the median and the slowest, and the SQL each view ran. Writes docs/benchmarks.md.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import manage, run, scratch_database, write_section  # noqa: E402

VIEWS = {
    "default page (newest first)": "",
    "a page in the middle": "?p={middle_page}",
    "status = blocked": "?status__exact=blocked",
    "priority = urgent": "?priority=urgent",
    "sorted by priority": "?o=-3",
    "due this month": "?due_date__gte={month_start}&due_date__lt={next_month}",
    "search 'deploy'": "?q=deploy",
}


def measure(tasks: int) -> list[tuple[str, float, float, int]]:
    """(view, median ms, max ms, queries) for each view."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")
    user = get_user_model().objects.create_user("bench", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name="Member"))
    client = Client()
    client.force_login(user)
    today = timezone.localdate()
    month_start = today.replace(day=1)
    next_month = (month_start.replace(day=28) + timezone.timedelta(days=4)).replace(day=1)
    results = []
    for name, query in VIEWS.items():
        url = "/admin/tasks/task/" + query.format(
            month_start=month_start, next_month=next_month, middle_page=max(1, tasks // 200)
        )
        times = []
        for _ in range(5):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        results.append((name, statistics.median(times), max(times), len(queries)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process, on the scratch database
        for name, median, slowest, queries in measure(args.tasks):
            sys.stdout.write(f"{name}\t{median:.0f}\t{slowest:.0f}\t{queries}\n")
        return

    with scratch_database("taskproj_bench_admin") as url:
        env = {"DATABASE_URL": url}
        run(manage("migrate", "-v0"), env_extra=env)
        run(manage("seed", f"--tasks={args.tasks}", "--seed=1", "--no-progress"), env_extra=env)
        _, _, out = run(
            [sys.executable, __file__, f"--tasks={args.tasks}", "--measure"],
            env_extra={
                **env,
                "DJANGO_SETTINGS_MODULE": "taskproj.settings",
                "ALLOWED_HOSTS": "testserver",
            },
        )
    rows = [line.split("\t") for line in out.strip().splitlines()]
    lines = [
        "## Admin task list (PostgreSQL)",
        "",
        f"Command: `python benchmarks/admin_pages.py --tasks {args.tasks}` "
        f"({datetime.now(UTC):%Y-%m-%d}, 2 cores). {args.tasks:,} tasks, a Member user, Django's "
        "test client in one process (no network), five renders per view.",
        "",
        "| view | median | slowest | SQL queries |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {median} ms | {slowest} ms | {queries} |"
            for name, median, slowest, queries in rows
        ),
    ]
    report = "\n".join(lines)
    write_section("admin", report)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
