"""Rows written by a newer version during a rolling upgrade (issue 18): what this version
can read runs, what it cannot fails its own workflow or task with a reason, and the
worker serving beside it never exits.

- A stored workflow spec with keys this version does not know (top level and in a step)
  runs to `succeeded`.
- A stored spec this version cannot read (a step list that is a string, a `dependsOn`
  that is a number) fails that workflow with `UnreadableStoredSpec: ...`: the step that
  ran is recorded, the rest are cancelled, each ordinary task beside it runs once, an
  untouched workflow finishes, and the `shoal worker` process keeps running.
- A stored payload its handler's model refuses (a key the model forbids, a wrong type)
  is that task's dead letter, saying what is wrong; a lenient model just ignores the key.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any
from uuid import UUID

import pytest

from shoal import Client, Job
from shoal.backend import Backend, DeadLetterFilter, WorkflowStatus
from tests.apps.recorder import app, runs
from tests.support import (
    NEWER_SPEC,
    UNREADABLE_SPECS,
    Spawner,
    eventually,
    running_worker,
    task_in,
)


async def finished(client: Client, workflow_id: UUID, within: float = 30) -> WorkflowStatus:
    async def check() -> WorkflowStatus | None:
        status = await client.status(workflow_id)
        return status if status.finished_at is not None else None

    return await eventually(check, within=within, what=f"workflow {workflow_id} to finish")


def chain(log: str, sleep: float = 0.0) -> dict[str, Any]:
    """Three `record` steps, each after the one before."""
    run = {"log": log, "sleep": sleep}
    return {"steps": [
        {"name": "first", "task": "record", "input": run},
        {"name": "second", "task": "record", "dependsOn": ["first"], "input": run},
        {"name": "third", "task": "record", "dependsOn": ["second"], "input": run},
    ]}


async def test_a_newer_versions_spec_runs_to_the_end(dsn: str, backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"input": {"k": 10}, "steps": [
        {"name": "first", "task": "add", "input": {"a": 1, "b": 2}},
        {"name": "second", "task": "add", "dependsOn": ["first"],
         "input": {"a": "${steps.first.output.sum}", "b": "${workflow.input.k}"}},
        {"name": "report", "task": "echo", "dependsOn": ["second"],
         "input": "total=${steps.second.output.sum}"},
    ]}, name="newer")
    await backend.pool.execute(NEWER_SPEC, workflow_id)
    async with running_worker(app, dsn) as worker:
        status = await finished(client, workflow_id)
        assert worker.supervisor.failed is None and worker.ready()
    assert (status.state, status.message) == ("succeeded", None)
    assert [(s.name, s.output) for s in status.steps] == [
        ("first", {"sum": 3}), ("second", {"sum": 13}), ("report", "total=13")]


@pytest.mark.parametrize("case", sorted(UNREADABLE_SPECS))
async def test_an_unreadable_spec_fails_its_workflow_and_nothing_else(
        dsn: str, backend: Backend, spawn: Spawner, log: str, case: str) -> None:
    update, message = UNREADABLE_SPECS[case]
    client = Client(backend, app)
    plain = await client.enqueue_many([Job("record", {"log": log, "sleep": 0.2})] * 30)
    unreadable = await client.submit_workflow(chain(log, sleep=0.3), name="unreadable")
    untouched = await client.submit_workflow(chain(log), name="untouched")
    await backend.pool.execute(update, unreadable)
    worker = await spawn.worker(dsn, "--concurrency", "4")

    status = await finished(client, unreadable)
    assert (status.state, status.message) == ("failed", message)
    assert [(s.name, s.state, s.error) for s in status.steps] == [
        ("first", "succeeded", None),  # the report that found the spec unreadable
        ("second", "cancelled", f"workflow failed: {message}"),
        ("third", "cancelled", f"workflow failed: {message}")]
    assert (await finished(client, untouched)).state == "succeeded"
    for task_id in plain:
        await eventually(lambda t=task_id: task_in(backend, t, "succeeded"),
                         what=f"task {task_id} to succeed")
    starts = Counter(e["task"] for e in runs(log) if e["event"] == "start")
    assert {starts[t] for t in plain} == {1}  # each ran once: nothing was released

    assert worker.proc.returncode is None, worker.output()
    output = worker.output()
    assert "Traceback" not in output and "failed; handing back" not in output, output
    worker.signal(signal.SIGTERM)
    assert await worker.wait(within=30) == 0


async def test_a_payload_the_handlers_model_refuses_is_its_own_dead_letter(
        dsn: str, backend: Backend) -> None:
    newer = Client(backend)  # a producer that does not know this version's models
    async with running_worker(app, dsn, concurrency=2) as worker:
        extra = await newer.enqueue("add-strict", {"a": 1, "b": 2, "carry": True})
        wrong = await newer.enqueue("add", {"a": "one", "b": 2})
        ignored = await newer.enqueue("add", {"a": 1, "b": 2, "carry": True})
        for task_id, state in ((extra, "dead"), (wrong, "dead"), (ignored, "succeeded")):
            await eventually(lambda t=task_id, s=state: task_in(backend, t, s),
                             what=f"task {task_id} {state}")
        after = await newer.enqueue("add-strict", {"a": 2, "b": 3})  # the worker goes on
        await eventually(lambda: task_in(backend, after, "succeeded"), what="the next task")
        assert worker.supervisor.failed is None and worker.ready()

    assert (await backend.get_task(ignored)).result == {"sum": 3}  # the model's own choice
    dead = {d.id: d for d in await backend.dead_letters(DeadLetterFilter())}
    assert set(dead) == {extra, wrong}
    assert dead[extra].attempts == 1 and dead[extra].error is not None
    assert dead[extra].error.startswith(
        "InvalidInput: payload for task 'add-strict' is invalid: 1 validation error for "
        "StrictAddInput\ncarry\n  Extra inputs are not permitted")
    assert dead[extra].payload == {"a": 1, "b": 2, "carry": True}  # kept as it came
    assert dead[wrong].attempts == 1 and dead[wrong].error is not None
    assert dead[wrong].error.startswith(
        "InvalidInput: payload for task 'add' is invalid: 1 validation error for AddInput\n"
        "a\n  Input should be a valid integer")
