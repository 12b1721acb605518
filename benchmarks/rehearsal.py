"""The rollout rehearsal at full size: `manage.py rehearse` on 200,000 and 1,000,000 tasks.

    python benchmarks/rehearsal.py [--rollout priority workspace] [--tasks 200000 1000000]

Runs `manage.py rehearse --rollout R --tasks N --json` once per rollout and size (each creates
and drops its scratch database on the server of BENCH_SERVER_URL) and writes each rollout's
reports to its section of docs/benchmarks.md.
"""

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, manage, server_url, write_section  # noqa: E402


def rehearse(rollout: str, tasks: int) -> tuple[dict, int]:
    """The JSON report of one rehearsal and the command's exit code."""
    proc = subprocess.run(
        manage("rehearse", f"--rollout={rollout}", f"--tasks={tasks}", "--json"),
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": server_url()},
        capture_output=True,
        text=True,
    )
    sys.stderr.write(proc.stderr)
    if not proc.stdout.strip():
        raise SystemExit(f"rehearse --tasks {tasks} wrote no report (exit {proc.returncode})")
    return json.loads(proc.stdout), proc.returncode


def table(report: dict, exit_code: int) -> list[str]:
    settings, state = report["settings"], report["end_state"] or {}
    lines = [
        f"**{settings['tasks']:,} tasks** — exit code {exit_code}; {settings['server']}; "
        f"{settings['rate_per_second']:g} requests/s target from "
        f"{3 * settings['clients_per_role']} application threads; blocker "
        f"{settings['blocker_seconds']:g} s during expand; stall limit "
        f"{settings['stall_limit_ms']:,} ms.",
        "",
        "| step | seconds | app queries | failed | p50 ms | p99 ms | max ms (slowest kind) | "
        "longest lock wait ms | rows backfilled | migrate lock timeouts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in report["steps"]:
        by_kind = step["slowest_ms_by_kind"]
        slowest = max(by_kind, key=by_kind.get) if by_kind else "-"
        lines.append(
            f"| {step['step']} | {step['seconds']:.1f} | {step['queries']:,} | "
            f"{step['failed_queries']} | {step['p50_ms']:.1f} | {step['p99_ms']:.1f} | "
            f"{step['max_ms']:,.0f} ({slowest}) | {step['longest_lock_wait_ms']:,.0f} | "
            f"{step['rows_backfilled']:,} | {step['migration_lock_timeouts']} |"
        )
    lines += [
        "",
        f"End state: {state.get('null_rows', '?')} NULL values left; NOT NULL "
        f"{'in place' if state.get('not_null') else 'missing'}; default "
        f"`{state.get('column_default') or 'none'}`; indexes "
        f"{'valid' if state.get('indexes_valid') else 'missing or invalid'}; constraints "
        f"{'validated' if state.get('constraints_valid') else 'not validated'}. "
        + ("**OK.**" if report["ok"] else "**FAILED:** " + "; ".join(report["problems"])),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rollout", nargs="+", default=["priority", "workspace"], help="rollouts to rehearse"
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[200_000, 1_000_000])
    args = parser.parse_args()

    sizes = " ".join(str(n) for n in args.tasks)
    for rollout in args.rollout:
        lines = [
            f"## Rehearsal of the {rollout} rollout under traffic (PostgreSQL)",
            "",
            f"Command: `python benchmarks/rehearsal.py --rollout {rollout} --tasks {sizes}` "
            f"({datetime.now(UTC):%Y-%m-%d}, 2 cores), which runs `manage.py rehearse "
            f"--rollout {rollout} --tasks N --json` for each size. Each step runs in-process as "
            "an operator would run it, while old-code writers (until a step retires them), "
            "new-code writers (from expand on) and list-page readers run in threads with their "
            "own connections; `baseline` and `after` are traffic alone, for comparison.",
            "",
        ]
        for tasks in args.tasks:
            report, exit_code = rehearse(rollout, tasks)
            lines += [*table(report, exit_code), ""]
        text = "\n".join(lines)
        write_section("rehearsal" if rollout == "priority" else f"rehearsal-{rollout}", text)
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
