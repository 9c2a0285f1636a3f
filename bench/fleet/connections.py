"""What a fleet's connections cost the server: ``python -m bench.fleet --sections connections``.

A worker holds one session connection for its whole life (it LISTENs on it, its
hand-offs are addressed to that backend's pid, it sets session timeouts), so N
workers are N backend processes. For each N (``--connection-sizes``, default 10,
100, 300 and 1,000) the section restarts its own throwaway server (never
``--dsn``'s: it changes ``max_connections``) with ``max_connections`` = N +
`HEADROOM`, and in a fresh database measures

1. *empty*: the memory of the server's own processes (postmaster, checkpointer,
   WAL writer ...) with only the harness connected, and the shared memory the
   server allocated at this ``max_connections`` (``shared_memory_size``);
2. *establishment*: ``--connects`` worker connections opened and closed one
   after the other, each a worker's own `Session` (connect with the worker's
   session settings, then its three LISTENs): wall time p50/p99 as the worker
   sees it, and server CPU per connection (fork, start-up, settings, LISTEN, exit;
   net of the server's idle CPU measured just before);
3. *N idle workers*, packed as in `sizes` (real workers, each with its own
   session), that have each run tasks (a burst of 2N no-op tasks) and then idle
   for ``--connection-settle`` seconds, as a working fleet's backends are
   between bursts; beside them a pool like the operator's (at most 4
   connections, filled by 4 concurrent reads, plus its LISTEN connection) and a
   CLI command's client (`max_size=1`), each named by ``application_name``;
4. *memory per backend* from ``/proc/PID/smaps_rollup`` and ``/proc/PID/status``:
   Pss (the backend's share of every page it maps), its Pss_Shmem part (the
   shared segment: shared_buffers and the rest; every process maps it, so its
   sum over the server's processes is the segment touched, whatever N), the
   rest (Pss_Anon + Pss_File: what the backend costs by itself), Private (pages
   no other process maps) and the page tables (VmPTE: kernel memory outside
   Pss; each backend maps the shared segment with page tables of its own);
5. the establishment again, with the N workers connected.

It prints the tables, and writes them to ``connections.txt``, every figure to
``connections.json`` and the memory curve to ``connections.png`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.fleet.context import percentile
from bench.fleet.packer import REPO, TASK, Fleet, WorkerOptions
from bench.fleet.report import _f, table
from bench.fleet.server import postmaster_pid, server_cpu
from bench.harness import drop_database, recreate_database
from shoal import Client, Job
from shoal.backend import Backend, LinkTimeouts, Subscription
from shoal.backend.codec import init_connection
from shoal.backend.connections import Session
from shoal.backend.queries import Queries
from tests.cluster.postgres import PostgresServer

# Connections beyond the workers': the operator's pool and LISTEN connection (5), a
# CLI command (1), the harness (its admin connection, its client's pool of up to 4,
# the establishment probe: 6), superuser_reserved_connections (3), and 5 spare.
HEADROOM = 20
OPERATOR_POOL = 4  # Backend.connect(min_size=1, max_size=4) in shoal_operator.backends
CLI_POOL = 1  # Client.connect(max_size=1), as `shoal queue` and most commands
DATABASE = "fleet_connections"
GROUPS = ("workers", "operator", "cli", "harness", "server")
MIB = 1024.0  # kB per MiB


@dataclass
class Memory:
    """Memory of a group of server processes, in kB summed over them."""

    processes: int = 0
    rss: int = 0
    pss: int = 0
    pss_shmem: int = 0  # the shared segment's part of pss
    private: int = 0  # Private_Clean + Private_Dirty
    pte: int = 0  # page tables (VmPTE)

    @property
    def own(self) -> int:
        """Pss without the shared segment: what the processes cost by themselves."""
        return self.pss - self.pss_shmem

    def add(self, pid: int) -> None:
        """Add one process (one that ended meanwhile is left out)."""
        try:
            rollup = _kb_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
            status = _kb_fields(Path(f"/proc/{pid}/status").read_text())
        except (FileNotFoundError, ProcessLookupError):
            return
        self.processes += 1
        self.rss += rollup["Rss"]
        self.pss += rollup["Pss"]
        self.pss_shmem += rollup["Pss_Shmem"]
        self.private += rollup["Private_Clean"] + rollup["Private_Dirty"]
        self.pte += status["VmPTE"]

    def mean(self, kb: int) -> float:
        """`kb` per process, in MiB."""
        return kb / self.processes / MIB if self.processes else 0.0


def _kb_fields(text: str) -> dict[str, int]:
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields


@dataclass
class Establishment:
    connects: int
    p50_ms: float
    p99_ms: float
    server_ms: float  # server CPU per connection, net of its idle rate


@dataclass
class ConnectionsResult:
    workers: int
    max_connections: int
    shared_memory_mb: int  # shared_memory_size at this max_connections
    client_connections: int  # client backends at the memory snapshot
    start_s: float
    empty: Memory  # the server's own processes, nothing connected but the harness
    groups: dict[str, Memory]  # at the snapshot, by GROUPS
    empty_connect: Establishment
    busy_connect: Establishment  # with the N workers connected
    idle_server_ms_s: float  # server CPU per second with the N workers idle
    connections: dict[str, int] = field(default_factory=dict)  # per group

    @property
    def total(self) -> Memory:
        out = Memory()
        for memory in self.groups.values():
            for name in ("processes", "rss", "pss", "pss_shmem", "private", "pte"):
                setattr(out, name, getattr(out, name) + getattr(memory, name))
        return out

    @property
    def marginal(self) -> float:
        """kB per worker that the workers' backends and the server's own processes
        (the shared memory they touched) added to the empty server."""
        grown = [self.groups["workers"], self.groups["server"]]
        now = sum(m.pss + m.pte for m in grown)
        return (now - self.empty.pss - self.empty.pte) / self.workers

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"marginal_kb": self.marginal}


@contextlib.contextmanager
def throwaway(args: argparse.Namespace) -> Iterator[PostgresServer]:
    with PostgresServer(bin_dir=args.pg_bin, max_connections=100) as pg:
        yield pg


async def measure(pg: PostgresServer, size: int, args: argparse.Namespace, workdir: Path
                  ) -> ConnectionsResult:
    """One fleet size on `pg`, restarted with max_connections = size + HEADROOM."""
    pg.stop("fast")
    pg.max_connections = size + HEADROOM
    pg.start()
    postmaster = postmaster_pid(pg.data)
    dsn = await recreate_database(pg.dsn, DATABASE)
    admin = await asyncpg.connect(pg.dsn)
    client = await Client.connect(dsn)
    fleet = Fleet(dsn, size, args.procs, WorkerOptions(poll_interval=args.poll_interval,
                                                       claim_ttl=args.claim_ttl),
                  workdir / "logs")
    try:
        await client.backend.migrate()
        shared_mb = int(str(await admin.fetchval("SHOW shared_memory_size")).rstrip("MB"))
        empty = (await _snapshot(admin, postmaster))["server"]
        empty_connect = await _establish(dsn, postmaster, args.connects, args.claim_ttl)
        print(f"  {size} workers (max_connections {pg.max_connections}, shared memory "
              f"{shared_mb} MB): empty connect p50 {empty_connect.p50_ms:.1f} ms, "
              f"{empty_connect.server_ms:.2f} ms server CPU", flush=True)
        start_s = await fleet.start(ready_within=120 + size / 5)
        await client.enqueue_many([Job(TASK, {"id": i, "ts": 0.0}) for i in range(2 * size)])
        await fleet.wait_settled(2 * size, within=120 + size / 5)
        async with _operator_and_cli(dsn):
            await asyncio.sleep(args.connection_settle)
            groups = await _snapshot(admin, postmaster)
            idle_rate = await _idle_rate(postmaster, seconds=5.0)
            busy_connect = await _establish(dsn, postmaster, args.connects, args.claim_ttl,
                                            idle_rate)
        clients = sum(groups[g].processes for g in GROUPS if g != "server")
        w = groups["workers"]
        print(f"  {size} workers registered in {start_s:.1f}s; per worker backend: Pss "
              f"{w.mean(w.pss):.2f} MiB ({w.mean(w.own):.2f} own), page tables "
              f"{w.mean(w.pte):.2f} MiB; connect with {size} connected p50 "
              f"{busy_connect.p50_ms:.1f} ms", flush=True)
    finally:
        await fleet.stop()
        await client.close()
        await admin.close()
        await drop_database(pg.dsn, DATABASE)
    return ConnectionsResult(
        workers=size, max_connections=pg.max_connections, shared_memory_mb=shared_mb,
        client_connections=clients, start_s=start_s, empty=empty, groups=groups,
        empty_connect=empty_connect, busy_connect=busy_connect,
        idle_server_ms_s=1000 * idle_rate,
        connections={g: groups[g].processes for g in GROUPS if g != "server"})


@contextlib.asynccontextmanager
async def _operator_and_cli(dsn: str) -> AsyncIterator[None]:
    """A pool like the operator's, filled, with its LISTEN connection; a CLI command's
    client, used. Each named by application_name."""
    queries = Queries("shoal")
    operator = await Backend.connect(f"{dsn}?application_name=bench-operator", min_size=1,
                                     max_size=OPERATOR_POOL)
    listen = Subscription(f"{dsn}?application_name=bench-operator",
                          [queries.tasks_channel, queries.workflows_channel],
                          lambda _channel, _payload: None)
    listening = asyncio.create_task(listen.run())
    cli = await Client.connect(f"{dsn}?application_name=bench-cli", max_size=CLI_POOL)
    try:
        await asyncio.gather(*(operator.pool.fetchval("SELECT pg_sleep(0.2)")
                               for _ in range(OPERATOR_POOL)))
        await cli.queue()
        async with asyncio.timeout(30):
            await listen.connected.wait()
        yield
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await cli.close()
        await operator.close()


async def _snapshot(admin: asyncpg.Connection, postmaster: int) -> dict[str, Memory]:
    """Memory of every server process, by group (see GROUPS)."""
    rows = await admin.fetch("SELECT pid, backend_type, application_name FROM "
                             "pg_stat_activity")
    groups = {g: Memory() for g in GROUPS}
    groups["server"].add(postmaster)
    for row in rows:
        app = row["application_name"] or ""
        if row["backend_type"] != "client backend":
            group = "server"
        elif app.startswith("shoal worker "):
            group = "workers"
        elif app == "bench-operator":
            group = "operator"
        elif app == "bench-cli":
            group = "cli"
        else:
            group = "harness"
        groups[group].add(row["pid"])
    return groups


async def _idle_rate(postmaster: int, seconds: float) -> float:
    """Server CPU seconds per second, over `seconds` of what runs now."""
    before = sum(server_cpu(postmaster))
    began = time.monotonic()
    await asyncio.sleep(seconds)
    return (sum(server_cpu(postmaster)) - before) / (time.monotonic() - began)


async def _establish(dsn: str, postmaster: int, count: int, ttl: float,
                     idle_rate: float | None = None) -> Establishment:
    """`count` worker sessions opened (settings, LISTENs) and closed, one at a time."""
    queries = Queries("shoal")
    channels = [queries.tasks_channel, queries.control_channel, "shoal_handoff_bench"]
    timeouts = LinkTimeouts.for_claim_ttl(ttl)
    if idle_rate is None:
        idle_rate = await _idle_rate(postmaster, seconds=2.0)
    durations = []
    before = sum(server_cpu(postmaster))
    began = time.monotonic()
    for i in range(count):
        session = Session(dsn, "shoal", channels, lambda _channel, _payload: None,
                          init_connection, application_name=f"bench connect {i}",
                          timeouts=timeouts)
        started = time.perf_counter()
        await session.connect()
        durations.append(1000 * (time.perf_counter() - started))
        await session.close()
    await asyncio.sleep(0.5)  # the last backends exit and are reaped
    used = sum(server_cpu(postmaster)) - before - idle_rate * (time.monotonic() - began)
    durations.sort()
    return Establishment(count, percentile(durations, 50), percentile(durations, 99),
                         1000 * used / count)


# --------------------------------------------------------------------------
# Report


def memory_table(results: Sequence[ConnectionsResult]) -> str:
    rows = []
    for r in results:
        w, t = r.groups["workers"], r.total
        rows.append([
            f"{r.workers:,}", f"{r.max_connections:,}", f"{r.client_connections:,}",
            f"{r.shared_memory_mb:,}", _f((t.pss + t.pte) / MIB, 0),
            _f(t.pss_shmem / MIB, 0), _f(w.own / MIB, 0), _f(t.pte / MIB, 0),
            _f(w.mean(w.pss), 2), _f(w.mean(w.pss_shmem), 2), _f(w.mean(w.own), 2),
            _f(w.mean(w.private), 2), _f(w.mean(w.pte), 2), _f(r.marginal / MIB, 2)])
    return table(
        ["workers", "max_conn", "clients", "shm MB", "server MiB", "shm touched",
         "workers own", "page tables", "Pss", "shm part", "own", "Private", "PTE",
         "marginal"], rows,
        "Server memory with N idle workers. max_conn: the max_connections set (N + "
        f"{HEADROOM}); clients: client backends at the snapshot (workers, operator pool + "
        "LISTEN, CLI, harness); shm MB: shared_memory_size allocated at that "
        "max_connections. Whole server (MiB): Pss + page tables of every server process; "
        "shared memory touched (sum of Pss_Shmem); the worker backends' own memory (sum of "
        "Pss - Pss_Shmem); page tables (sum of VmPTE). Per worker backend (MiB, mean): "
        "Pss, its shared-memory part, own (Pss - Pss_Shmem), Private, page tables; "
        "marginal: what the server grew by per worker (Pss + page tables of the workers' "
        "backends and of the server's own processes, over the empty server's)")


def groups_table(r: ConnectionsResult) -> str:
    rows = []
    for name in GROUPS:
        m = r.groups[name]
        if m.processes:
            rows.append([name, f"{m.processes}", _f(m.mean(m.pss), 2), _f(m.mean(m.own), 2),
                         _f(m.mean(m.private), 2), _f(m.mean(m.pte), 2), _f(m.mean(m.rss), 1)])
    return table(["processes", "count", "Pss", "own", "Private", "PTE", "Rss"], rows,
                 f"Per process at {r.workers:,} workers (MiB, mean): operator = a pool like "
                 f"the operator's ({OPERATOR_POOL}, filled) and its LISTEN connection; cli = "
                 "a CLI command's client; server = postmaster and its auxiliary processes")


def establishment_table(results: Sequence[ConnectionsResult]) -> str:
    rows = [[f"{r.workers:,}", f"{r.empty_connect.connects}",
             _f(r.empty_connect.p50_ms, 1), _f(r.empty_connect.p99_ms, 1),
             _f(r.empty_connect.server_ms, 2), _f(r.busy_connect.p50_ms, 1),
             _f(r.busy_connect.p99_ms, 1), _f(r.busy_connect.server_ms, 2),
             _f(r.idle_server_ms_s / r.workers, 3)] for r in results]
    return table(["workers", "connects", "p50 ms", "p99 ms", "server ms", "p50 ms (N)",
                  "p99 ms (N)", "server ms (N)", "idle ms/s"], rows,
                 "Connection establishment: a worker's session (connect with its settings, "
                 "three LISTENs) opened and closed one at a time; wall time as the worker "
                 "sees it and server CPU per connection (net of idle), on the empty server "
                 "and with the N workers connected (N); idle ms/s: server CPU per idle "
                 "worker per second meanwhile (gross)")


def plot(results: Sequence[ConnectionsResult], path: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r.workers for r in results]
    fig, (whole, each) = plt.subplots(1, 2, figsize=(13, 4.8))
    series = [
        ("whole server (Pss + page tables)", lambda r: r.total.pss + r.total.pte),
        ("worker backends' own (Pss - Pss_Shmem)", lambda r: r.groups["workers"].own),
        ("shared memory touched (sum of Pss_Shmem)", lambda r: r.total.pss_shmem),
        ("page tables (VmPTE)", lambda r: r.total.pte),
        ("shared memory allocated (shared_memory_size)",
         lambda r: r.shared_memory_mb * MIB)]
    for label, get in series:
        whole.plot(n, [get(r) / MIB for r in results], marker="o", label=label)
    whole.set_title("server memory against idle workers (MiB)", fontsize=10)
    per = [("Pss", lambda m: m.pss), ("own (Pss - Pss_Shmem)", lambda m: m.own),
           ("Private", lambda m: m.private), ("page tables", lambda m: m.pte)]
    for label, get in per:
        each.plot(n, [r.groups["workers"].mean(get(r.groups["workers"])) for r in results],
                  marker="o", label=label)
    each.set_title("per worker backend, mean (MiB)", fontsize=10)
    for ax in (whole, each):
        ax.set_xlabel("workers (one connection each)")
        ax.set_xticks(n, [f"{x:,}" for x in n])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Shoal connections: {caption}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "worker", "bench"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return out + (" (uncommitted changes)" if dirty else "")


async def run(args: argparse.Namespace, out: Path) -> list[ConnectionsResult]:
    """Every size in `args.connection_sizes`; the tables printed and written to `out`."""
    if args.dsn:
        print("connections: skipped with --dsn (the section restarts its own server with "
              "each max_connections)")
        return []
    results: list[ConnectionsResult] = []
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with throwaway(args) as pg, tempfile.TemporaryDirectory(prefix="shoal-conns-") as tmp:
        for size in args.connection_sizes:
            print(f"connections: {size} workers", flush=True)
            results.append(await measure(pg, size, args, Path(tmp)))
        conn = await asyncpg.connect(pg.dsn)
        version, buffers = [await conn.fetchval(f"SHOW {name}")
                            for name in ("server_version", "shared_buffers")]
        await conn.close()
    poll = "default" if args.poll_interval is None else f"{args.poll_interval:g}s"
    caption = (f"{now}, commit {_commit()}, Postgres {version}, shared_buffers {buffers}, "
               f"{os.cpu_count()} cores, poll {poll}, "
               f"load {os.getloadavg()[0]:.2f}")
    write(results, args, out, caption)
    return results


def write(results: Sequence[ConnectionsResult], args: argparse.Namespace, out: Path,
          caption: str) -> None:
    """Print the tables; write them, the JSON and the plot to `out`."""
    command = "python -m bench.fleet --sections connections " + (
        "--quick" if args.quick else
        f"--connection-sizes {','.join(map(str, args.connection_sizes))} "
        f"--connects {args.connects} --procs {args.procs}")
    text = "\n".join([f"Connections, {caption}", f"command: {command}", "",
                      memory_table(results), groups_table(results[-1]),
                      establishment_table(results)])
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "connections.txt").write_text(text)
    (out / "connections.json").write_text(json.dumps(
        {"caption": caption, "command": command, "headroom": HEADROOM,
         "sizes": [r.as_dict() for r in results]}, indent=1))
    plot(results, out / "connections.png", caption)
    for name in ("connections.txt", "connections.json", "connections.png"):
        print(f"wrote {out / name}")
