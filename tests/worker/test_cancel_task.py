"""Cancelling one task: ready and delayed tasks never run; a running one's handler is
told (async: cancelled; sync: `ctx.cancelled`), its late result is refused by the
fence, and the worker goes on; finished tasks and workflow steps are left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import Client, InvalidCommand, NotFound
from shoal.backend import Backend, Outcome, TaskFilter, WorkerIdentity
from tests.apps.recorder import app, runs
from tests.support import cli, eventually, running_worker, task_in

WORKER = WorkerIdentity(id="w1", namespace="default", tags=(), task_names=("echo",),
                        concurrency=4)


async def test_ready_and_delayed_tasks_never_run(dsn: str, backend: Backend, log: str) -> None:
    client = Client(backend, app)
    ready = await client.enqueue("record", {"log": log})
    delayed = await client.enqueue("record", {"log": log}, delay="1h")
    first = await client.cancel_task(ready, reason="not needed", actor="alice")
    second = await client.cancel_task(delayed)
    assert (first.previous_state, first.applied) == ("ready", True)
    assert (second.previous_state, second.applied) == ("delayed", True)
    row = await client.task(ready)
    assert row.state == "cancelled" and row.error == "cancelled by alice: not needed"
    assert row.finished_at is not None
    marker = await client.enqueue("record", {"log": log})
    async with running_worker(app, dsn):
        await eventually(lambda: task_in(backend, marker, "succeeded"), what="the marker task")
    assert [r["task"] for r in runs(log)] == [marker, marker]  # start, done: nothing else
    assert (await client.task(delayed)).state == "cancelled"


async def test_a_running_tasks_late_result_is_refused(backend: Backend) -> None:
    """The fence: the holder's report after the cancel changes nothing."""
    client = Client(backend)
    task_id = await client.enqueue("echo", {"x": 1})
    (claimed,) = await backend.claim(WORKER, 1, 30)
    result = await client.cancel_task(task_id, actor="bob")
    assert (result.previous_state, result.applied) == ("running", True)
    late = Outcome(task_id, claimed.lease_token, result_json='{"x": 1}')
    assert await backend.report([late], worker_id=WORKER.id) == set()
    failure = Outcome(task_id, claimed.lease_token, error="boom", retry_in_seconds=0.0)
    assert await backend.report([failure], worker_id=WORKER.id) == set()
    row = await client.task(task_id)
    assert (row.state, row.result, row.error) == ("cancelled", None, "cancelled by bob")
    # The holder's heartbeat learns it: still held (not a lost lease), withdrawn.
    reply = await backend.heartbeat(WORKER, [(task_id, claimed.lease_token)], 30, 1, False)
    assert task_id in reply.held and task_id in reply.withdrawn and task_id in reply.cancel
    assert await backend.claim(WORKER, 1, 30) == []  # never claimable again


@pytest.mark.parametrize("task", ["record", "record-sync"])
async def test_a_running_handler_is_told(dsn: str, backend: Backend, log: str, task: str,
                                         tmp_path: Path) -> None:
    client = Client(backend, app)
    async with running_worker(app, dsn) as worker:
        before = dict(worker.task_metrics[task].finished)  # shared by the process's workers
        task_id = await client.enqueue(task, {"log": log, "sleep": 60})
        await eventually(lambda: any(r["event"] == "start" for r in runs(log)),
                         what="the handler to start")
        result = await client.cancel_task(task_id)
        assert result.applied and result.previous_state == "running"
        await eventually(lambda: any(r["event"] == "cancelled" for r in runs(log)),
                         within=10, what="the handler to be told")
        await eventually(lambda: not worker.ledger.leases, what="the worker to forget the attempt")
        after = await client.enqueue("echo", "next")  # the worker goes on
        await eventually(lambda: task_in(backend, after, "succeeded"), what="the next task")
    assert [r["event"] for r in runs(log)] == ["start", "cancelled"]
    assert (await client.task(task_id)).state == "cancelled"
    finished = worker.task_metrics[task].finished
    assert {k: finished[k] - before[k] for k in finished} == {
        "succeeded": 0, "retried": 0, "dead": 0, "cancelled": 1}


async def test_finished_tasks_steps_and_unknown_ids(backend: Backend) -> None:
    client = Client(backend, app)
    task_id = await client.enqueue("echo", 1)
    (claimed,) = await backend.claim(WORKER, 1, 30)
    assert await backend.report([Outcome(task_id, claimed.lease_token, result_json="1")])
    result = await client.cancel_task(task_id)
    assert (result.previous_state, result.applied) == ("succeeded", False)
    assert (await client.task(task_id)).state == "succeeded"
    workflow_id = await client.submit_workflow({"steps": [{"name": "a", "task": "echo"}]},
                                               name="wf")
    (step,) = await client.tasks(TaskFilter(workflow_id=workflow_id))
    assert step.workflow_id == workflow_id and step.step == "a"
    with pytest.raises(InvalidCommand, match=f"cancel the workflow .shoal cancel {workflow_id}"):
        await client.cancel_task(step.id)
    with pytest.raises(NotFound, match="no task with id 999999"):
        await client.cancel_task(999999)


async def test_shoal_tasks_cancel(dsn: str, backend: Backend) -> None:
    client = Client(backend)
    task_id = await client.enqueue("echo", 1)
    done = await cli("tasks", "cancel", str(task_id), "--reason", "typo", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"task {task_id}: cancelled (was ready)\n"
    again = await cli("tasks", "cancel", str(task_id), "--dsn", dsn)
    assert again.stdout == f"task {task_id}: not cancelled, it is cancelled already\n"
    missing = await cli("tasks", "cancel", "424242", "--dsn", dsn)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == "shoal: error: no task with id 424242\n"
