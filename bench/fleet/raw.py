"""The raw ceiling: a plain claim-and-delete queue driven by pgbench on the same server.

The issue's anchor: ``FOR UPDATE SKIP LOCKED`` on a one-table queue, 100 rows per
transaction, deleted in the same statement, durable commits, pgbench clients on
the same machine. Tasks per second is rows deleted over the run's length
(counted in the table, not taken from pgbench's transaction rate, so a table
that ran dry cannot inflate it). CPU per task is the server's and pgbench's own
(`os.wait4` of the pgbench process).
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.fleet.server import server_cpu
from bench.harness import drop_database, recreate_database

# A backend that ended is counted once the postmaster has reaped it (its CPU then
# moves to the postmaster's cutime); until then /proc shows it as a zombie with none.
REAPED = 0.5  # seconds

CLAIM_AND_DELETE = """\
WITH c AS (SELECT id FROM q ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
DELETE FROM q USING c WHERE q.id = c.id;
"""


@dataclass
class Ceiling:
    clients: int
    seconds: float
    tasks: int
    server_us: float  # server CPU per task
    client_us: float  # pgbench CPU per task
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.tasks / self.seconds


def pgbench_path(postgres_bin: Path) -> Path | None:
    path = postgres_bin / "pgbench"
    return path if path.exists() else None


async def measure(pgbench: Path, admin_dsn: str, postmaster: int, *, clients: int,
                  seconds: float, rows: int) -> Ceiling:
    """Fill a queue table with `rows` rows, then run `clients` pgbench clients for
    `seconds` claiming and deleting 100 rows per transaction."""
    dsn = await recreate_database(admin_dsn, "fleet_raw")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE q (id bigint GENERATED ALWAYS AS IDENTITY "
                           "PRIMARY KEY, payload jsonb NOT NULL)")
        await conn.execute("INSERT INTO q (payload) SELECT jsonb_build_object('id', i, 'ts', 0) "
                           "FROM generate_series(1, $1::bigint) i", rows)
        await conn.execute("VACUUM ANALYZE q")
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "claim.sql"
            script.write_text(CLAIM_AND_DELETE)
            cpu = sum(server_cpu(postmaster))
            output, usage = await asyncio.to_thread(
                _run, [str(pgbench), "-n", "-M", "prepared", "-c", str(clients),
                       "-j", str(min(clients, os.cpu_count() or 1)), "-T", f"{seconds:g}",
                       "-f", str(script), dsn], Path(tmp) / "out.txt")
            await asyncio.sleep(REAPED)
            cpu = sum(server_cpu(postmaster)) - cpu
        left = await conn.fetchval("SELECT count(*) FROM q")
    finally:
        await conn.close()
    await drop_database(admin_dsn, "fleet_raw")
    done = rows - left
    note = "the table ran dry: give it more rows" if left == 0 else ""
    # Over pgbench's -T, which counts from its clients' start (their connections excluded).
    return Ceiling(clients, seconds, done, 1e6 * cpu / max(done, 1),
                   1e6 * (usage.ru_utime + usage.ru_stime) / max(done, 1),
                   note or _summary(output))


def _run(argv: list[str], out: Path) -> tuple[str, resource.struct_rusage]:
    with out.open("w") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text()
    if proc.returncode:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {text[-2000:]}")
    return text, usage


def _summary(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("tps"):
            return "pgbench " + line.split("(")[0].strip()
    return ""
