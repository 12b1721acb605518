"""A rehearsal of one rollout on a scratch PostgreSQL database, under live traffic.

Used by ``manage.py rehearse``. The scratch database is created on the server of a configured
alias and dropped afterwards. It is set up as production was before the rollout (the plan's
``set_up`` commands: migrations, reference fixtures, legacy rows), then each rollout step runs
exactly as an operator would run it (``call_command``) while threads with their own connections
play the application (the plan's :class:`~migration_safety.rollouts.Application`):

- old-code writers: the app servers that have not been redeployed yet, until a step retires them;
- new-code writers, from the moment a step has shipped the code that writes the column;
- readers: the list page, as the old code reads it, and as the new code does once it is out.

Every application query is timed and its errors are kept. A watcher samples
``pg_stat_activity`` for application sessions waiting on a lock. During a step marked
``blocked`` a blocker transaction holds a lock on the table for longer than the migration's
lock_timeout, so the give-up-and-retry path of ``manage.py migrate`` is exercised.
"""

import copy
import io
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.core.management import call_command
from django.db import DatabaseError, connections, transaction

from migration_safety.rollouts import Application, Rollout, Step

APP = "migration-rehearsal-app"
ROLLOUT_APP = "migration-rehearsal-rollout"
BLOCKER_APP = "migration-rehearsal-blocker"
WRITE_KINDS = frozenset({"old insert", "old update", "new insert", "new update"})
# A step's "0 failed queries" says something only if the application ran while it did: a step
# that ends in milliseconds (loaddata of two small fixtures) would otherwise report on no query
# at all. The step's window stays open after its command until the traffic has sent this many
# queries into it (the step's seconds are still its command's), or for at most
# STEP_TRAFFIC_WAIT_SECONDS (the report then shows how few there were).
MIN_STEP_QUERIES = 10
STEP_TRAFFIC_WAIT_SECONDS = 5.0
# Phases of traffic alone, before the first step and after the last, for comparison.
BASELINE, AFTER = "baseline", "after"


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` between 0 and 1) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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
    lock_timeouts: int = 0
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
        return {
            "step": self.name,
            "command": self.command,
            "seconds": round(self.seconds, 2),
            "queries": len(self.latencies),
            "failed_queries": self.failed,
            "errors": [{"error": error, "count": n} for error, n in self.errors.most_common()],
            "p50_ms": round(percentile(self.latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "slowest_ms_by_kind": {
                kind: round(seconds * 1000, 1)
                for kind, seconds in sorted(self.slowest_by_kind.items())
            },
            "longest_lock_wait_ms": round(self.longest_lock_wait * 1000, 1),
            "rows_backfilled": self.rows_backfilled,
            "migration_lock_timeouts": self.lock_timeouts,
            "step_error": self.step_error,
        }


@dataclass(frozen=True)
class EndState:
    """The rolled-out column after the rollout."""

    null_rows: int
    not_null: bool
    column_default: str
    indexes_valid: bool
    constraints_valid: bool = True

    @property
    def ok(self) -> bool:
        return (
            self.null_rows == 0 and self.not_null and self.indexes_valid and self.constraints_valid
        )


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
        problems = self.problems()
        return {
            "settings": self.settings,
            "steps": [step.as_dict() for step in self.steps],
            "end_state": None if self.end_state is None else vars(self.end_state),
            "ok": not problems,
            "problems": problems,
        }


class Traffic:
    """Application threads, each with its own connection, recording into the current step."""

    def __init__(
        self,
        application: Application,
        *,
        using: str,
        rate: float,
        clients: int,
        seed: int,
    ) -> None:
        self.application = application
        self.using = using
        self.clients = clients
        # Each thread paces itself so that all of them together make ``rate`` requests/s.
        self.interval = 3 * clients / rate
        self.seed = seed
        self.stop = threading.Event()
        self.new_code = threading.Event()
        self.old_code_retired = threading.Event()
        self.lock = threading.Lock()
        self.current: StepReport | None = None
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the old-code writers, new-code writers (idle until shipped), readers, watcher."""
        with connections[self.using].cursor() as cursor:
            self.application.prepare(self.query_on(cursor))
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

    def wait_for_queries(self, step: StepReport, count: int, timeout: float) -> None:
        """Wait until ``count`` queries are recorded into ``step``, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(step.latencies) >= count:
                    return
            time.sleep(0.01)

    def record(self, kind: str, seconds: float, error: Exception | None = None) -> None:
        with self.lock:
            if self.current is None:
                return
            self.current.latencies.append(seconds)
            slowest = self.current.slowest_by_kind
            slowest[kind] = max(seconds, slowest.get(kind, 0.0))
            if error is not None:
                self.current.errors[f"{kind}: {first_line(error)}"] += 1

    def query_on(self, cursor) -> Callable[[str, str, Sequence[Any]], list[tuple] | None]:
        """The application's way to send a query on ``cursor``: timed, its error recorded."""

        def query(kind: str, sql: str, params: Sequence[Any] = ()) -> list[tuple] | None:
            started = time.monotonic()
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall() if cursor.description else []
            except DatabaseError as exc:
                self.record(kind, time.monotonic() - started, exc)
                return None
            self.record(kind, time.monotonic() - started)
            return rows

        return query

    def loop(self, role: Callable[[random.Random, Any], None], rng: random.Random) -> None:
        try:
            with connections[self.using].cursor() as cursor:
                query = self.query_on(cursor)
                next_at = time.monotonic()
                while not self.stop.is_set():
                    role(rng, query)
                    next_at += self.interval
                    self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            connections[self.using].close()

    def old_code_writer(self, rng: random.Random, query) -> None:
        if not self.old_code_retired.is_set():
            self.application.old_write(rng, query)

    def new_code_writer(self, rng: random.Random, query) -> None:
        if self.new_code.is_set():
            self.application.new_write(rng, query)

    def reader(self, rng: random.Random, query) -> None:
        self.application.read(rng, query, new_code=self.new_code.is_set())

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
def extra_alias(using: str, alias: str, **changes: Any) -> Iterator[str]:
    """Register ``alias``: the connection settings of ``using`` with ``changes``; remove it
    (closed) afterwards."""
    settings_dict = copy.deepcopy(connections[using].settings_dict)
    for key, value in changes.items():
        settings_dict[key] = (
            {**settings_dict.get(key, {}), **value} if isinstance(value, dict) else value
        )
    connections.settings[alias] = settings_dict
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


@contextmanager
def maintenance_cursor(using: str) -> Iterator[Any]:
    """A cursor on the server's maintenance database (``postgres``) of ``using``: where a
    database is created and dropped, outside any of them."""
    with extra_alias(using, f"{using}__maintenance", NAME="postgres") as alias:
        with connections[alias].cursor() as cursor:
            yield cursor


@contextmanager
def scratch_aliases(using: str, name: str) -> Iterator[dict[str, str]]:
    """Create database ``name`` on the server of ``using``; yield aliases for it; drop it after.

    Three aliases, told apart in pg_stat_activity by their application_name: the rollout
    (migrations, backfill), the application traffic and the blocker.
    """
    source = connections[using]
    quoted = source.ops.quote_name(name)
    with maintenance_cursor(using) as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {quoted}")
    roles = {"rollout": ROLLOUT_APP, "app": APP, "blocker": BLOCKER_APP}
    try:
        with ExitStack() as stack:
            yield {
                role: stack.enter_context(
                    extra_alias(
                        using,
                        f"{name}_{role}",
                        NAME=name,
                        OPTIONS={"application_name": application_name},
                    )
                )
                for role, application_name in roles.items()
            }
    finally:
        with maintenance_cursor(using) as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")


@contextmanager
def blocker(using: str, table: str, seconds: float) -> Iterator[None]:
    """A transaction that has read ``table`` (ACCESS SHARE) and stays open ``seconds``.

    Like a long report or an idle-in-transaction session: an ALTER TABLE queued behind it would
    make every later query on the table wait too, unless it gives up after lock_timeout. It ends
    early if the block does.
    """
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(using=using), connections[using].cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {connections[using].ops.quote_name(table)}")
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
        done.set()  # a step that ended first (it failed) does not wait the blocker out
        thread.join()


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def end_state(rollout: Rollout, using: str) -> EndState:
    """NULL values left, NOT NULL and the default in place, the indexes and constraints valid."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT is_nullable = 'NO', COALESCE(column_default, '') "
            "FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            [rollout.table, rollout.column],
        )
        row = cursor.fetchone()
        if row is None:
            return EndState(null_rows=-1, not_null=False, column_default="", indexes_valid=False)
        not_null, default = row
        cursor.execute(
            "SELECT count(*) FILTER (WHERE i.indisvalid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ANY(%s)",
            [list(rollout.indexes)],
        )
        indexes_valid = cursor.fetchone()[0] == len(rollout.indexes)
        cursor.execute(
            "SELECT COALESCE(bool_and(c.convalidated), true) FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
            "WHERE c.conrelid = %s::regclass AND a.attname = %s",
            [rollout.table, rollout.column],
        )
        constraints_valid = cursor.fetchone()[0]
        quote = connections[using].ops.quote_name
        cursor.execute(
            f"SELECT count(*) FROM {quote(rollout.table)} WHERE {quote(rollout.column)} IS NULL"
        )
        null_rows = cursor.fetchone()[0]
    return EndState(
        null_rows=null_rows,
        not_null=not_null,
        column_default=default,
        indexes_valid=indexes_valid,
        constraints_valid=constraints_valid,
    )


def set_up(rollout: Rollout, using: str, *, tasks: int, seed: int) -> None:
    """Production before the rollout: the plan's set-up commands, then fresh statistics."""
    for command in rollout.set_up:
        arguments = [part.format(tasks=tasks, seed=seed) for part in command]
        call_command(*arguments, database=using, verbosity=0, stdout=io.StringIO())
    with connections[using].cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {connections[using].ops.quote_name(rollout.table)}")


def rehearse(
    rollout: Rollout,
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
    on_step_start: Callable[[int, Step], None] | None = None,
    on_step_end: Callable[[int, StepReport], None] | None = None,
    step_stdout: io.TextIOBase | None = None,
) -> RehearsalReport:
    """Rehearse ``rollout`` on a scratch database under traffic.

    ``using`` names the server (its database is not touched). The report starts with a
    baseline (traffic and nothing else for ``baseline_seconds``) and ends with as long a phase
    after the last step, so each step's latencies can be compared with both.
    """
    report = RehearsalReport(
        settings={
            "rollout": rollout.name,
            "tasks": tasks,
            "rate_per_second": rate,
            "clients_per_role": clients,
            "lock_timeout_ms": lock_timeout_ms,
            "stall_limit_ms": lock_timeout_ms + 1000,
            "blocker_seconds": blocker_seconds,
        }
    )
    with scratch_aliases(using, scratch_name) as alias:
        rollout_alias = alias["rollout"]
        set_up(rollout, rollout_alias, tasks=tasks, seed=seed)
        with connections[rollout_alias].cursor() as cursor:
            cursor.execute("SELECT version()")
            report.settings["server"] = cursor.fetchone()[0].split(" on ")[0]
        traffic = Traffic(
            rollout.application(),
            using=alias["app"],
            rate=rate,
            clients=clients,
            seed=seed,
        )
        phases = [Step(BASELINE, ()), *rollout.steps, Step(AFTER, ())]
        traffic.start()
        try:
            for number, step in enumerate(phases):
                if on_step_start is not None:
                    on_step_start(number, step)
                step_report = StepReport(name=step.name, command=" ".join(step.command))
                if step.command:
                    run_step(
                        rollout, step, step_report, traffic, alias, blocker_seconds, step_stdout
                    )
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
            report.end_state = end_state(rollout, rollout_alias)
        connections[rollout_alias].close()
    return report


def run_step(
    rollout: Rollout,
    step: Step,
    step_report: StepReport,
    traffic: Traffic,
    alias: dict[str, str],
    blocker_seconds: float,
    step_stdout: io.TextIOBase | None,
) -> None:
    """Run one step's command on the rollout alias, the traffic recording into ``step_report``."""
    using = alias["rollout"]
    migrate_log = logging.getLogger("migration_safety.migrate")
    before = rollout.progress(using) if rollout.progress else 0
    timeouts = _CountWarnings()
    migrate_log.addHandler(timeouts)
    if step.retires_old_code:
        traffic.old_code_retired.set()
    with traffic.lock:
        traffic.current = step_report
    started = time.monotonic()
    try:
        with (
            blocker(alias["blocker"], rollout.table, blocker_seconds)
            if step.blocked and blocker_seconds > 0
            else nullcontext()
        ):
            call_command(
                *step.command,
                database=using,
                stdout=step_stdout or io.StringIO(),
                stderr=step_stdout or io.StringIO(),
            )
    except Exception as exc:  # reported, and the rollout stops there
        step_report.step_error = first_line(exc)
    finally:
        step_report.seconds = time.monotonic() - started
        migrate_log.removeHandler(timeouts)
        connections[using].close()  # each step is its own process in real life
    traffic.wait_for_queries(step_report, MIN_STEP_QUERIES, STEP_TRAFFIC_WAIT_SECONDS)
    step_report.lock_timeouts = timeouts.count
    if rollout.progress:
        step_report.rows_backfilled = rollout.progress(using) - before
    if step.ships_new_code:
        traffic.new_code.set()
