"""A throwaway PostgreSQL server for tests, benchmarks and the demo.

`PostgresServer` runs `initdb` into a temporary folder and starts `postgres`
on a free port. Loopback connections are trusted; it also listens on every
other address of the host, where it asks for the `postgres` role's random
password (SCRAM), so that pods of a kind cluster reach it at the kind network's
gateway (`dsn_for(database, host=...)`). It guarantees that `stop()` leaves no
process and no folder behind, and that `restart()` keeps the data (tests use it
to cut every connection under load). `standby()` makes a streaming replica of a
running server, and `promote()` turns it into the primary (failovers). When the
current user is root, the server runs as the `postgres` system user, because
PostgreSQL refuses root.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ExternalPostgres", "PostgresServer", "create_database", "dsn_for",
           "find_postgres_bin", "free_port"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_postgres_bin() -> Path:
    """Return the folder holding `initdb` and `pg_ctl` (newest installed major)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    if not on_path:
        raise RuntimeError("PostgreSQL server binaries not found: install postgresql")
    return Path(on_path).parent


class PostgresServer:
    """A private PostgreSQL cluster on a free port; a context manager."""

    def __init__(self, *, bin_dir: Path | None = None, max_connections: int = 300,
                 settings: dict[str, str] | None = None) -> None:
        """`settings`: more server settings (`-c name=value`), such as
        `{"shared_preload_libraries": "pg_stat_statements"}` for a benchmark."""
        self.bin = bin_dir or find_postgres_bin()
        self.port = free_port()
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        for name, value in self.settings.items():
            if not name.replace("_", "").replace(".", "").isalnum() or " " in value:
                raise ValueError(f"unsafe server setting {name}={value!r}")
        self.root = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
        self.data = self.root / "data"
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.password = secrets.token_hex(16)

    @property
    def dsn(self) -> str:
        """DSN of the `postgres` database as the `postgres` superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str, host: str = "127.0.0.1") -> str:
        """DSN of `database` as the superuser; with the password off loopback."""
        if host == "127.0.0.1":
            return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        return f"postgresql://postgres:{self.password}@{host}:{self.port}/{database}"

    def _run(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in argv]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True)

    def start(self) -> PostgresServer:
        """Create the cluster on first call, then start it and wait until it accepts connections."""
        if self.run_as:
            shutil.chown(self.root, user=self.run_as)
        if not self.data.exists():
            password_file = self.root / "password"
            password_file.write_text(self.password + "\n")
            if self.run_as:
                shutil.chown(password_file, user=self.run_as)
            self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres",
                      "--auth-local=trust", "--auth-host=scram-sha-256",
                      f"--pwfile={password_file}", "--no-sync", "-E", "UTF8")
            password_file.unlink()
            hba = self.data / "pg_hba.conf"
            hba.write_text("local all all trust\n"
                           "host all all 127.0.0.1/32 trust\n"
                           "host replication all 127.0.0.1/32 trust\n"
                           "host all all 0.0.0.0/0 scram-sha-256\n")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=* "
                   f"-c max_connections={self.max_connections} -c fsync=on "
                   "-c shared_buffers=256MB")
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options,
                  "-l", self.root / "server.log", "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate); the data is kept."""
        if (self.data / "postmaster.pid").exists():
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        """Stop (by default as a crash would) and start again on the same port."""
        self.stop(mode)
        self.start()

    def standby(self) -> PostgresServer:
        """A streaming standby of this (running) server on a port of its own, not
        started: `pg_basebackup -R` copies the data and configures the replication."""
        replica = PostgresServer(bin_dir=self.bin, max_connections=self.max_connections,
                                 settings=self.settings)
        replica.password = self.password  # the role's, copied with the data
        if replica.run_as:
            shutil.chown(replica.root, user=replica.run_as)
        replica._run(self.bin / "pg_basebackup", "-D", replica.data, "-R", "-X", "stream",
                     "--checkpoint=fast", "-h", "127.0.0.1", "-p", str(self.port),
                     "-U", "postgres")
        return replica

    def promote(self) -> None:
        """Make this standby a primary, and wait until it accepts writes."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    def create_database(self, name: str) -> str:
        """Create a database and return its DSN."""
        return create_database(self.dsn, name)

    def destroy(self) -> None:
        """Stop the server and remove every file it had."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def create_database(admin_dsn: str, name: str) -> str:
    """Create database `name` on the server of `admin_dsn` (with psql); return its DSN."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    psql = find_postgres_bin() / "psql"
    subprocess.run([str(psql), admin_dsn, "-v", "ON_ERROR_STOP=1", "-qc",
                    f'CREATE DATABASE "{name}"'], check=True, capture_output=True, text=True)
    return dsn_for(admin_dsn, name)


def dsn_for(admin_dsn: str, database: str) -> str:
    """`admin_dsn` with its database name replaced."""
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{database}"


class ExternalPostgres:
    """A server someone else runs (`SHOAL_TEST_DSN`); it cannot be restarted from here."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def create_database(self, name: str) -> str:
        return create_database(self.dsn, name)

    def restart(self, mode: str = "immediate") -> None:
        raise RuntimeError("cannot restart an external PostgreSQL (SHOAL_TEST_DSN)")
