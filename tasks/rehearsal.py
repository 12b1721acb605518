"""A rehearsal of the priority rollout on a scratch PostgreSQL database, under live traffic.

Used by ``manage.py rehearse``. The scratch database is created on the server of a configured
alias and dropped afterwards. It is set up as production was before the rollout (tasks at
0001, reference fixtures, legacy rows), then each rollout step runs exactly as an operator would
run it (``call_command``) while threads with their own connections play the application:

- old-code writers, for the whole run: INSERTs that never name ``priority`` and UPDATEs of
  titles and statuses — the app servers that have not been redeployed yet;
- new-code writers, from the moment the expand step has shipped: the current model's
  ``create()`` and ``save()``, which always write a priority;
- readers: the admin's list page, filtered and ordered — by status and newest first as the old
  code does, and by priority rank once the new code is out.

Every application query is timed and its errors are kept. A watcher samples
``pg_stat_activity`` for application sessions waiting on a lock. During the expand step a
blocker transaction holds a lock on tasks_task for longer than the migration's lock_timeout,
so the give-up-and-retry path of ``manage.py migrate`` is exercised.
"""

import copy
import datetime
import io
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.models import Sum
from django.utils import timezone

from tasks.backfill import column_state
from tasks.models import BackfillRun, Category, Task
from tasks.priority import Priority
from tasks.priority_backfill import PENDING, PRIORITY_BACKFILL

APP = "taskproj-rehearsal-app"
ROLLOUT_APP = "taskproj-rehearsal-rollout"
BLOCKER_APP = "taskproj-rehearsal-blocker"
PRIORITY_INDEX = "tasks_task_priority_due_idx"
PAGE_SIZE = 100  # the admin's list_per_page
WRITE_KINDS = frozenset({"old insert", "old update", "new insert", "new update"})
BEFORE_PRIORITY = "0001_initial"
# What production has before the rollout, besides tasks at 0001.
SET_UP_APPS = ("contenttypes", "auth", "admin", "sessions")
# Phases of traffic alone, before the first step and after the last, for comparison.
BASELINE, AFTER = "baseline", "after"


@dataclass(frozen=True)
class Step:
    """One rollout step: a management command, as an operator runs it."""

    name: str
    command: tuple[str, ...]
    # A transaction holds a lock on tasks_task, longer than lock_timeout, as the step starts.
    blocked: bool = False
    # The application code that knows ``priority`` is deployed once this step is done.
    ships_new_code: bool = False


ROLLOUT = (
    Step("expand", ("migrate", "tasks", "0002_priority_expand"), blocked=True, ships_new_code=True),
    Step("backfill", ("backfill_priority", "--no-progress")),
    Step("data migration", ("migrate", "tasks", "0003_priority_backfill")),
    Step("contract", ("migrate", "tasks", "0004_priority_contract")),
    Step("index", ("migrate", "tasks", "0005_priority_index")),
)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class StepReport:
    """What happened to the application while one step ran."""

    name: str
    command: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    slowest_by_kind: dict[str, float] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    longest_lock_wait: float = 0.0
    rows_backfilled: int = 0
    lock_retries: int = 0
    step_error: str = ""

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def slowest_write(self) -> float:
        """The slowest INSERT or UPDATE: single-row writes do not scan, so their time is
        (nearly all) waiting — a cross-check of the sampled lock waits."""
        return max(
            (seconds for kind, seconds in self.slowest_by_kind.items() if kind in WRITE_KINDS),
            default=0.0,
        )

    def as_dict(self) -> dict[str, Any]:
        """The report of this step, latencies in milliseconds."""
        ordered = sorted(self.latencies)
        return {
            "step": self.name,
            "command": self.command,
            "seconds": round(self.seconds, 2),
            "queries": len(self.latencies),
            "failed_queries": self.failed,
            "errors": [{"error": error, "count": n} for error, n in self.errors.most_common()],
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 1),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 1),
            "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 1),
            "slowest_ms_by_kind": {
                kind: round(seconds * 1000, 1)
                for kind, seconds in sorted(self.slowest_by_kind.items())
            },
            "longest_lock_wait_ms": round(self.longest_lock_wait * 1000, 1),
            "rows_backfilled": self.rows_backfilled,
            "migration_lock_retries": self.lock_retries,
            "step_error": self.step_error,
        }


@dataclass(frozen=True)
class EndState:
    """The table after the rollout."""

    null_rows: int
    not_null: bool
    column_default: str
    index_valid: bool

    @property
    def ok(self) -> bool:
        return self.null_rows == 0 and self.not_null and self.index_valid


@dataclass
class RehearsalReport:
    """Every step's report, the end state, and whether the rollout was error-free."""

    settings: dict[str, Any]
    steps: list[StepReport] = field(default_factory=list)
    end_state: EndState | None = None

    @property
    def stall_limit(self) -> float:
        return self.settings["stall_limit_ms"] / 1000

    def problems(self) -> list[str]:
        """Why the rehearsal failed; empty when no application query failed or stalled."""
        found = []
        for step in self.steps:
            if step.step_error:
                found.append(f"{step.name}: the step itself failed: {step.step_error}")
            if step.failed:
                found.append(f"{step.name}: {step.failed:,} application queries failed")
            waited = max(step.longest_lock_wait, step.slowest_write)
            if waited > self.stall_limit:
                found.append(
                    f"{step.name}: a query waited {waited:.1f} s, "
                    f"over the {self.stall_limit:.1f} s limit (lock_timeout + 1 s)"
                )
        if self.end_state is None:
            found.append("the rollout did not reach its end")
        elif not self.end_state.ok:
            found.append(f"end state is wrong: {self.end_state}")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "steps": [step.as_dict() for step in self.steps],
            "end_state": None if self.end_state is None else vars(self.end_state),
            "ok": not self.problems(),
            "problems": self.problems(),
        }


class Traffic:
    """Application threads, each with its own connection, recording into the current step."""

    def __init__(self, *, using: str, rate: float, clients: int, seed: int) -> None:
        self.using = using
        self.clients = clients
        # Each thread paces itself so that all of them together make ``rate`` requests/s.
        self.interval = 3 * clients / rate
        self.seed = seed
        self.stop = threading.Event()
        self.new_code = threading.Event()
        self.lock = threading.Lock()
        self.current: StepReport | None = None
        self.threads: list[threading.Thread] = []
        self.max_id = 1
        self.category_ids: list[int] = []

    def start(self) -> None:
        """Start the old-code writers, new-code writers (idle until shipped), readers, watcher."""
        tasks = Task.objects.using(self.using)
        self.max_id = tasks.order_by("-pk").values_list("pk", flat=True).first() or 1
        self.category_ids = list(Category.objects.using(self.using).values_list("pk", flat=True))
        roles = [self.old_code_writer, self.new_code_writer, self.reader]
        for number in range(self.clients):
            for role in roles:
                rng = random.Random(f"{self.seed}-{role.__name__}-{number}")
                self.threads.append(threading.Thread(target=self.loop, args=(role, rng)))
        self.threads.append(threading.Thread(target=self.watch_lock_waits))
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def record(self, kind: str, seconds: float, error: Exception | None = None) -> None:
        with self.lock:
            if self.current is None:
                return
            self.current.latencies.append(seconds)
            slowest = self.current.slowest_by_kind
            slowest[kind] = max(seconds, slowest.get(kind, 0.0))
            if error is not None:
                self.current.errors[f"{kind}: {first_line(error)}"] += 1

    def timed(self, kind: str, query: Callable[[], Any]) -> Any:
        """Run one application query, recording its latency and any error."""
        started = time.monotonic()
        try:
            result = query()
        except DatabaseError as exc:
            self.record(kind, time.monotonic() - started, exc)
            return None
        self.record(kind, time.monotonic() - started)
        return result

    def loop(self, role: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                role(rng)
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            connections[self.using].close()

    def random_task_id(self, rng: random.Random) -> int:
        return rng.randint(1, self.max_id)

    def random_category(self, rng: random.Random) -> int | None:
        return rng.choice(self.category_ids) if self.category_ids else None

    def random_due_date(self, rng: random.Random) -> datetime.date | None:
        if rng.random() < 0.2:
            return None
        return timezone.localdate() + datetime.timedelta(days=rng.randint(-30, 60))

    def old_code_writer(self, rng: random.Random) -> None:
        """SQL as the code before the column wrote it: ``priority`` is never named."""
        choice = rng.random()
        with connections[self.using].cursor() as cursor:
            if choice < 0.4:
                self.timed(
                    "old insert",
                    lambda: cursor.execute(
                        "INSERT INTO tasks_task (title, description, status, due_date, "
                        "category_id, created_at, updated_at) "
                        "VALUES (%s, '', 'todo', %s, %s, now(), now())",
                        [
                            f"old-code task {rng.randint(1, 10**9)}",
                            self.random_due_date(rng),
                            self.random_category(rng),
                        ],
                    ),
                )
            elif choice < 0.7:
                self.timed(
                    "old update",
                    lambda: cursor.execute(
                        "UPDATE tasks_task SET title = %s, updated_at = now() WHERE id = %s",
                        [f"renamed {rng.randint(1, 10**9)}", self.random_task_id(rng)],
                    ),
                )
            else:
                self.timed(
                    "old update",
                    lambda: cursor.execute(
                        "UPDATE tasks_task SET status = %s, updated_at = now() WHERE id = %s",
                        [rng.choice(Task.Status.values), self.random_task_id(rng)],
                    ),
                )

    def new_code_writer(self, rng: random.Random) -> None:
        """The current model: create() and save() derive and write a priority."""
        if not self.new_code.is_set():
            return
        tasks = Task.objects.using(self.using)
        if rng.random() < 0.5:
            self.timed(
                "new insert",
                lambda: tasks.create(
                    title=f"new-code task {rng.randint(1, 10**9)}",
                    due_date=self.random_due_date(rng),
                    category_id=self.random_category(rng),
                ),
            )
            return
        task = self.timed("new read", lambda: tasks.filter(pk=self.random_task_id(rng)).first())
        if task is not None:
            task.status = rng.choice(Task.Status.values)
            # save() adds priority to update_fields when the row has none yet: the dual-write.
            self.timed(
                "new update",
                lambda: task.save(using=self.using, update_fields=["status", "updated_at"]),
            )

    def reader(self, rng: random.Random) -> None:
        """The admin's task list: one page, filtered and ordered as people use it.

        New code: mostly the default order (newest first) filtered by priority or not at all,
        sometimes sorted by priority within one priority (the admin's column sort). Old code:
        filtered by status, newest first. (An unfiltered sort by rank reads the whole table;
        run back to back by every reader it would measure the CPU, not the rollout.)
        """
        tasks = Task.objects.using(self.using).select_related("category", "assignee")
        if self.new_code.is_set() and rng.random() < 0.5:
            priority = rng.choice(Priority.values)
            choice = rng.random()
            if choice < 0.6:
                page = tasks.filter(priority=priority).order_by("-id")
            elif choice < 0.8:
                page = tasks.order_by("-id")
            else:
                page = tasks.filter(priority=priority).order_by_priority()
            self.timed("new list page", lambda: list(page[:PAGE_SIZE]))
            return
        page = tasks.defer("priority").filter(status=rng.choice(Task.Status.values))
        self.timed("old list page", lambda: list(page.order_by("-id")[:PAGE_SIZE]))

    def watch_lock_waits(self) -> None:
        """Sample how long application sessions have been waiting on a lock."""
        try:
            with connections[self.using].cursor() as cursor:
                while not self.stop.is_set():
                    cursor.execute(
                        "SELECT COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - "
                        "query_start)), 0)::float FROM pg_stat_activity "
                        "WHERE application_name = %s AND wait_event_type = 'Lock' "
                        "AND pid <> pg_backend_pid()",
                        [APP],
                    )
                    waited = cursor.fetchone()[0]
                    with self.lock:
                        if self.current is not None and waited > self.current.longest_lock_wait:
                            self.current.longest_lock_wait = waited
                    self.stop.wait(0.02)
        finally:
            connections[self.using].close()


@contextmanager
def scratch_aliases(using: str, name: str) -> Iterator[dict[str, str]]:
    """Create database ``name`` on the server of ``using``; yield aliases for it; drop it after.

    Three aliases, told apart in pg_stat_activity by their application_name: the rollout
    (migrations, backfill), the application traffic and the blocker.
    """
    source = connections[using]
    quoted = source.ops.quote_name(name)
    with source._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {quoted}")
    aliases = {
        "rollout": (f"{name}_rollout", ROLLOUT_APP),
        "app": (f"{name}_app", APP),
        "blocker": (f"{name}_blocker", BLOCKER_APP),
    }
    for alias, application_name in aliases.values():
        settings_dict = copy.deepcopy(source.settings_dict)
        settings_dict["NAME"] = name
        settings_dict["OPTIONS"] = {
            **settings_dict.get("OPTIONS", {}),
            "application_name": application_name,
        }
        connections.settings[alias] = settings_dict
    try:
        yield {role: alias for role, (alias, _) in aliases.items()}
    finally:
        for alias, _ in aliases.values():
            connections[alias].close()
            del connections[alias]
            del connections.settings[alias]
        with source._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")


@contextmanager
def blocker(using: str, seconds: float) -> Iterator[None]:
    """A transaction that has read tasks_task (ACCESS SHARE) and stays open ``seconds``.

    Like a long report or an idle-in-transaction session: an ALTER TABLE queued behind it would
    make every later query on the table wait too, unless it gives up after lock_timeout.
    """
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(using=using), connections[using].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM tasks_task")
                holding.set()
                done.wait(seconds)
        finally:
            holding.set()
            connections[using].close()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        yield
    finally:
        thread.join()


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def rows_backfilled(using: str) -> int:
    """Rows every run of the priority backfill has filled so far (0 before the expand step)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
    if BackfillRun._meta.db_table not in tables:
        return 0
    runs = BackfillRun.objects.using(using).filter(name=PRIORITY_BACKFILL)
    return runs.aggregate(total=Sum("rows_done"))["total"] or 0


def end_state(using: str) -> EndState:
    """NULL priorities left, whether NOT NULL and the default are in place, the index valid."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT is_nullable = 'NO', COALESCE(column_default, '') "
            "FROM information_schema.columns "
            "WHERE table_name = 'tasks_task' AND column_name = 'priority'"
        )
        not_null, default = cursor.fetchone() or (False, "")
        cursor.execute(
            "SELECT COALESCE(bool_and(i.indisvalid), false) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [PRIORITY_INDEX],
        )
        index_valid = cursor.fetchone()[0]
    state = column_state(Task, "priority", using=using)
    null_rows = 0 if state == "missing" else Task.objects.using(using).filter(PENDING).count()
    return EndState(
        null_rows=null_rows, not_null=not_null, column_default=default, index_valid=index_valid
    )


def set_up(using: str, *, tasks: int, seed: int) -> None:
    """Production before the rollout: every app migrated, tasks at 0001, fixtures, legacy rows."""
    # Not django_tasks_database: its data migrations query the default database instead of the
    # one being migrated, and the rehearsal runs no workers.
    for app_label in SET_UP_APPS:
        call_command("migrate", app_label, database=using, verbosity=0)
    call_command("migrate", "tasks", BEFORE_PRIORITY, database=using, verbosity=0)
    call_command("loaddata", "categories", "roles", database=using, verbosity=0)
    call_command(
        "seed",
        tasks=str(tasks),
        seed=str(seed),
        without_priority=True,
        no_progress=True,
        database=using,
        verbosity=0,
    )
    with connections[using].cursor() as cursor:
        cursor.execute("VACUUM ANALYZE tasks_task")


def rehearse(
    *,
    using: str,
    scratch_name: str,
    tasks: int,
    rate: float,
    clients: int,
    blocker_seconds: float,
    baseline_seconds: float,
    lock_timeout_ms: int,
    seed: int = 1,
    steps: tuple[Step, ...] = ROLLOUT,
    on_step_start: Callable[[int, Step], None] | None = None,
    on_step_end: Callable[[int, StepReport], None] | None = None,
    step_stdout: io.TextIOBase | None = None,
) -> RehearsalReport:
    """Rehearse ``steps`` on a scratch copy of the schema under traffic; return the report.

    ``using`` names the server (its database is not touched). The report starts with a
    baseline (traffic and nothing else for ``baseline_seconds``) and ends with as long a phase
    after the last step, so each step's latencies can be compared with both.
    """
    report = RehearsalReport(
        settings={
            "tasks": tasks,
            "rate_per_second": rate,
            "clients_per_role": clients,
            "lock_timeout_ms": lock_timeout_ms,
            "stall_limit_ms": lock_timeout_ms + 1000,
            "blocker_seconds": blocker_seconds,
        }
    )
    with scratch_aliases(using, scratch_name) as alias:
        rollout = alias["rollout"]
        set_up(rollout, tasks=tasks, seed=seed)
        with connections[rollout].cursor() as cursor:
            cursor.execute("SELECT version()")
            report.settings["server"] = cursor.fetchone()[0].split(" on ")[0]
        traffic = Traffic(using=alias["app"], rate=rate, clients=clients, seed=seed)
        phases = [
            Step(BASELINE, ()),
            *steps,
            Step(AFTER, ()),
        ]
        traffic.start()
        try:
            for number, step in enumerate(phases):
                if on_step_start is not None:
                    on_step_start(number, step)
                step_report = StepReport(name=step.name, command=" ".join(step.command))
                if step.command:
                    run_step(step, step_report, traffic, alias, blocker_seconds, step_stdout)
                else:
                    with traffic.lock:
                        traffic.current = step_report
                    time.sleep(baseline_seconds)
                    step_report.seconds = baseline_seconds
                report.steps.append(step_report)
                if on_step_end is not None:
                    on_step_end(number, step_report)
                if step_report.step_error:
                    break
        finally:
            with traffic.lock:
                traffic.current = None
            traffic.finish()
        if not any(step.step_error for step in report.steps):
            report.end_state = end_state(rollout)
        connections[rollout].close()
    return report


def run_step(
    step: Step,
    step_report: StepReport,
    traffic: Traffic,
    alias: dict[str, str],
    blocker_seconds: float,
    step_stdout: io.TextIOBase | None,
) -> None:
    """Run one step's command on the rollout alias, the traffic recording into ``step_report``."""
    rollout = alias["rollout"]
    migrate_log = logging.getLogger("tasks.migrate")
    before = rows_backfilled(rollout)
    retries = _CountWarnings()
    migrate_log.addHandler(retries)
    with traffic.lock:
        traffic.current = step_report
    started = time.monotonic()
    try:
        with (
            blocker(alias["blocker"], blocker_seconds)
            if step.blocked and blocker_seconds > 0
            else nullcontext()
        ):
            call_command(
                *step.command,
                database=rollout,
                stdout=step_stdout or io.StringIO(),
                stderr=step_stdout or io.StringIO(),
            )
    except Exception as exc:  # reported, and the rollout stops there
        step_report.step_error = first_line(exc)
    finally:
        step_report.seconds = time.monotonic() - started
        migrate_log.removeHandler(retries)
        connections[rollout].close()  # each step is its own process in real life
    step_report.lock_retries = retries.count
    step_report.rows_backfilled = rows_backfilled(rollout) - before
    if step.ships_new_code:
        traffic.new_code.set()
