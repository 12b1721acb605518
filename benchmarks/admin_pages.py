"""Admin task list at two table sizes: every page a user can reach, and how it scales.

    python benchmarks/admin_pages.py [--tasks 10000 1000000] [--renders 5] [--rounds 3]

For each size, on a scratch PostgreSQL database: migrate, seed that many tasks with the admin's
indexes dropped (``migrate tasks 0009``), build them again the way a deploy would (``migrate
tasks``, timed), VACUUM ANALYZE. Then, as a logged-in Member (the slowest role: no superuser
shortcuts) through Django's test client, every variant of the task changelist a user reaches
from its links — each sortable column both ways, every value of every filter in the sidebar
(read from the page itself), the due-date hierarchy, searches, the next and the last page, and
combinations. ``--rounds`` times, a process per size in turn (so that a busy minute on the
shared machine hits both sizes), renders each page once to warm up and then ``--renders``
times. Reports the median and the slowest render per page and size, the SQL of one render and
the rows shown, each page's median at the largest size against the smallest (target: within
2x), and writes docs/benchmarks.md.
"""

import argparse
import html
import os
import re
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from benchmarks.common import manage, run, scratch_database, write_section  # noqa: E402

TASKS = "/admin/tasks/task/"
TARGET_RATIO = 2.0
SEARCHES = {
    "search 'deploy' (a word in 1 in 16 titles)": "deploy",
    "search 'vortals' (a rarer word)": "vortals",
    "search 'deploy viral' (two words)": "deploy viral",
    "search 'zebra' (no match)": "zebra",
}


def links(page: str, pattern: str) -> list[tuple[str, str]]:
    """(query string, text) of each link matching ``pattern`` (with those two groups)."""
    return [(html.unescape(href), text.strip()) for href, text in re.findall(pattern, page, re.S)]


def sidebar_filters(page: str) -> list[tuple[str, str]]:
    """(name, query) for every value of every filter in the page's sidebar, "All" left out."""
    found = []
    for title, block in re.findall(
        r'<details data-filter-title="([^"]+)"[^>]*>(.*?)</details>', page, re.S
    ):
        for query, text in links(block, r'<a href="(\?[^"]+)"[^>]*>([^<]+)</a>'):
            found.append((f"filter {title} = {text}", query))
    return found


def sortable_columns(page: str) -> list[tuple[str, int]]:
    """(column, number in ``?o=``) of each sortable header of the page."""
    return [
        (column, int(number))
        for column, number in re.findall(
            r'class="sortable column-(\w+)[^"]*">.*?<a href="\?o=(\d+)"', page, re.S
        )
    ]


def views(client) -> list[tuple[str, str]]:
    """(name, query string) of every page measured, found from the default page's links."""
    default = client.get(TASKS).content.decode()
    found = [("default page (newest first)", "")]
    pages = [int(p) for p in re.findall(r'<a href="\?p=(\d+)"', default)]
    if pages:
        found += [("page 2", "?p=2"), ("the last page linked", f"?p={max(pages)}")]
    columns = sortable_columns(default)
    for column, number in columns:
        found += [
            (f"sorted by {column}", f"?o={number}"),
            (f"sorted by {column}, desc", f"?o=-{number}"),
        ]
    found += sidebar_filters(default)
    years = links(default, r'<ul class="toplinks">.*?<a href="(\?due_date__year=\d+)">(\d+)</a>')
    if years:
        query, year = years[0]
        found.append((f"date hierarchy: {year}", query))
        year_page = client.get(TASKS + query).content.decode()
        months = links(
            year_page, r'<a href="(\?due_date__month=\d+&amp;due_date__year=\d+)">([^<]+)</a>'
        )
        if months:
            found.append((f"date hierarchy: {months[0][1]} {year}", months[0][0]))
    found += [(name, "?q=" + term.replace(" ", "+")) for name, term in SEARCHES.items()]
    number = dict(columns)
    found += [
        ("priority = urgent, sorted by title", f"?priority=urgent&o={number['title']}"),
        ("status = blocked, search 'deploy'", "?status__exact=blocked&q=deploy"),
        ("search 'deploy', sorted by priority", f"?q=deploy&o=-{number['priority_level']}"),
        ("status = to do, sorted by due date", f"?status__exact=todo&o={number['due_date']}"),
        ("workspace = not set yet, status = done", "?workspace=none&status__exact=done"),
    ]
    return found


def measure(renders: int) -> list[tuple[str, str, list[float], int, int]]:
    """(view, query, render times in ms, queries, rows shown) for each view."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, created = get_user_model().objects.get_or_create(username="bench", is_staff=True)
    if created:
        user.groups.add(Group.objects.get(name="Member"))
    client = Client()
    client.force_login(user)
    results = []
    for name, query in views(client):
        url = TASKS + query
        assert client.get(url).status_code == 200, url  # warm-up
        times = []
        for _ in range(renders):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        rows = response.content.decode().count('<td class="field-status">')
        results.append((name, query, times, len(queries), rows))
    return results


def prepare(stack: ExitStack, tasks: int) -> tuple[str, float]:
    """A scratch database with ``tasks`` tasks and the admin's indexes; its URL and the
    seconds ``migrate tasks`` took to build those indexes."""
    url = stack.enter_context(scratch_database(f"taskproj_bench_admin_{tasks}"))
    env = {"DATABASE_URL": url}
    run(manage("migrate", "-v0"), env_extra=env)
    run(manage("migrate", "tasks", "0009_workspace_contract", "-v0"), env_extra=env)
    run(manage("seed", f"--tasks={tasks}", "--seed=1", "--no-progress"), env_extra=env)
    index_seconds, _, _ = run(manage("migrate", "tasks", "-v0"), env_extra=env)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks_task")
    return url, index_seconds


def measure_round(url: str, renders: int) -> list[list[str]]:
    """One child process's figures on the database at ``url``."""
    _, _, out = run(
        [sys.executable, __file__, f"--renders={renders}", "--measure"],
        env_extra={
            "DATABASE_URL": url,
            "DJANGO_SETTINGS_MODULE": "taskproj.settings",
            "ALLOWED_HOSTS": "testserver",
        },
    )
    return [line.split("\t") for line in out.strip().splitlines()]


def report(sizes: list[int], renders: int, rounds: int, built: dict, figures: dict) -> str:
    """The markdown table: each page at each size, and the largest against the smallest."""
    small, large = sizes[0], sizes[-1]
    header = " | ".join(f"{size:,}: median (slowest), queries, rows" for size in sizes)
    lines = [
        "## Admin task list (PostgreSQL)",
        "",
        f"Command: `python benchmarks/admin_pages.py --tasks {' '.join(map(str, sizes))} "
        f"--renders {renders} --rounds {rounds}` ({datetime.now(UTC):%Y-%m-%d}, 2 cores). Each "
        "size on its own scratch database, seeded, the admin's indexes then built by `migrate "
        "tasks` (0010_admin_indexes, concurrently: "
        + ", ".join(f"{built[size]:.1f} s at {size:,} tasks" for size in sizes)
        + "), vacuumed and analysed. A Member through Django's test client (no network); "
        f"{rounds} rounds, each a process per size in turn, rendering every page once to warm "
        f"up and then {renders} times: the median and slowest of the {rounds * renders} "
        "renders, the SQL queries of one, and the rows it shows. Target: each page's median at "
        f"{large:,} tasks within {TARGET_RATIO:.0f}x of its median at {small:,}.",
        "",
        f"| page | {header} | ratio | within {TARGET_RATIO:.0f}x |",
        "|---|" + "---:|" * len(sizes) + "---:|:---:|",
    ]
    misses = []
    for name in figures[large]:
        cells = []
        for size in sizes:
            times, queries, rows = figures[size].get(name, ([], 0, 0))
            cells.append(
                f"{statistics.median(times):.0f} ms ({max(times):.0f}), {queries}, {rows}"
                if times
                else "—"
            )
        base = figures[small].get(name)
        ratio = statistics.median(figures[large][name][0]) / statistics.median(base[0])
        if ratio > TARGET_RATIO:
            misses.append(name)
        verdict = "yes" if ratio <= TARGET_RATIO else "**no**"
        lines.append(f"| {name} | {' | '.join(cells)} | {ratio:.2f}x | {verdict} |")
    pages = len(figures[large])
    lines += [
        "",
        f"{pages - len(misses)} of {pages} pages within {TARGET_RATIO:.0f}x"
        + (f"; not: {', '.join(misses)}." if misses else "."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--renders", type=int, default=5, help="renders per page per round")
    parser.add_argument("--rounds", type=int, default=3, help="processes per size, in turn")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process, on the scratch database
        for name, query, times, queries, rows in measure(args.renders):
            shown = ",".join(f"{t:.1f}" for t in times)
            sys.stdout.write(f"{name}\t{query}\t{shown}\t{queries}\t{rows}\n")
        return

    sizes = sorted(args.tasks)
    figures = {size: {} for size in sizes}
    with ExitStack() as stack:
        prepared = {size: prepare(stack, size) for size in sizes}
        for _ in range(args.rounds):
            for size in sizes:
                for name, _query, times, queries, rows in measure_round(
                    prepared[size][0], args.renders
                ):
                    earlier = figures[size].get(name, ([], 0, 0))[0]
                    figures[size][name] = (
                        earlier + [float(t) for t in times.split(",")],
                        int(queries),
                        int(rows),
                    )
    built = {size: prepared[size][1] for size in sizes}
    markdown = report(sizes, args.renders, args.rounds, built, figures)
    write_section("admin", markdown)
    sys.stdout.write(markdown + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
