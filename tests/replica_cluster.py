"""A scratch PostgreSQL primary with one streaming standby, for tests/test_replicas.py.

Both servers are made with the installed PostgreSQL binaries (initdb, then ``pg_basebackup -R``)
under a temporary directory, listen on 127.0.0.1 on free ports of their own and are stopped and
removed afterwards: the main server and its configuration are not touched. As root they run as
the ``postgres`` OS user (initdb refuses root). The standby reports to the primary every second
(``wal_receiver_status_interval``), so the lag the primary shows is at most a second old.
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

STANDBY_NAME = "reporting"  # its application_name, as BACKFILL_IGNORE_STANDBYS names it
PRIMARY_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 4
max_connections = 30
shared_buffers = 16MB
fsync = off
"""
STANDBY_SETTINGS = """
port = {port}
wal_receiver_status_interval = 1s
"""


class ClusterUnavailable(Exception):
    """The PostgreSQL server binaries (initdb) cannot be found or run here."""


def server_binaries() -> Path:
    """The directory of initdb, pg_ctl and pg_basebackup: PG_BINDIR, else pg_config's, else
    the newest Debian/Ubuntu install (/usr/lib/postgresql/N/bin)."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(found.stdout.strip())
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[-2])
    )[::-1]
    for directory in candidates:
        if directory and (Path(directory) / "initdb").is_file():
            return Path(directory)
    raise ClusterUnavailable(
        "initdb is not installed (looked in PG_BINDIR, pg_config --bindir and "
        "/usr/lib/postgresql/*/bin): install the PostgreSQL server package"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ReplicaCluster:
    """A running primary and standby: connections to each, and the standby's replay."""

    root: Path
    primary_port: int
    standby_port: int

    def url(self, dbname: str, user: str = "postgres") -> str:
        """A DATABASE_URL of the primary."""
        return f"postgres://{user}@127.0.0.1:{self.primary_port}/{dbname}"

    def primary(self, dbname: str = "postgres", user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.primary_port, dbname=dbname, user=user, autocommit=True
        )

    def standby(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.standby_port, dbname="postgres", user="postgres",
            autocommit=True,
        )  # fmt: skip

    def pause_replay(self) -> None:
        """Stop applying WAL on the standby: it keeps receiving, and falls behind."""
        with self.standby() as standby:
            standby.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with self.standby() as standby:
            standby.execute("SELECT pg_wal_replay_resume()")

    def delay_standby(self, delay: str) -> None:
        """Make it a delayed standby (``recovery_min_apply_delay``; "0" ends the delay)."""
        with self.standby() as standby:
            standby.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
            standby.execute("SELECT pg_reload_conf()")

    def lag_seconds(self) -> float | None:
        """The standby's replay lag as the primary's superuser sees it (None when caught up)."""
        with self.primary() as primary:
            row = primary.execute(
                "SELECT EXTRACT(EPOCH FROM replay_lag)::float FROM pg_stat_replication"
            ).fetchone()
        return row[0] if row else None

    def wait_caught_up(self, timeout: float = 60) -> None:
        """Until the standby has replayed everything the primary has written."""
        deadline = time.monotonic() + timeout
        with self.primary() as primary:
            while time.monotonic() < deadline:
                row = primary.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
                    "FROM pg_stat_replication WHERE state = 'streaming'"
                ).fetchone()
                if row and row[0] == 0:
                    return
                time.sleep(0.2)
        raise TimeoutError(f"the standby did not catch up in {timeout:g} s")


def as_postgres(*command: str | Path) -> list[str]:
    """``command`` run as the postgres OS user when we are root (initdb refuses root)."""
    command = [str(part) for part in command]
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run(*command: str | Path) -> None:
    """Run a server command, failing with its output."""
    done = subprocess.run(as_postgres(*command), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}")


@contextlib.contextmanager
def replica_cluster() -> Iterator[ReplicaCluster]:
    """Start a primary and a standby streaming from it; stop both and remove them on exit,
    however the block ends. Raises :class:`ClusterUnavailable` without initdb."""
    binaries = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="taskproj-replicas-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    root.chmod(0o700)
    primary, standby = root / "primary", root / "standby"
    started: list[Path] = []
    try:
        cluster = ReplicaCluster(root=root, primary_port=free_port(), standby_port=free_port())
        run(binaries / "initdb", "-D", primary, "-U", "postgres", "-A", "trust", "--no-sync")
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(PRIMARY_SETTINGS.format(port=cluster.primary_port, sockets=root))
        with (primary / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        run(binaries / "pg_ctl", "-D", primary, "-l", root / "primary.log", "-w", "start")
        started.append(primary)
        run(
            binaries / "pg_basebackup",
            "-h", "127.0.0.1", "-p", cluster.primary_port, "-U", "postgres",
            "-D", standby, "-R", "-X", "stream", "--no-sync",
            "-d", f"application_name={STANDBY_NAME}",
        )  # fmt: skip
        with (standby / "postgresql.conf").open("a") as conf:
            conf.write(STANDBY_SETTINGS.format(port=cluster.standby_port))
        run(binaries / "pg_ctl", "-D", standby, "-l", root / "standby.log", "-w", "start")
        started.append(standby)
        cluster.wait_caught_up()
        yield cluster
    finally:
        for data in reversed(started):
            subprocess.run(
                as_postgres(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"),
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
