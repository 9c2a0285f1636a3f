"""A task whose lease was taken from this worker while its handler still runs (the
worker was cut off or frozen for longer than the claim TTL and the leader's reaper
made the task ready again) is never claimed again by the same worker while that run
goes on: its next heartbeat finds the lease gone and cancels the run, and only then
may the task be claimed again — by any worker, this one included."""

from __future__ import annotations

from pathlib import Path

from shoal import Client
from shoal.backend import Backend
from tests.apps.recorder import app, runs
from tests.support import eventually, running_worker, task_in


async def test_a_worker_never_reclaims_a_task_it_still_runs(
        dsn: str, backend: Backend, log: str, tmp_path: Path) -> None:
    client = Client(backend, app)
    finish = tmp_path / "finish"
    task_id = await client.enqueue("record", {"log": log, "sleep": 600,
                                              "fast_flag": str(finish)})
    async with running_worker(app, dsn, concurrency=2, claim_ttl=4.0) as worker:
        await eventually(lambda: len(runs(log)) == 1, what="the run to start")
        before = await backend.get_task(task_id)
        # What the reaper does to a lease that expired while the worker was cut off
        # (the run's attempt not counted):
        await backend.pool.execute(
            "UPDATE shoal.tasks SET state = 'ready', attempts = attempts - 1,"
            " lease_token = lease_token + 1, worker_id = NULL, lease_expires_at = NULL"
            " WHERE id = $1", task_id)
        other = await client.enqueue("record", {"log": log})  # wakes the worker: it claims
        await eventually(lambda: task_in(backend, other, "succeeded"), what="the other task")
        after_claim = await backend.get_task(task_id)
        assert (after_claim.state, after_claim.worker_id) == ("ready", None)
        # the heartbeat (every 2 s) finds the lease gone and cancels the run; then the
        # task is claimed again like any ready task, and this time it finishes
        await eventually(lambda: [e for e in runs(log)
                                  if (e["task"], e["event"]) == (task_id, "cancelled")],
                         what="the run to be cancelled")
        finish.touch()
        await eventually(lambda: task_in(backend, task_id, "succeeded"), within=30,
                         what="the task's next run")
        assert worker.ledger.busy == 0 and worker.handlers == {} and worker.ledger.leases == {}
    mine = [e["event"] for e in runs(log) if e["task"] == task_id]
    assert mine == ["start", "cancelled", "start", "done"]  # never two runs at once
    task = await backend.get_task(task_id)
    assert (task.attempts, task.lease_token) == (1, before.lease_token + 2)
    assert task.result["attempt"] == 1  # the interrupted attempt did not count
