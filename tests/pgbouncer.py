"""A PgBouncer of its own in transaction mode, in front of the test server, for
tests/test_pgbouncer.py.

It listens on 127.0.0.1 on a free port, under a temporary directory, with a pool of
:data:`POOL_SIZE` server connections per database and user, so that the server connections are
really shared between the clients (the commands under test and the traffic around them). As root
it runs as the ``postgres`` OS user (PgBouncer refuses root). The server and its configuration
are not touched: the pooler connects to it as the client would, with the same user.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.replica_cluster import free_port

POOL_SIZE = 3  # server connections per database and user
BINARY = "/usr/sbin/pgbouncer"  # Debian's package
SETTINGS = """
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
auth_type = trust
auth_file = {root}/users.txt
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
"""


class PoolerUnavailable(Exception):
    """PgBouncer is not installed here."""


@dataclass
class Pooler:
    """A running PgBouncer: URLs and connections through it, and to the server directly."""

    port: int
    server_host: str
    server_port: int
    user: str

    def url(self, dbname: str) -> str:
        """A DATABASE_URL through the pooler."""
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str, **kwargs) -> psycopg.Connection:
        """A client connection through the pooler (no prepared statements, as PgBouncer 1.18
        cannot route them)."""
        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname=dbname, user=self.user,
            prepare_threshold=None, **kwargs,
        )  # fmt: skip

    def server(self, dbname: str = "postgres") -> psycopg.Connection:
        """A connection to the server itself, past the pooler."""
        return psycopg.connect(
            host=self.server_host, port=self.server_port, dbname=dbname, user=self.user,
            autocommit=True,
        )  # fmt: skip

    def pooled_settings(self, dbname: str, names: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The value of each setting in ``names`` on every pooled server connection of
        ``dbname``: :data:`POOL_SIZE` clients each hold a transaction at once, so each is on a
        server connection of its own, and together they see the whole pool."""
        clients = [self.connect(dbname) for _ in range(POOL_SIZE)]
        try:
            seen = []
            for client in clients:
                client.execute("SELECT 1")  # starts the transaction, pinning a server connection
                seen.append(tuple(client.execute(f"SHOW {name}").fetchone()[0] for name in names))
            return seen
        finally:
            for client in clients:
                client.close()

    def advisory_locks(self, dbname: str) -> list[tuple]:
        """The advisory locks held or awaited on ``dbname``, by any backend (seen directly)."""
        with self.server() as server:
            return server.execute(
                "SELECT l.pid, l.objid, l.granted, a.state, a.query FROM pg_locks l "
                "JOIN pg_database d ON d.oid = l.database "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND d.datname = %s",
                [dbname],
            ).fetchall()


@contextlib.contextmanager
def pgbouncer(*, server_host: str, server_port: int, user: str) -> Iterator[Pooler]:
    """Start PgBouncer in front of the server; stop it and remove its directory on exit,
    however the block ends. Raises :class:`PoolerUnavailable` without the binary."""
    binary = shutil.which("pgbouncer") or (BINARY if Path(BINARY).is_file() else None)
    if binary is None:
        raise PoolerUnavailable(
            "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
        )
    root = Path(tempfile.mkdtemp(prefix="taskproj-pgbouncer-"))
    root.chmod(0o755)
    pooler = Pooler(port=free_port(), server_host=server_host, server_port=server_port, user=user)
    (root / "users.txt").write_text(f'"{user}" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(
        SETTINGS.format(
            host=server_host,
            port=server_port,
            listen_port=pooler.port,
            pool_size=POOL_SIZE,
            root=root,
        )  # fmt: skip
    )
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    # Started as the postgres user directly, not through runuser: stopped, runuser forwards the
    # signal, then sleeps 2 s before it exits (util-linux su-common.c), on every pooler.
    as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
    process = subprocess.Popen(
        [binary, str(ini)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **(as_postgres if os.geteuid() == 0 else {}),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with pooler.connect("postgres", connect_timeout=2) as probe:
                    probe.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = root / "pgbouncer.log"
                    raise RuntimeError(
                        "pgbouncer did not start:\n"
                        + (log.read_text() if log.exists() else process.stdout.read())
                    ) from None
                time.sleep(0.1)
        yield pooler
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
