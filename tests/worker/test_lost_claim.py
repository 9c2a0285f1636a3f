"""A task whose lease was taken from this worker while its handler still runs (the
database was out of reach for longer than the claim TTL and another worker's
reaper made the task ready again, or someone reset it by hand) is claimed again
by the same worker: the task runs once, succeeds, and the worker's slots stay
accounted for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal import Client
from shoal.backend import Backend
from tests.apps.recorder import app, runs
from tests.support import eventually, running_worker, task_in


async def test_reclaiming_a_task_still_running_here_does_not_run_it_twice(
        dsn: str, backend: Backend, log: str, tmp_path: Path) -> None:
    client = Client(backend, app)
    finish = tmp_path / "finish"
    task_id = await client.enqueue("record", {"log": log, "sleep": 600,
                                              "fast_flag": str(finish)})
    async with running_worker(app, dsn, concurrency=2) as worker:
        await eventually(lambda: len(runs(log)) == 1, what="the run to start")
        # What a reaper does to a lease that expired while the worker was cut off:
        await backend.pool.execute(
            "UPDATE shoal.tasks SET state = 'ready', attempts = 0, lease_token = 0,"
            " worker_id = NULL, lease_expires_at = NULL WHERE id = $1", task_id)
        await backend.pool.execute("SELECT pg_notify('shoal_tasks', 'default')")
        await eventually(lambda: task_in(backend, task_id, "running"),
                         what="the worker to claim the task again")
        assert (await backend.get_task(task_id)).worker_id == worker.identity.id
        await asyncio.to_thread(finish.touch)  # the (only) run may finish now
        await eventually(lambda: task_in(backend, task_id, "succeeded"), what="the task")
        assert worker.busy == 0 and worker.executions == {}
        second = await client.enqueue("record", {"log": log})
        await eventually(lambda: task_in(backend, second, "succeeded"), what="another task")
    assert [(e["event"], e["task"]) for e in runs(log)] == [
        ("start", task_id), ("done", task_id), ("start", second), ("done", second)]
    task = await backend.get_task(task_id)
    assert (task.attempts, task.lease_token, task.result["attempt"]) == (1, 1, 1)
