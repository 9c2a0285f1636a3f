"""Does maintenance keep up? ``python -m bench.maintenance [--quick] [--rate N] [--minutes M]``.

Sustained load for several minutes: a producer enqueues no-op tasks to
`shoal worker` processes as fast as they run them — at most `--rate` a second,
and only while fewer than `--backlog` tasks are ready — so the run goes at the
peak rate this machine sustains with the producer sharing its cores. Finished
tasks are kept for `--retention` seconds. Every `--every` seconds it prints
the rate, the tasks table's rows, its bytes (table, indexes and TOAST), dead
tuples, ready and finished rows, and which worker leads maintenance. Halfway
through it kills the leader with SIGKILL (and starts a replacement, as
Kubernetes would) and prints how long until another worker leads. At the end
it compares the second half's samples with the first half's (after a warm-up
of twice the retention): flat means rows, finished rows and bytes grew by
less than a quarter.

Not a test: it prints figures. ``--quick`` (about 40 s) is the CI smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

if __package__ in (None, ""):  # run as `python bench/maintenance.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal import Client, Job
from tests.cluster.postgres import PostgresServer, create_database

SHOAL = str(Path(sys.executable).with_name("shoal"))
REPO = Path(__file__).resolve().parent.parent

SAMPLE = """
SELECT (SELECT count(*) FROM shoal.tasks) AS rows,
       pg_total_relation_size('shoal.tasks') AS bytes,
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE schemaname = 'shoal' AND relname = 'tasks') AS dead,
       (SELECT count(*) FROM shoal.tasks WHERE state = 'ready') AS ready,
       (SELECT count(*) FROM shoal.tasks WHERE state = 'succeeded') AS finished
"""
READY = "SELECT count(*) FROM shoal.tasks WHERE state = 'ready'"
LEADER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
"""


@dataclass
class Sample:
    at: float
    rows: int
    bytes: int
    dead: int
    ready: int
    finished: int
    leader: str
    enqueued: int


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.maintenance",
                                description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=30_000,
                   help="at most this many tasks enqueued per second")
    p.add_argument("--backlog", type=int, default=20_000,
                   help="enqueue only while fewer tasks than this are ready")
    p.add_argument("--minutes", type=float, default=6.0, help="length of the run")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--retention", type=float, default=10.0,
                   help="seconds finished tasks are kept (the workers' --retention)")
    p.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--dsn", default=None, help="admin DSN of a server (default: throwaway)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: 40 s at up to 2,000 tasks/s, a sample every 4 s")
    args = p.parse_args()
    if args.quick:
        args.rate, args.backlog = 2_000, 4_000
        args.minutes, args.every, args.retention = 40 / 60, 4.0, 5.0
    return args


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
    else:
        with PostgresServer() as pg:
            yield pg.dsn


class Workers:
    """`shoal worker` processes of the benchmark's no-op app, by worker id."""

    def __init__(self, dsn: str, count: int, retention: float, logs: Path) -> None:
        self.dsn, self.retention, self.logs = dsn, retention, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for _ in range(count):
            self.start()

    def start(self) -> None:
        worker_id = f"bench-{len(self.procs)}"
        with (self.logs / f"{worker_id}.log").open("ab") as out:
            self.procs[worker_id] = subprocess.Popen(
                [SHOAL, "worker", "--dsn", self.dsn, "--app", "bench.shoal_bench:app",
                 "--worker-id", worker_id, "--concurrency", "100", "--batch-size", "100",
                 "--metrics-port", "0", "--claim-ttl", "10s",
                 "--retention", f"{self.retention}s"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "SHOAL_LOG_LEVEL": "WARNING",
                     "PYTHONPATH": os.pathsep.join(
                         p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})

    def kill(self, worker_id: str) -> None:
        self.procs[worker_id].send_signal(signal.SIGKILL)
        self.procs[worker_id].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def leader(conn: asyncpg.Connection) -> str:
    names = [r["application_name"] for r in await conn.fetch(LEADER)]
    return ",".join(n.removeprefix("shoal worker ") for n in names) or "-"


async def produce(client: Client, conn: asyncpg.Connection, args: argparse.Namespace,
                  until: float, counter: list[int]) -> None:
    """Enqueue up to `args.rate` tasks a second, in ten batches a second, while fewer
    than `args.backlog` are ready; until `until`."""
    batch = max(1, args.rate // 10)
    next_at = time.monotonic()
    while time.monotonic() < until:
        if await conn.fetchval(READY) < args.backlog:
            await client.enqueue_many([Job("noop", {"id": 0, "ts": 0.0})] * batch)
            counter[0] += batch
        next_at += 0.1
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def run(args: argparse.Namespace, admin_dsn: str, logs: Path) -> None:
    dsn = await asyncio.to_thread(create_database, admin_dsn, f"maint_{os.getpid()}")
    client = await Client.connect(dsn)
    await client.backend.migrate()
    workers = Workers(dsn, args.workers, args.retention, logs)
    conn = await asyncpg.connect(dsn)
    producing = await asyncpg.connect(dsn)
    naptime = float(await conn.fetchval(
        "SELECT setting FROM pg_settings WHERE name = 'autovacuum_naptime'"))
    samples: list[Sample] = []
    try:
        start = time.monotonic()
        end = start + args.minutes * 60
        counter = [0]
        producer = asyncio.create_task(produce(client, producing, args, end, counter))
        kill_at, killed, killed_at, moved = start + args.minutes * 30, "", 0.0, None
        print(f"up to {args.rate:,} tasks/s while under {args.backlog:,} are ready, for "
              f"{args.minutes:g} min, {args.workers} workers, retention {args.retention:g}s; "
              f"logs in {logs}")
        print(f"{'t s':>6}{'enqueued/s':>12}{'rows':>10}{'MB':>8}{'dead tup':>10}"
              f"{'ready':>9}{'finished':>10}  leader")
        next_sample = start
        while time.monotonic() < end or not producer.done():
            now = time.monotonic()
            if not killed and now >= kill_at:
                killed = await leader(conn)
                if killed in workers.procs:
                    workers.kill(killed)
                    killed_at = time.monotonic()
                    workers.start()
                    print(f"-- killed the leader {killed} (SIGKILL), started a replacement")
            if killed and moved is None:
                current = await leader(conn)
                if current not in ("-", killed):
                    moved = time.monotonic() - killed_at
                    print(f"-- {current} leads {moved:.1f}s after the kill")
            if now >= next_sample:
                row = await conn.fetchrow(SAMPLE)
                enqueued = counter[0]
                rate = ((enqueued - samples[-1].enqueued) / (now - start - samples[-1].at)
                        if samples else 0.0)
                sample = Sample(now - start, row["rows"], row["bytes"], row["dead"] or 0,
                                row["ready"], row["finished"], await leader(conn), enqueued)
                samples.append(sample)
                print(f"{sample.at:>6.0f}{rate:>12,.0f}{sample.rows:>10,}"
                      f"{sample.bytes / 2**20:>8.1f}{sample.dead:>10,}{sample.ready:>9,}"
                      f"{sample.finished:>10,}  {sample.leader}", flush=True)
                next_sample += args.every
            await asyncio.sleep(0.2)
        await producer
    finally:
        workers.stop()
        await conn.close()
        await producing.close()
        await client.close()
    summarize(samples, args, moved, naptime)


def summarize(samples: list[Sample], args: argparse.Namespace, moved: float | None,
              naptime: float) -> None:
    warm = [s for s in samples if s.at >= 2 * args.retention + args.every]
    half = len(warm) // 2
    if half < 1:
        print("too few samples after the warm-up to judge")
        return
    first, second = warm[:half], warm[half:]
    for what in ("rows", "finished", "bytes"):
        a = max(getattr(s, what) for s in first)
        b = max(getattr(s, what) for s in second)
        verdict = "flat" if b <= 1.25 * a else "GROWING"
        if what == "bytes" and second[-1].at - first[0].at < 2 * naptime:
            verdict = (f"not judged: shorter than two autovacuum cycles ({naptime:g}s each), "
                       "which reclaim the space")
        print(f"{what}: max {a:,} in the first half, {b:,} in the second: {verdict}")
    print("leadership moved after the kill in "
          + (f"{moved:.1f}s" if moved is not None else "no time seen: NOT MOVED"))


def main() -> int:
    args = parse()
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"shoal-bench-maintenance-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    with server(args.dsn) as admin:
        asyncio.run(run(args, admin, logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
