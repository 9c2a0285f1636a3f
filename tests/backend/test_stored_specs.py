"""A stored workflow spec is read leniently and, when it still cannot be read, fails its
own workflow (real Postgres): a newer version's row (unknown keys, at the top and in a
step) runs on; a row this version cannot read (a step list of the wrong type, a
`dependsOn` that is a number) fails the workflow with `UnreadableStoredSpec: ...`, in the
same transaction that records the step report that found it, and nothing raises."""

from __future__ import annotations

from uuid import UUID

import pytest

from shoal import Client
from shoal.backend import Backend, Outcome, WorkerIdentity
from tests.apps.recorder import app
from tests.support import NEWER_SPEC, UNREADABLE_SPECS

ME = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("echo",),
                    concurrency=10, max_attempts=(1,))
SPEC = {"steps": [
    {"name": "first", "task": "echo", "input": "one"},
    {"name": "second", "task": "echo", "dependsOn": ["first"], "input": "${steps.first.output}"},
    {"name": "third", "task": "echo", "dependsOn": ["second"]},
]}



async def submit(backend: Backend) -> UUID:
    return await Client(backend, app).submit_workflow(SPEC, name="skew")


async def run_first(backend: Backend, workflow_id: UUID) -> set[int]:
    """Claim and report the root step; return the ids whose report was accepted."""
    [first] = await backend.claim(ME, 10, 60)
    return await backend.report([Outcome(first.id, first.lease_token, workflow_id,
                                         result_json='"one"')])


async def test_a_newer_versions_keys_are_ignored_and_kept(backend: Backend) -> None:
    workflow_id = await submit(backend)
    await backend.pool.execute(NEWER_SPEC, workflow_id)
    assert len(await run_first(backend, workflow_id)) == 1
    status = await backend.workflow_status(workflow_id)
    assert status.state == "running"
    assert [(s.name, s.state) for s in status.steps] == [
        ("first", "succeeded"), ("second", "ready"), ("third", "blocked")]
    stored = await backend.pool.fetchval("SELECT spec FROM shoal.workflows WHERE id = $1",
                                         workflow_id)
    assert stored["concurrencyPolicy"] == "Forbid"  # nothing rewrote the row
    assert stored["steps"][1]["cache"] == {"ttl": "1h"}


@pytest.mark.parametrize("case", sorted(UNREADABLE_SPECS))
async def test_an_unreadable_spec_fails_its_workflow_not_the_report(backend: Backend,
                                                                    case: str) -> None:
    update, message = UNREADABLE_SPECS[case]
    workflow_id = await submit(backend)
    await backend.pool.execute(update, workflow_id)
    assert len(await run_first(backend, workflow_id)) == 1  # the report is recorded
    status = await backend.workflow_status(workflow_id)
    assert (status.state, status.message) == ("failed", message)
    assert status.finished_at is not None
    assert [(s.name, s.state, s.output, s.error) for s in status.steps] == [
        ("first", "succeeded", "one", None),
        ("second", "cancelled", None, f"workflow failed: {message}"),
        ("third", "cancelled", None, f"workflow failed: {message}")]


async def test_an_expired_lease_of_an_unreadable_workflow_is_reaped(backend: Backend) -> None:
    """The maintenance leader's reaper advances workflows too: it must not raise either."""
    workflow_id = await submit(backend)
    await backend.pool.execute(UNREADABLE_SPECS["steps-a-string"][0], workflow_id)
    await backend.claim(ME, 10, 0.01)  # a lease that expires at once; one attempt allowed
    await backend.pool.execute("SELECT pg_sleep(0.05)")
    assert await backend.reap_expired() == 1
    status = await backend.workflow_status(workflow_id)
    assert status.state == "failed"
    assert status.message is not None and status.message.startswith("UnreadableStoredSpec: ")
