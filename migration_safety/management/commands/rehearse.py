"""manage.py rehearse: one rollout on a scratch PostgreSQL database, under traffic."""

import json
import os
import secrets

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, connections

from commandline.base import CheckedCommand
from commandline.databases import connected
from migration_safety.rehearsal import RehearsalReport, StepReport, rehearse
from migration_safety.rollouts import Step, UnknownRollout, get_rollout, rollouts

COLUMNS = (
    ("step", "step", "<16"),
    ("seconds", "seconds", ">8"),
    ("queries", "queries", ">8"),
    ("failed", "failed_queries", ">7"),
    ("p50 ms", "p50_ms", ">8"),
    ("p99 ms", "p99_ms", ">8"),
    ("max ms", "max_ms", ">8"),
    ("lock wait ms", "longest_lock_wait_ms", ">13"),
    ("backfilled", "rows_backfilled", ">11"),
    ("lock timeouts", "migration_lock_timeouts", ">13"),
)


class Command(CheckedCommand):
    help = (
        "Rehearse a rollout (--rollout: its expand, backfill, data migration, contract and index "
        "steps) on a scratch PostgreSQL database created on the server of --database and dropped "
        "afterwards, while threads play old-code writers, new-code writers and readers. Reports "
        "per step the application queries, failures, latency and lock waits; exits non-zero if "
        "any application query failed or waited on a lock longer than the migration "
        "lock_timeout + 1 s."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        plans = rollouts()
        parser.add_argument(
            "--rollout",
            default=plans[0].name if plans else None,
            help="Which rollout to rehearse: "
            + ", ".join(f"{plan.name} ({plan.description})" for plan in plans)
            + " (default: the first registered).",
        )
        parser.add_argument(
            "--tasks", default="200000", help="Legacy rows to seed (default: 200,000)."
        )
        parser.add_argument(
            "--rate",
            default="200",
            help="Application requests per second, all threads together (default: 200).",
        )
        parser.add_argument(
            "--clients",
            default="2",
            help="Threads per role: old-code writers, new-code writers, readers (default: 2).",
        )
        parser.add_argument(
            "--blocker-seconds",
            default=None,
            help="How long a transaction holds a lock on the rollout's table as its expand step "
            "starts; "
            "0 for none (default: 2.5 x MIGRATION_LOCK_TIMEOUT_MS).",
        )
        parser.add_argument(
            "--baseline-seconds",
            default="2",
            help="Seconds of traffic alone before the first step and after the last, for "
            "comparison (default: 2).",
        )
        parser.add_argument("--seed", default="1", help="Random seed (default: 1).")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Write the report as JSON to stdout (progress lines go to stderr).",
        )
        self.add_database_argument(parser)

    def handle(self, *args, **options) -> None:
        using = self.database_alias(options["database"])
        try:
            rollout = get_rollout(options["rollout"])
        except UnknownRollout as exc:
            raise CommandError(f"--rollout: {exc}.") from exc
        tasks = self.int_option("tasks", options["tasks"], minimum=1, maximum=50_000_000)
        rate = self.float_option("rate", options["rate"], minimum=1)
        clients = self.int_option("clients", options["clients"], minimum=1, maximum=32)
        lock_timeout_ms = settings.MIGRATION_LOCK_TIMEOUT_MS
        blocker_seconds = options["blocker_seconds"]
        blocker_seconds = self.float_option(
            "blocker_seconds",
            2.5 * lock_timeout_ms / 1000 if blocker_seconds is None else blocker_seconds,
            minimum=0,
        )
        baseline_seconds = self.float_option(
            "baseline_seconds", options["baseline_seconds"], minimum=0
        )
        seed = self.int_option("seed", options["seed"], minimum=0)
        if connections[using].vendor != "postgresql":
            raise CommandError(
                f"rehearse needs PostgreSQL: database {using!r} is "
                f"{connections[using].display_name}. Point DATABASE_URL (or --database) at a "
                "PostgreSQL server; the rehearsal creates and drops its own scratch database there."
            )
        connected(using)
        progress = self.stderr if options["json"] else self.stdout
        verbosity = options["verbosity"]
        total = len(rollout.steps) + 1

        def on_step_start(number: int, step: Step) -> None:
            if verbosity >= 1:
                command = f" (manage.py {' '.join(step.command)})" if step.command else ""
                progress.write(f"[{number}/{total}] {step.name}{command} …")

        def on_step_end(number: int, step: StepReport) -> None:
            if verbosity >= 1:
                progress.write(f"[{number}/{total}] {self.summary(step)}")

        if verbosity >= 1:
            progress.write(
                f"Rehearsal of the {rollout.name} rollout on a scratch database: {tasks:,} "
                f"legacy rows, {rate:g} requests/s "
                f"from {3 * clients} application threads, migration lock_timeout "
                f"{lock_timeout_ms:,} ms, a blocker for {blocker_seconds:g} s during expand. "
                "Setting up …"
            )
        try:
            report = rehearse(
                rollout,
                using=using,
                # Unique per run: two rehearsals on one server never share (or drop) one.
                scratch_name=f"rehearsal_{os.getpid()}_{secrets.token_hex(4)}",
                tasks=tasks,
                rate=rate,
                clients=clients,
                blocker_seconds=blocker_seconds,
                baseline_seconds=baseline_seconds,
                lock_timeout_ms=lock_timeout_ms,
                seed=seed,
                on_step_start=on_step_start,
                on_step_end=on_step_end,
                step_stdout=self.stdout if verbosity >= 2 and not options["json"] else None,
            )
        except DatabaseError as exc:
            raise CommandError(
                f"Could not run the rehearsal on the server of {using!r}: {exc}. The role needs "
                "CREATEDB (the rehearsal creates and drops a scratch database)."
            ) from exc

        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        elif verbosity >= 1:
            self.write_report(report, rollout)
        problems = report.problems()
        if problems:
            raise CommandError("The rehearsal failed:\n  - " + "\n  - ".join(problems))

    def summary(self, step: StepReport) -> str:
        """One line per finished step."""
        data = step.as_dict()
        line = (
            f"{step.name}: {data['seconds']:.1f} s, {data['queries']:,} queries, "
            f"{data['failed_queries']:,} failed, p99 {data['p99_ms']:,.0f} ms, "
            f"max {data['max_ms']:,.0f} ms, "
            f"longest lock wait {data['longest_lock_wait_ms']:,.0f} ms"
        )
        if step.rows_backfilled:
            line += f", {step.rows_backfilled:,} rows backfilled"
        if step.lock_timeouts:
            line += f", migration lock timed out {step.lock_timeouts}x"
        if step.step_error:
            line += f" — STEP FAILED: {step.step_error}"
        return line

    def write_report(self, report: RehearsalReport, rollout) -> None:
        """The per-step table, the errors, the end state and the verdict."""
        data = report.as_dict()
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(f"Report ({data['settings']['server']})"))
        self.stdout.write("  ".join(f"{title:{align}}" for title, _, align in COLUMNS))
        for step in data["steps"]:
            cells = []
            for _, key, align in COLUMNS:
                value = step[key]
                if isinstance(value, int | float) and not isinstance(value, bool):
                    value = f"{value:,.1f}" if key == "seconds" else f"{value:,.0f}"
                cells.append(f"{value:{align}}")
            self.stdout.write("  ".join(cells))
        for step in data["steps"]:
            for error in step["errors"]:
                self.stdout.write(
                    self.style.ERROR(f"  {step['step']}: {error['count']:,} x {error['error']}")
                )
        state = data["end_state"]
        if state is not None:
            self.stdout.write(
                f"End state: {state['null_rows']:,} NULL {rollout.column} left; "
                f"NOT NULL {'in place' if state['not_null'] else 'MISSING'}; "
                f"default {state['column_default'] or 'none'}; indexes "
                f"{'valid' if state['indexes_valid'] else 'MISSING OR INVALID'}; constraints "
                f"{'validated' if state['constraints_valid'] else 'NOT VALIDATED'}."
            )
        if data["ok"]:
            self.stdout.write(
                self.style.SUCCESS(
                    "OK: no application query failed, none waited on a lock longer than "
                    f"{data['settings']['stall_limit_ms']:,} ms (lock_timeout + 1 s)."
                )
            )
