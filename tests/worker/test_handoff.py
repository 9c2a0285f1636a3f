"""An idle worker runs a task enqueued alone without claiming it (the enqueue hands it
over), each exactly once; while its connection (which also listens) is down, nothing
is handed to it, and it claims the task once it has reconnected."""

from __future__ import annotations

import asyncio
import signal

import asyncpg

from shoal import Client, Job
from shoal.backend import Backend
from tests.apps.recorder import app
from tests.cluster.postgres import dsn_for
from tests.support import Spawner, eventually, task_in
from tests.worker.test_fleet import events


async def parked(backend: Backend) -> bool:
    return bool(await backend.pool.fetchval(
        "SELECT count(*) FROM shoal.workers WHERE parked_channel IS NOT NULL"))


async def test_idle_worker_runs_handed_off_tasks_once_each(dsn: str, backend: Backend,
                                                            spawn: Spawner, log: str) -> None:
    worker = await spawn.worker(dsn)
    client = Client(backend, app)
    ids = []
    for _ in range(5):
        await eventually(lambda: parked(backend), what="the worker to park")
        ids.append(await client.enqueue("record", {"log": log}))
        await eventually(lambda: task_in(backend, ids[-1], "succeeded"), what=f"task {ids[-1]}")
    rows = await backend.pool.fetch(
        "SELECT started_at = enqueued_at AS handed_off, attempts, lease_token FROM shoal.tasks")
    assert [tuple(r) for r in rows] == [(True, 1, 1)] * 5  # leased by the enqueue itself
    assert sorted(e["task"] for e in events(log, "done")) == ids
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_no_handoff_while_the_worker_cannot_listen_and_it_claims_after_reconnecting(
        dsn: str, backend: Backend, spawn: Spawner, log: str) -> None:
    worker = await spawn.worker(dsn, claim_ttl="60s")
    await eventually(lambda: parked(backend), what="the worker to park")
    database = await backend.pool.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(dsn_for(dsn, "postgres"))  # not from inside the database
    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        # the worker's one connection (it listens, claims, reports and heartbeats)
        assert await backend.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            f"shoal worker {worker.worker_id}") == 1
        (task_id,) = await Client(backend, app).enqueue_many([Job("record", {"log": log})])
        row = await backend.get_task(task_id)
        # still parked, but the connection it listens on is gone: no handoff
        assert await parked(backend)
        assert (row.state, row.worker_id, row.attempts) == ("ready", None, 0)
        await asyncio.sleep(1)
        assert events(log, "start") == []
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    await eventually(lambda: task_in(backend, task_id, "succeeded"), within=20,
                     what="the task, claimed after reconnecting")
    assert [e["task"] for e in events(log, "start")] == [task_id]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_handoff_read_after_its_lease_lapsed_is_never_started(
        dsn: str, backend: Backend, spawn: Spawner, log: str) -> None:
    """The frozen-handoff finding: a single enqueue handed to a parked worker that was
    frozen was reaped and run by another worker, then run again when the frozen one
    resumed. Now the frozen one reads the handoff's lease expiry, finds it past, and
    hands the task back without starting it."""
    frozen = await spawn.worker(dsn, claim_ttl="2s")
    await eventually(lambda: parked(backend), what="the worker to park")
    frozen.signal(signal.SIGSTOP)
    try:
        (task_id,) = await Client(backend, app).enqueue_many([Job("record", {"log": log})])
        assert (await backend.get_task(task_id)).worker_id == frozen.worker_id  # handed off
        other = await spawn.worker(dsn, claim_ttl="2s")
        await eventually(lambda: task_in(backend, task_id, "succeeded"), within=30,
                         what="the task, reaped and run by the other worker")
    finally:
        frozen.signal(signal.SIGCONT)
    await eventually(lambda: "after its lease lapsed: not started" in frozen.output(),
                     what="the thawed worker to refuse the stale handoff")
    assert [e["pid"] for e in events(log, "start")] == [other.pid]
    task = await backend.get_task(task_id)
    assert (task.attempts, task.expiries) == (1, 1)  # the handoff's lease expired once
    for worker in (frozen, other):
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
