"""A claim whose reply was lost (the connection dropped after the claim committed) costs
no attempt and no lease expiry: after reconnecting, the worker finds the lease it holds
but never heard of, and runs the task under it at once."""

from __future__ import annotations

from shoal.backend import Backend
from tests.apps.recorder import app, runs
from tests.support import eventually, running_worker, task_in


async def test_a_claim_whose_reply_was_lost_runs_after_reconnecting(
        dsn: str, backend: Backend, log: str) -> None:
    async with running_worker(app, dsn, claim_ttl=60.0) as worker:
        await eventually(lambda: backend.pool.fetchval(
            "SELECT parked_channel IS NOT NULL FROM shoal.workers"), what="an idle worker")
        # What a claim by this worker commits; its reply never arrives, because the
        # connection drops right after:
        task_id = await backend.pool.fetchval(
            "INSERT INTO shoal.tasks (namespace, name, payload, sort_key, max_attempts, state,"
            " attempts, lease_token, worker_id, started_at, lease_expires_at)"
            " VALUES ('default', 'record', $1::jsonb, now(), 1, 'running', 1, 1, $2, now(),"
            " now() + interval '60 s') RETURNING id", f'{{"log": "{log}"}}', worker.identity.id)
        assert await backend.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1", f"shoal worker {worker.identity.id}") == 1
        await eventually(lambda: task_in(backend, task_id, "succeeded"), within=20,
                         what="the task, well before its lease would expire")
    task = await backend.get_task(task_id)
    assert (task.attempts, task.expiries, task.lease_token) == (1, 0, 1)
    assert [(e["event"], e["attempt"]) for e in runs(log)] == [("start", 1), ("done", 1)]
