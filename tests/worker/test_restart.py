"""Postgres restarted (crash-style, twice) under load loses nothing.

Four `shoal worker` processes run 3000 tasks while the server is stopped with
`pg_ctl -m immediate` and started again, twice. Workers reconnect with backoff and
report the results they held. What the system guarantees, and what is asserted:

- every task ends `succeeded` and ran to completion at least once;
- the stored result is the result of one real run, the last claim's;
- a task ran more than once only when the lease of its earlier run did not
  survive the outage: it expired while the database was down and the task was
  claimed again, with a higher attempt number. Every claim is a durable
  commit, so a crash cannot undo one: no attempt starts twice. The earlier
  run's report is refused by fencing; the counts are printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter

import asyncpg
import pytest

from shoal import Client, Job
from shoal.backend import Backend
from tests.apps.recorder import app, runs
from tests.cluster.postgres import ExternalPostgres, PostgresServer
from tests.support import Spawner, eventually

TOTAL = 3000


async def done_runs(log: str) -> int:
    return sum(1 for e in runs(log) if e["event"] == "done")


async def succeeded(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False  # still starting up
    try:
        n = await conn.fetchval("SELECT count(*) FROM shoal.tasks WHERE state = 'succeeded'")
    finally:
        await conn.close()
    return n == TOTAL


async def test_postgres_restarts_under_load_lose_nothing(
        postgres: PostgresServer | ExternalPostgres, dsn: str, backend: Backend,
        spawn: Spawner, log: str) -> None:
    if not isinstance(postgres, PostgresServer):
        pytest.skip("SHOAL_TEST_DSN: an external server cannot be restarted from here")
    ids = await Client(backend, app).enqueue_many(
        [Job("record", {"log": log, "sleep": 0.05})] * TOTAL)
    await backend.close()  # its connections would die with the server
    workers = [await spawn.worker(dsn, "--concurrency", "8", "--batch-size", "8",
                                  claim_ttl="3s", poll_interval="500ms") for _ in range(4)]
    progress = []
    for fraction in (0.1, 0.4):
        await eventually(lambda f=fraction: _at_least(log, f * TOTAL), within=120,
                         what=f"{fraction:.0%} of the tasks done")
        progress.append(await done_runs(log))
        await asyncio.to_thread(postgres.restart, "immediate")
    assert progress[-1] < TOTAL, "the run finished before the second restart"
    await eventually(lambda: succeeded(dsn), within=180, what="every task to succeed")
    for w in workers:
        w.signal(signal.SIGTERM)
    assert [await w.wait() for w in workers] == [0] * 4

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, state::text, attempts, lease_token, result"
                                " FROM shoal.tasks")
    finally:
        await conn.close()
    tasks = {r["id"]: r for r in rows}
    assert set(tasks) == set(ids) and {r["state"] for r in rows} == {"succeeded"}
    events = runs(log)
    starts = Counter((e["task"], e["attempt"]) for e in events if e["event"] == "start")
    done = Counter(e["task"] for e in events if e["event"] == "done")
    assert set(done) == set(ids)  # every task ran to completion at least once
    done_runs_of = Counter((e["task"], e["pid"], e["attempt"])
                           for e in events if e["event"] == "done")
    refused = sum(len(re.findall(r"result for task \S+ #\d+ refused", w.output()))
                  for w in workers)
    for task_id, row in tasks.items():
        claims = [a for (t, a) in starts if t == task_id]
        assert max(claims) <= row["attempts"] == row["lease_token"]
        result = json.loads(row["result"])
        assert result["attempt"] == max(claims)  # the last claim's run won
        assert done_runs_of[(task_id, result["pid"], result["attempt"])] >= 1
        if done[task_id] > 1:  # only a lease that expired during the outage allows a re-run
            assert row["attempts"] > 1, f"task {task_id} ran {done[task_id]} times on one claim"
    # Claims are durable commits: a crash cannot undo one, so no attempt starts twice.
    lost_claims = sum(n - 1 for n in starts.values())
    assert lost_claims == 0, f"{lost_claims} attempts started twice"
    duplicates = sum(n - 1 for n in done.values())
    print(f"\n{TOTAL} tasks, 2 restarts: {sum(done.values())} completed runs, {duplicates} "
          f"duplicate runs after lease expiry, {refused} refused reports")


async def _at_least(log: str, n: float) -> bool:
    return await done_runs(log) >= n
