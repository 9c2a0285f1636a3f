"""A throwaway PgBouncer (Debian's `pgbouncer`) in front of the test's Postgres.

`PgBouncer` writes a config into a temporary folder and starts `pgbouncer` on a
free port, in transaction mode by default, with `pool_size` server connections
per database and user. Every database of the server is reachable through it (a
`*` entry); clients are trusted, and the bouncer logs in to the server with the
DSN's user (and password). It guarantees that `stop()` leaves no process and no
folder behind. When the current user is root it switches to the `postgres`
system user itself (its `user` setting: PgBouncer refuses to run as root).
`admin()` runs a statement of its admin console (`SHOW POOLS` ...) with psql.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.cluster.postgres import find_postgres_bin, free_port

BINARY_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    """The pgbouncer binary, or None when the package is not installed."""
    return shutil.which("pgbouncer") or next(
        (p for p in BINARY_PATHS if os.access(p, os.X_OK)), None)


class PgBouncer:
    """A private PgBouncer on a free port in front of the server of `server_dsn`."""

    def __init__(self, server_dsn: str, *, pool_mode: str = "transaction", pool_size: int = 2,
                 ignore_startup_parameters: tuple[str, ...] = ()) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer not found: apt-get install pgbouncer")
        self.binary = binary
        server = urlsplit(server_dsn)
        self.server_host = server.hostname or "127.0.0.1"
        self.server_port = server.port or 5432
        self.user = server.username or "postgres"
        self.password = server.password or ""  # what the bouncer logs in to the server with
        self.port = free_port()
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.ignore_startup_parameters = ignore_startup_parameters
        self.root = Path(tempfile.mkdtemp(prefix="shoal-pgbouncer-"))
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn_for(self, database: str, query: str = "") -> str:
        """A DSN of `database` through the bouncer (`query`: the part after `?`)."""
        return (f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"
                + (f"?{query}" if query else ""))

    def start(self) -> PgBouncer:
        """Start it and wait until it accepts connections."""
        (self.root / "userlist.txt").write_text(f'"{self.user}" "{self.password}"\n')
        ignored = ",".join(self.ignore_startup_parameters)
        (self.root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={self.server_host} port={self.server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.root}/userlist.txt
admin_users = {self.user}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
ignore_startup_parameters = {ignored}
logfile = {self.root}/pgbouncer.log
pidfile = {self.root}/pgbouncer.pid
""" + (f"user = {self.run_as}\n" if self.run_as else ""))
        if self.run_as:
            shutil.chown(self.root, user=self.run_as)
            for path in self.root.iterdir():
                shutil.chown(path, user=self.run_as)
        command = [self.binary, "-q", str(self.root / "pgbouncer.ini")]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while self.admin("SHOW VERSION", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pgbouncer did not start: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def admin(self, statement: str, *, check: bool = True, tuples_only: bool = True
              ) -> subprocess.CompletedProcess[str]:
        """Run `statement` on the admin console; unaligned rows, `|`-separated (a header
        first unless `tuples_only`)."""
        psql = find_postgres_bin() / "psql"
        return subprocess.run(
            [str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-XA",
             *(["-t"] if tuples_only else []), "-F", "|", "-c", statement, "pgbouncer"],
            capture_output=True, text=True, check=check, timeout=10)

    def pool(self, database: str) -> dict[str, str]:
        """`SHOW POOLS`' row of `database` (cl_active, cl_waiting, sv_active ...; empty
        before any client came)."""
        header, *rows = self.admin("SHOW POOLS", tuples_only=False).stdout.splitlines()
        for row in rows:
            fields = dict(zip(header.split("|"), row.split("|"), strict=False))
            if fields.get("database") == database:
                return fields
        return {}

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the process and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
