"""One fleet size N: idle cost, idle hand-off, saturation — on the same N workers.

For each N, in a fresh database: start N workers (see `packer`), let them
settle (long enough for one of them to win the maintenance role, which takes a
claim TTL of contact), then

1. *idle*: a window of `idle_seconds` with nothing to do. Server CPU per worker
   per second, net of the server's own idle CPU (measured with no worker
   connected); the packers' CPU per worker; statements per worker per second
   (pg_stat_statements).
2. *hand-off*: K = max(idle_tasks, N) single enqueues, one every `spacing`
   seconds (each one due now, so handed to a parked worker when one is alive):
   enqueue -> handler start p50/p99 (the enqueue call's start to the handler's
   first line, one clock); how many were handed off (a handed-off task starts in
   the enqueue's own transaction: `started_at = enqueued_at`); the spread, i.e.
   how many workers ran at least one and the most any one ran, against the even
   share ceil(K/N); server CPU per enqueue, net of the idle rate just measured.
   Then 200 `SELECT pg_notify(...)` on a channel no worker listens on, against
   200 `SELECT 1`: what one notification costs the server beyond a statement
   with N listening sessions (Postgres wakes every session that listens in the
   database, whatever the channel, and each reads the notification queue).
3. *saturation*: with the claim gate closed, a backlog of
   max(tasks, backlog_per_worker x N) no-op tasks is enqueued and committed
   and ANALYZEd (as autovacuum would soon); the gate opens for every worker
   at once and the phase ends when every task is durably complete. tasks/s over
   the middle 80% (from the 10th to the 90th percentile of completions: no
   wake-up ramp, no tail) and over the whole phase; server and packer CPU per
   task over the whole phase; the claim statement's round trip p50/p99 as the
   workers time it, its mean execution time in the server and tasks per claim
   (pg_stat_statements); WAL bytes per task.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet.context import Context, Window, load, percentile
from bench.fleet.packer import TASK, Fleet
from bench.fleet.server import Statement, Statements
from bench.harness import drop_database, recreate_database
from shoal import Client, Job

ENQUEUE_CHUNK = 5000


@dataclass
class SizeSettings:
    settle: float
    idle_seconds: float
    idle_tasks: int
    spacing: float
    tasks: int
    backlog_per_worker: int
    deadline: float  # seconds a saturation phase may take


@dataclass
class Idle:
    seconds: float
    server_ms_s: float  # per worker per second, net of the server's idle baseline
    server_gross_ms_s: float  # the same, baseline included
    server_system: float  # share of the server's CPU spent in the kernel
    client_ms_s: float  # packer CPU per worker per second
    busiest_packer: float  # share of one core used by the busiest packer
    statements_s: float | None  # statements per worker per second
    drops: int  # connections dropped during the window
    statements: list[dict[str, Any]] = field(default_factory=list)  # the top ones


@dataclass
class Handoff:
    enqueues: int
    spacing_ms: float
    p50_ms: float
    p99_ms: float
    handed_off: float  # share of the enqueues
    workers_used: int
    max_per_worker: int
    even_share: int
    duplicates: int
    server_ms: float  # server CPU per enqueue, net of the idle rate
    enqueue_us: float | None  # the enqueue statement's mean execution time
    drops: int
    notify_ms: float  # server CPU per NOTIFY on a channel nobody listens on, beyond a SELECT 1
    statements: list[dict[str, Any]] = field(default_factory=list)  # per enqueue


@dataclass
class Saturation:
    backlog: int
    enqueue_s: float
    tasks_s: float  # middle 80%
    tasks_s_all: float  # whole phase
    server_us: float
    client_us: float
    claim_p50_ms: float
    claim_p99_ms: float
    claim_exec_us: float | None
    tasks_per_claim: float | None
    claim_blocks: float | None  # shared buffers per claim
    wal_bytes: float
    server_system: float
    busiest_packer: float  # share of one core used by the busiest packer
    drops: int
    statements: list[dict[str, Any]] = field(default_factory=list)  # per task
    note: str = ""


@dataclass(frozen=True)
class Code:
    """The code a fleet runs: a label ("" for this checkout alone) and its source tree."""

    label: str
    src: Path


@dataclass
class SizeResult:
    size: int
    procs: int
    packed: bool
    start_s: float
    load: str
    idle: Idle
    handoff: Handoff
    saturation: Saturation
    code: str = ""  # the label of the code measured ("": this checkout, no comparison)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def measure_size(ctx: Context, size: int, s: SizeSettings, code: Code) -> SizeResult:
    """Measure N workers of `code` in a fresh database (migrated by this checkout: the
    schema is the newest, whichever code runs on it)."""
    database = f"fleet_n{size}" + (f"_{code.label}" if code.label else "")
    dsn = await recreate_database(ctx.admin_dsn, database)
    client = await Client.connect(dsn)
    fleet = Fleet(dsn, size, ctx.procs, ctx.options, ctx.workdir / f"logs{code.label}",
                  src=code.src)
    try:
        await client.backend.migrate()
        start_s = await fleet.start(ready_within=120 + size / 5)
        at_load = load()
        print(f"  {size} workers in {fleet.procs} processes registered in {start_s:.1f}s "
              f"(load {at_load}); settling {s.settle:g}s", flush=True)
        await asyncio.sleep(s.settle)
        idle = await _idle(ctx, fleet, database, s)
        print(f"  idle: {idle.server_ms_s:.3f} ms/s server CPU per worker "
              f"({idle.statements_s or 0:.2f} statements/s each)", flush=True)
        handoff = await _handoff(ctx, fleet, client, database, idle, s)
        print(f"  hand-off: p50 {handoff.p50_ms:.2f} ms, p99 {handoff.p99_ms:.2f} ms, "
              f"{handoff.handed_off:.0%} handed off", flush=True)
        saturation = await _saturation(ctx, fleet, client, database, s)
        print(f"  saturation: {saturation.tasks_s:,.0f} tasks/s, "
              f"{saturation.server_us:.1f} us server CPU per task", flush=True)
    finally:
        await fleet.stop()
        await client.close()
        await drop_database(ctx.admin_dsn, database)
    return SizeResult(size, fleet.procs, fleet.packed, start_s, at_load, idle, handoff,
                      saturation, code.label)


def _top(stats: Statements | None, per: float) -> list[dict[str, Any]]:
    """The statements that took most execution time: calls per `per` (a worker-second,
    an enqueue, a task), mean execution, share of all execution time."""
    if stats is None:
        return []
    total = stats.exec_ms or 1.0
    return [{"name": st.name, "calls": st.calls / per, "mean_us": st.mean_us,
             "plan_us": st.plan_us, "share": st.exec_ms / total} for st in stats.top()[:8]]


async def _idle(ctx: Context, fleet: Fleet, database: str, s: SizeSettings) -> Idle:
    drops = fleet.drops()
    async with Window(ctx, fleet.pids) as w:
        await asyncio.sleep(s.idle_seconds)
    stats = await ctx.stats.read(database) if ctx.stats else None
    n, secs = fleet.size, w.seconds
    return Idle(
        seconds=secs,
        server_ms_s=1000 * (w.server - ctx.idle_baseline * secs) / n / secs,
        server_gross_ms_s=1000 * w.server / n / secs,
        server_system=w.server_system / w.server if w.server else 0.0,
        client_ms_s=1000 * w.client / n / secs,
        busiest_packer=max(w.per_packer) / secs,
        statements_s=stats.calls / n / secs if stats else None,
        drops=fleet.drops() - drops,
        statements=_top(stats, n * secs))


async def _handoff(ctx: Context, fleet: Fleet, client: Client, database: str, idle: Idle,
                   s: SizeSettings) -> Handoff:
    count = max(s.idle_tasks, fleet.size)
    await fleet.command("clear")
    settled = fleet.settled
    drops = fleet.drops()
    enqueued: dict[int, float] = {}
    async with Window(ctx, fleet.pids) as w:
        next_at = time.monotonic()
        for i in range(count):
            enqueued[i] = time.time()
            await client.enqueue(TASK, {"id": i, "ts": enqueued[i]})
            next_at += s.spacing
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await fleet.wait_settled(settled + count, within=60)
    stats = await ctx.stats.read(database) if ctx.stats else None
    runs = (await fleet.collect(ctx.workdir / "dumps")).runs
    latencies = sorted(1000 * (r.at - enqueued[r.task]) for r in runs)
    per_worker = Counter(r.worker for r in runs)
    row = await client.backend.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE started_at = enqueued_at) AS handed, count(*) AS n "
        "FROM shoal.tasks")
    idle_rate = idle.server_gross_ms_s * fleet.size / 1000  # server CPU s/s while idle
    enqueue = stats.get("enqueue") if stats else None
    plain = await _probe(ctx, fleet, client, "SELECT 1", idle_rate)
    notify = await _probe(ctx, fleet, client, "SELECT pg_notify('fleet_probe', '')", idle_rate)
    return Handoff(
        enqueues=count, spacing_ms=1000 * s.spacing,
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        handed_off=row["handed"] / row["n"], workers_used=len(per_worker),
        max_per_worker=max(per_worker.values()), even_share=math.ceil(count / fleet.size),
        duplicates=len(runs) - len({r.task for r in runs}),
        server_ms=1000 * (w.server - idle_rate * w.seconds) / count,
        enqueue_us=enqueue.mean_us if enqueue else None, drops=fleet.drops() - drops,
        notify_ms=notify - plain, statements=_top(stats, count))


PROBES = 200
PROBE_SPACING = 0.01  # seconds
PROBE_TAIL = 1.0  # seconds for the listeners to catch up after the last one


async def _probe(ctx: Context, fleet: Fleet, client: Client, sql: str, idle_rate: float
                 ) -> float:
    """Server CPU (ms, net of the idle rate) per run of `sql` from the producer's pool."""
    pool = client.backend.pool
    async with Window(ctx, fleet.pids) as w:
        next_at = time.monotonic()
        for _ in range(PROBES):
            await pool.execute(sql)
            next_at += PROBE_SPACING
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.sleep(PROBE_TAIL)
    return 1000 * (w.server - idle_rate * w.seconds) / PROBES


async def _saturation(ctx: Context, fleet: Fleet, client: Client, database: str,
                      s: SizeSettings) -> Saturation:
    backlog = max(s.tasks, s.backlog_per_worker * fleet.size)
    await fleet.command("gate")
    began = time.monotonic()
    for start in range(0, backlog, ENQUEUE_CHUNK):
        await client.enqueue_many([Job(TASK, {"id": i, "ts": 0.0})
                                   for i in range(start, min(backlog, start + ENQUEUE_CHUNK))])
    enqueue_s = time.monotonic() - began
    pool = client.backend.pool
    await pool.execute("ANALYZE shoal.tasks")
    await fleet.command("clear")
    settled = fleet.settled
    history_from = len(fleet.history)
    drops = fleet.drops()
    wal = await pool.fetchval("SELECT pg_current_wal_lsn()")
    note = ""
    async with Window(ctx, fleet.pids) as w:
        go = time.time()
        await fleet.command("go")
        try:
            await fleet.wait_settled(settled + backlog, within=s.deadline)
        except TimeoutError:
            note = f"only {fleet.settled - settled:,} done in {s.deadline:g}s"
    done = fleet.settled - settled
    wal_bytes = float(await pool.fetchval(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal))
    stats = await ctx.stats.read(database) if ctx.stats else None
    claims = sorted(1000 * d for d in (await fleet.collect(ctx.workdir / "dumps")).claims)
    progress = [(t, n - settled) for t, _, n in fleet.history[history_from:]]
    end = next(t for t, n in progress if n >= done)
    claim = stats.get("claim") if stats else Statement("claim")
    return Saturation(
        backlog=backlog, enqueue_s=enqueue_s,
        tasks_s=_middle_rate(progress, done), tasks_s_all=done / (end - go),
        server_us=1e6 * w.server / done, client_us=1e6 * w.client / done,
        claim_p50_ms=percentile(claims, 50), claim_p99_ms=percentile(claims, 99),
        claim_exec_us=claim.mean_us if stats else None,
        # a claim's answer has one row more than it claimed: the ids it completed
        tasks_per_claim=(claim.rows - claim.calls) / claim.calls if claim.calls else None,
        claim_blocks=claim.blocks / claim.calls if claim.calls else None,
        wal_bytes=wal_bytes / done, server_system=w.server_system / w.server,
        busiest_packer=max(w.per_packer) / w.seconds,
        drops=fleet.drops() - drops, statements=_top(stats, done), note=note)


def _middle_rate(progress: list[tuple[float, int]], total: int) -> float:
    """Completions per second between the first reports of 10% and of 90% done."""
    t10, d10 = next((t, d) for t, d in progress if d >= 0.1 * total)
    t90, d90 = next((t, d) for t, d in progress if d >= 0.9 * total)
    return (d90 - d10) / (t90 - t10) if t90 > t10 else math.nan
