"""A step's result and the start of the steps after it are one transaction (real Postgres):
when starting the next step fails, the step's result is not recorded either, so a
crash between the two cannot leave a DAG with a finished step and nothing to run."""

from __future__ import annotations

import asyncpg
import pytest

from shoal import Client
from shoal.backend import Backend, Outcome, WorkerIdentity
from tests.apps.recorder import app

ME = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("echo",),
                    concurrency=10, max_attempts=(3,))

# Fails the transaction at the moment a blocked step would become ready.
BREAK_THE_ADVANCE = """
CREATE FUNCTION shoal.test_refuse() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'the next step cannot start'; END $$;
CREATE TRIGGER test_refuse BEFORE UPDATE ON shoal.tasks FOR EACH ROW
WHEN (OLD.state = 'blocked' AND NEW.state = 'ready') EXECUTE FUNCTION shoal.test_refuse();
"""


async def test_a_failed_advance_keeps_the_step_running(backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "first", "task": "echo"},
        {"name": "second", "task": "echo", "dependsOn": ["first"]},
    ]}, name="atomic")
    [first] = await backend.claim(ME, 10, 60)
    outcome = Outcome(first.id, first.lease_token, workflow_id, result_json='"done"')

    await backend.pool.execute(BREAK_THE_ADVANCE)
    with pytest.raises(asyncpg.RaiseError, match="the next step cannot start"):
        await backend.report([outcome])
    steps = {s.name: s.state for s in (await client.status(workflow_id)).steps}
    assert steps == {"first": "running", "second": "blocked"}  # nothing half-written

    await backend.pool.execute("DROP TRIGGER test_refuse ON shoal.tasks")
    assert await backend.report([outcome]) == {first.id}  # the same report, accepted now
    steps = {s.name: s.state for s in (await client.status(workflow_id)).steps}
    assert steps == {"first": "succeeded", "second": "ready"}
