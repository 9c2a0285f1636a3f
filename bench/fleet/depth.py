"""Claim cost against what the tasks table holds: ready rows, finished history, delayed rows.

Each point is a fresh database filled by one `INSERT ... SELECT generate_series`
per kind of row (the columns an enqueue writes, in the order a queue's life
would leave them: finished history first, then the ready backlog, then tasks
not due for a day), then `VACUUM ANALYZE` (what autovacuum does to a table that
has sat a while). Then four workers (one per process, the saturation setting of
`sizes`) start with the claim gate closed, run 400 tasks to warm up (their
first claims prepare the statements) and stop claiming; the gate opens for all
at once and:

- with ready rows: the window lasts until `tasks` completions (at most half the
  ready rows, so the depth stays within a factor of two of its name), then the
  gate closes and what the workers hold completes: tasks/s,
  server CPU per task, and the claim statement's mean execution time per call
  and per claimed row, and shared buffers it touched per call
  (pg_stat_statements), and its round trip p99 as the workers time it;
- with no ready rows (only delayed ones): an idle window of `idle_seconds`:
  what every empty poll of an idle worker costs while those rows wait.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import asyncpg

from bench.fleet.context import Context, Window, load, percentile
from bench.fleet.packer import Fleet
from bench.harness import drop_database, recreate_database
from shoal import Client

WORKERS = 4
# The depth points time the poll itself, so the workers poll every second (unless
# --poll-interval says otherwise), whatever their default.
POLL_INTERVAL = 1.0
WARM_UP = 400  # completions before the window

# Rows as an enqueue (and, for history, a claim and a completion) would leave them.
HISTORY = """
INSERT INTO shoal.tasks (namespace, name, payload, state, run_at, sort_key, enqueued_at,
                         attempts, lease_token, worker_id, result, started_at, finished_at)
SELECT 'default', 'noop', jsonb_build_object('id', i, 'ts', 0), 'succeeded', x.t,
       shoal.sort_key(x.t, 0), x.t, 1, 1, 'gone', 'null'::jsonb, x.t, x.t
FROM generate_series(1, $1::bigint) i,
     LATERAL (SELECT now() - interval '1 day' + i * interval '1 microsecond') AS x(t)
"""
READY = """
INSERT INTO shoal.tasks (namespace, name, payload, run_at, sort_key, enqueued_at)
SELECT 'default', 'noop', jsonb_build_object('id', i, 'ts', 0), x.t, shoal.sort_key(x.t, 0), x.t
FROM generate_series(1, $1::bigint) i,
     LATERAL (SELECT now() - interval '1 hour' + i * interval '1 microsecond') AS x(t)
"""
DELAYED = """
INSERT INTO shoal.tasks (namespace, name, payload, state, run_at, sort_key, enqueued_at)
SELECT 'default', 'noop', jsonb_build_object('id', i, 'ts', 0), 'delayed', x.t,
       shoal.sort_key(x.t, 0), now()
FROM generate_series(1, $1::bigint) i,
     LATERAL (SELECT now() + interval '1 day' + i * interval '1 microsecond') AS x(t)
"""


@dataclass
class DepthResult:
    ready: int
    history: int
    delayed: int
    fill_s: float
    table_mb: float
    load: str
    tasks: int  # completions in the window (0: an idle window)
    seconds: float
    tasks_s: float | None
    server_us: float | None  # per task
    server_idle_ms_s: float | None  # per worker per second (idle window)
    claim_calls: int | None
    claim_exec_us: float | None  # mean per call
    claim_row_us: float | None  # per claimed row
    claim_blocks: float | None  # shared buffers per call
    claimed_per_call: float | None
    claim_p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _fill(dsn: str, ready: int, history: int, delayed: int) -> tuple[float, float]:
    """Write the rows; return the seconds it took and the table's size in MB."""
    conn = await asyncpg.connect(dsn)
    try:
        began = time.monotonic()
        for statement, rows in ((HISTORY, history), (READY, ready), (DELAYED, delayed)):
            if rows:
                await conn.execute(statement, rows)
        await conn.execute("VACUUM ANALYZE shoal.tasks")
        size = await conn.fetchval("SELECT pg_total_relation_size('shoal.tasks')")
        return time.monotonic() - began, size / 2**20
    finally:
        await conn.close()


async def measure_point(ctx: Context, *, ready: int, history: int, delayed: int, tasks: int,
                        idle_seconds: float) -> DepthResult:
    database = "fleet_depth"
    dsn = await recreate_database(ctx.admin_dsn, database)
    client = await Client.connect(dsn)
    options = replace(ctx.options, poll_interval=ctx.options.poll_interval or POLL_INTERVAL)
    fleet = Fleet(dsn, WORKERS, WORKERS, options, ctx.workdir / "logs", gated=True)
    try:
        await client.backend.migrate()
        fill_s, table_mb = await _fill(dsn, ready, history, delayed)
        at_load = load()
        await fleet.start(ready_within=120)
        if ready:  # warm up: each worker's first claims prepare its statements
            await fleet.command("go")
            await fleet.wait_settled(fleet.settled + WARM_UP, within=120)
            await fleet.command("gate")
            await fleet.wait_quiet(within=60)
        await fleet.command("clear")
        settled = fleet.settled
        want = min(tasks, (ready - settled) // 2)
        async with Window(ctx, fleet.pids) as w:
            go = time.time()
            await fleet.command("go")
            if want:
                await fleet.wait_settled(settled + want, within=600)
                await fleet.command("gate")  # what is claimed is completed, then nothing
                await fleet.wait_quiet(within=60)
            else:
                await asyncio.sleep(idle_seconds)
            done = fleet.settled - settled
            last = fleet.history[-1][0] if fleet.history else go
        stats = await ctx.stats.read(database) if ctx.stats else None
        claims = sorted(1000 * d for d in (await fleet.collect(ctx.workdir / "dumps")).claims)
    finally:
        await fleet.stop()
        await client.close()
        await drop_database(ctx.admin_dsn, database)
    claim = stats.get("claim") if stats else None
    claimed = claim.rows - claim.calls if claim else 0  # one summary row per answer
    return DepthResult(
        ready=ready, history=history, delayed=delayed, fill_s=fill_s, table_mb=table_mb,
        load=at_load, tasks=done, seconds=w.seconds,
        tasks_s=done / (last - go) if want and last > go else None,
        server_us=1e6 * w.server / done if want and done else None,
        server_idle_ms_s=None if want else
        1000 * (w.server - ctx.idle_baseline * w.seconds) / WORKERS / w.seconds,
        claim_calls=claim.calls if claim else None,
        claim_exec_us=claim.mean_us if claim else None,
        claim_row_us=1000 * claim.exec_ms / claimed if claim and claimed else None,
        claim_blocks=claim.blocks / claim.calls if claim and claim.calls else None,
        claimed_per_call=claimed / claim.calls if claim and claim.calls else None,
        claim_p99_ms=percentile(claims, 99) if claims else None)
