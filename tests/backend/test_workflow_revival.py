"""Dead-letter retry revives a failed workflow: the steps its failure cancelled wait
again and run after the retried step succeeds; with another step still dead, the
retried step still runs and the workflow fails again with that step's error."""

from __future__ import annotations

from collections.abc import Collection
from uuid import UUID

from shoal import Client
from shoal.backend import Backend, DeadLetterFilter, Outcome, WorkerIdentity
from tests.apps.recorder import app

ME = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("echo",),
                    concurrency=10, max_attempts=(1,))


async def run_once(backend: Backend, *, fail: Collection[str] = ()) -> list[str]:
    """Claim every ready step, finish it (failing those named in `fail`); return names."""
    claimed = await backend.claim(ME, 10, 60)
    await backend.report([
        Outcome(t.id, t.lease_token, t.workflow_id, error="boom" if t.step in fail else None,
                result_json=f'"{t.step}"') for t in claimed])
    return sorted(t.step or "" for t in claimed)


async def states(client: Client, workflow_id: UUID) -> tuple[str, dict[str, str]]:
    status = await client.status(workflow_id)
    return status.state, {s.name: s.state for s in status.steps}


async def test_revived_workflow_runs_the_steps_its_failure_cancelled(backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "x", "task": "echo"}, {"name": "s", "task": "echo"},
        {"name": "y", "task": "echo", "dependsOn": ["x"]},
        {"name": "z", "task": "echo", "dependsOn": ["x", "s"]},
    ]}, name="w")
    assert await run_once(backend, fail={"x"}) == ["s", "x"]
    assert await states(client, workflow_id) == (
        "failed", {"x": "dead", "s": "succeeded", "y": "cancelled", "z": "cancelled"})
    assert await client.retry_dead_letters(DeadLetterFilter(workflow_id=workflow_id)) == 1
    assert await states(client, workflow_id) == (
        "running", {"x": "ready", "s": "succeeded", "y": "blocked", "z": "blocked"})
    assert await run_once(backend) == ["x"]
    assert await run_once(backend) == ["y", "z"]
    state, steps = await states(client, workflow_id)
    assert state == "succeeded" and set(steps.values()) == {"succeeded"}


async def test_retrying_one_of_two_dead_steps_runs_it_then_fails_again(
        backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "x", "task": "echo"}, {"name": "q", "task": "echo"},
        {"name": "y", "task": "echo", "dependsOn": ["x", "q"]},
    ]}, name="w")
    await run_once(backend, fail={"x", "q"})
    assert await states(client, workflow_id) == (
        "failed", {"x": "dead", "q": "dead", "y": "cancelled"})
    x_id = await backend.pool.fetchval(
        "SELECT id FROM shoal.tasks WHERE workflow_id = $1 AND step = 'x'", workflow_id)
    assert await client.retry_dead_letters(DeadLetterFilter(task_id=x_id)) == 1
    assert await run_once(backend) == ["x"]  # the retried step runs
    status = await client.status(workflow_id)
    assert (status.state, status.message) == ("failed", "step 'q' failed: boom")
    assert {s.name: s.state for s in status.steps} == {"x": "succeeded", "q": "dead",
                                                       "y": "cancelled"}
