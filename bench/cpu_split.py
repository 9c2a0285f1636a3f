"""Where a task's CPU goes: ``python -m bench.cpu_split [--workers W] [--tasks N] [--analyze]``.

Runs one throughput phase of Shoal (the harness's workload) on a throwaway
Postgres and divides the CPU time the worker processes and the server's
processes used during it by the tasks done. Also prints the commits and the
WAL written per task. Linux only: CPU times are read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/cpu_split.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.harness import Payload, cpu_seconds, fresh_run, proc_stat, wait_done
from bench.shoal_bench import ShoalSystem
from tests.cluster.postgres import PostgresServer


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every process it forked (backends, WAL writer, ...)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc_stat(proc.name)[1]) == postmaster:
                children.append(int(proc.name))
        except FileNotFoundError:
            continue
    return [postmaster, *children]


async def measure(workers: int, tasks: int, analyze: bool) -> None:
    """Enqueue, release the workers, and print the CPU split once all tasks are done.

    With `analyze`, the backlog is analysed before the workers start, as
    autovacuum does on a live queue: the planner then sees its true size.
    """
    system = ShoalSystem()
    with PostgresServer() as server, tempfile.TemporaryDirectory() as workdir:
        async with fresh_run(system, server.dsn, "cpu_split", workers, Path(workdir)) as run:
            pool, records = run
            await system.enqueue_many([Payload(id=i, ts=0.0) for i in range(tasks)])
            conn = await asyncpg.connect(server.dsn_for("cpu_split"))
            try:
                if analyze:
                    await conn.execute("ANALYZE")
                commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = 'cpu_split'"
                commits_before = await conn.fetchval(commits)
                wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
                worker_pids = [p.pid for p in pool.procs]
                worker_cpu = cpu_seconds(worker_pids)
                server_cpu = cpu_seconds(server_pids(server))
                started = time.monotonic()
                await pool.release()
                if not await wait_done(system, records, range(tasks), pool, started + 300):
                    raise SystemExit("the workers did not finish within 300 s")
                elapsed = time.monotonic() - started
                worker_cpu = cpu_seconds(worker_pids) - worker_cpu
                server_cpu = cpu_seconds(server_pids(server)) - server_cpu
                commits_done = await conn.fetchval(commits) - commits_before
                wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)",
                                          wal_before)
            finally:
                await conn.close()
    micro = 1e6 / tasks
    print(f"{workers} workers, {tasks:,} tasks: {tasks / elapsed:,.0f} tasks/s; per task "
          f"{worker_cpu * micro:.1f} us CPU in the workers, {server_cpu * micro:.1f} us in "
          f"Postgres, {float(wal) / tasks:,.0f} B of WAL; {commits_done:,} commits")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE the backlog before the workers start")
    args = parser.parse_args(argv)
    asyncio.run(measure(args.workers, args.tasks, args.analyze))


if __name__ == "__main__":
    main()
