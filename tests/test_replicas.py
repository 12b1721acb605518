"""The backfill and a real streaming replica: it backs off while the standby lags and resumes
when it catches up, stops with its checkpoint after backing off too long, leaves out standbys
named in BACKFILL_IGNORE_STANDBYS, and refuses to start when its role cannot read the lag.

The primary and standby are scratch servers of their own (tests/replica_cluster.py). The
backfill runs as ``manage.py`` processes with DATABASE_URL pointing at the scratch primary, on a
database migrated to the workspace rollout's expand step and seeded there. Without initdb the
module is skipped with the reason; under CI=true that fails the run.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import unavailable_here, wait_until, workspace_expand_step
from tests.replica_cluster import STANDBY_NAME, ClusterUnavailable, ReplicaCluster, replica_cluster

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "taskproj"
ROWS = 300
APP_ROLE = "app"  # an application role without pg_read_all_stats
LAG_LIMIT = 1  # seconds: BACKFILL_MAX_REPLICATION_LAG_SECONDS for these runs
pytestmark = pytest.mark.postgres


def manage(cluster: ReplicaCluster, *args: str, user: str = "postgres", **env: str) -> list:
    """The command line and environment of ``manage.py args`` on the scratch primary."""
    return [sys.executable, "manage.py", *args], {
        **os.environ,
        "DATABASE_URL": cluster.url(DATABASE, user),
        "BACKFILL_MAX_REPLICATION_LAG_SECONDS": str(LAG_LIMIT),
        "BACKFILL_BACKOFF_SECONDS": "0.2",
        **env,
    }


def run_manage(cluster: ReplicaCluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    command, environment = manage(cluster, *args, **env)
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def backfill(cluster: ReplicaCluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``manage.py backfill tasks.task.workspace`` in batches of 50, to its end."""
    return run_manage(
        cluster, "backfill", "tasks.task.workspace", "--batch-size", "50", *args, **env
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReplicaCluster]:
    """The scratch primary and standby, with the tasks table at the workspace expand step."""
    try:
        with replica_cluster() as running:
            with running.primary() as primary:
                primary.execute(f"CREATE DATABASE {DATABASE}")
            for args in workspace_expand_step(ROWS):
                done = run_manage(running, *args)
                assert done.returncode == 0, done.stderr
            with running.primary(DATABASE) as primary:
                primary.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
                primary.execute(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                    f"TO {APP_ROLE}"
                )
                primary.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
            yield running
    except ClusterUnavailable as exc:
        unavailable_here(str(exc), "the replica tests")


@pytest.fixture
def replica(cluster: ReplicaCluster) -> Iterator[ReplicaCluster]:
    """Every row pending again, no run, and the standby replaying, caught up, after the test."""
    with cluster.primary(DATABASE) as primary:
        primary.execute("UPDATE tasks_task SET workspace_id = NULL")
        primary.execute("TRUNCATE backfills_backfillrun CASCADE")
    cluster.wait_caught_up()
    yield cluster
    cluster.resume_replay()
    cluster.delay_standby("0")
    cluster.wait_caught_up()


def fall_behind(cluster: ReplicaCluster) -> None:
    """Write on the primary while the standby does not replay, until it lags over the limit."""
    with cluster.primary(DATABASE) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS lag_probe (at timestamptz)")
        primary.execute("INSERT INTO lag_probe VALUES (now())")
    wait_until(
        lambda: (cluster.lag_seconds() or 0) > LAG_LIMIT + 0.5,
        timeout=30,
        what="the standby to lag",
    )


def one_value(cluster: ReplicaCluster, sql: str):
    with cluster.primary(DATABASE) as primary:
        row = primary.execute(sql).fetchone()
    return row[0] if row else None


def pending(cluster: ReplicaCluster) -> int:
    return one_value(cluster, "SELECT count(*) FROM tasks_task WHERE workspace_id IS NULL")


def run_state(cluster: ReplicaCluster) -> tuple | None:
    with cluster.primary(DATABASE) as primary:
        return primary.execute(
            "SELECT status, rows_done, throttle_reason, lease_owner FROM backfills_backfillrun"
        ).fetchone()


def throttle_events(cluster: ReplicaCluster) -> list[str]:
    with cluster.primary(DATABASE) as primary:
        rows = primary.execute(
            "SELECT message FROM backfills_backfillrunevent WHERE kind = 'throttled' ORDER BY id"
        ).fetchall()
    return [message for (message,) in rows]


def test_the_backfill_waits_while_the_standby_lags_and_resumes_when_it_catches_up(replica):
    # given: a standby that has stopped replaying and is behind by more than the limit
    replica.pause_replay()
    fall_behind(replica)

    # when: a backfill starts, allowed to wait as long as it takes
    command, env = manage(
        replica, "backfill", "tasks.task.workspace", "--batch-size", "50", "--max-throttle", "0"
    )
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: "replication lag" in ((run_state(replica) or ("", 0, ""))[2]),
            timeout=30,
            what="the run to back off",
        )
        # then: it writes nothing while the standby lags
        status, rows_done, reason, _ = run_state(replica)
        assert status == "running" and rows_done == 0 and pending(replica) == ROWS
        assert f"of standby {STANDBY_NAME!r} is over {LAG_LIMIT} s" in reason

        # when: the standby replays again
        replica.resume_replay()
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()

    # then: the run carries on and finishes, every row done once
    assert process.returncode == 0, output
    status, rows_done, _, _ = run_state(replica)
    assert (status, rows_done, pending(replica)) == ("succeeded", ROWS, 0)
    assert any(STANDBY_NAME in message for message in throttle_events(replica))


def test_a_run_backing_off_longer_than_max_throttle_stops_with_its_checkpoint(replica):
    # given: a standby that does not replay
    replica.pause_replay()
    fall_behind(replica)

    # when: the backfill may back off for one second at most
    stopped = backfill(replica, "--max-throttle", "1")

    # then: exit 1 saying why and how to resume; the run is open, nothing written, no lease held
    assert stopped.returncode == 1
    assert "stopped after backing off for 1 s without a batch: replication lag" in stopped.stderr
    assert "Run the command again to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert run_state(replica)[0:2] == ("running", 0) and run_state(replica)[3] == ""
    assert pending(replica) == ROWS

    # when: the standby has caught up and the command runs again
    replica.resume_replay()
    replica.wait_caught_up()
    resumed = backfill(replica)

    # then: the same run resumes and finishes
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming run" in resumed.stdout
    assert run_state(replica)[0:2] == ("succeeded", ROWS) and pending(replica) == 0


def test_a_delayed_standby_named_in_ignore_standbys_is_not_waited_for(replica):
    # given: a delayed standby (recovery_min_apply_delay), behind by more than the limit
    replica.delay_standby("1h")
    fall_behind(replica)
    waited = backfill(replica, "--max-throttle", "1")
    assert waited.returncode == 1 and "replication lag" in waited.stderr

    # when: it is named in BACKFILL_IGNORE_STANDBYS
    done = backfill(
        replica, "--max-throttle", "5", BACKFILL_IGNORE_STANDBYS=f"other, {STANDBY_NAME}"
    )

    # then: the backfill does not wait for it
    assert done.returncode == 0, done.stderr
    assert run_state(replica)[0:2] == ("succeeded", ROWS) and pending(replica) == 0


@pytest.mark.parametrize("how", [[], ["--background"]], ids=["here", "on workers"])
def test_a_role_that_cannot_read_the_lag_is_refused_and_told_what_to_do(replica, how):
    # when: the application's role, without pg_read_all_stats, starts a backfill
    refused = backfill(replica, *how, user=APP_ROLE)

    # then: exit 1, saying what to grant or set; nothing written
    assert refused.returncode == 1
    assert f"standby {STANDBY_NAME!r} streams from this server, but role 'app'" in refused.stderr
    assert f'GRANT pg_read_all_stats TO "{APP_ROLE}"' in refused.stderr
    assert "BACKFILL_IGNORE_STANDBYS" in refused.stderr
    assert "BACKFILL_ALLOW_UNMEASURED_LAG" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run_state(replica) is None and pending(replica) == ROWS


def test_with_pg_read_all_stats_the_role_measures_the_lag(replica):
    # given: the role is granted pg_read_all_stats; the standby lags
    with replica.primary(DATABASE) as primary:
        primary.execute(f"GRANT pg_read_all_stats TO {APP_ROLE}")
    try:
        replica.pause_replay()
        fall_behind(replica)

        # when
        waited = backfill(replica, "--max-throttle", "1", user=APP_ROLE)
    finally:
        with replica.primary(DATABASE) as primary:
            primary.execute(f"REVOKE pg_read_all_stats FROM {APP_ROLE}")

    # then: it starts, sees the lag and waits for it
    assert waited.returncode == 1
    assert "replication lag" in waited.stderr and run_state(replica)[1] == 0


def test_allow_unmeasured_lag_runs_without_the_lag_and_says_so(replica):
    # when: the application's role runs, told to go on without measuring the standby
    done = backfill(replica, user=APP_ROLE, BACKFILL_ALLOW_UNMEASURED_LAG="true")

    # then: it fills every row, having warned that the standby's lag is not measured
    assert done.returncode == 0, done.stderr
    assert f"Replication lag of standby {STANDBY_NAME!r} is not measured" in done.stderr
    assert run_state(replica)[0:2] == ("succeeded", ROWS) and pending(replica) == 0
