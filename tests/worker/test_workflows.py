"""Workflows run by a real in-process Worker: outputs flow through references, an
unresolvable reference fails the workflow, pause lets the running step finish and
starts nothing new, resume continues, cancel stops a running step cooperatively, and
every command is recorded, idempotent and refused when the state forbids it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from shoal import Client, InvalidCommand
from shoal.backend import Backend, WorkflowStatus
from tests.apps.recorder import app, runs
from tests.support import eventually, running_worker, task_in


async def status_when(client: Client, workflow_id: UUID, *states: str,
                      within: float = 30) -> WorkflowStatus:
    async def check() -> WorkflowStatus | None:
        status = await client.status(workflow_id)
        return status if status.state in states else None

    return await eventually(check, within=within, what=f"workflow {' or '.join(states)}")


def steps(status: WorkflowStatus) -> dict[str, Any]:
    return {s.name: (s.state, s.output) for s in status.steps}


async def test_outputs_flow_through_references(dsn: str, backend: Backend) -> None:
    client = Client(backend, app)
    spec = """
    input: {k: 10}
    steps:
      - {name: first, task: add, input: {a: 1, b: 2}}
      - name: second
        task: add
        dependsOn: [first]
        input: {a: "${steps.first.output.sum}", b: "${workflow.input.k}"}
      - name: report
        task: echo
        dependsOn: [second]
        input: {text: "total=${steps.second.output.sum}", first: "${steps.first.output}"}
    """
    workflow_id = await client.submit_workflow(spec, name="sums", key="sums-1")
    assert await client.submit_workflow(spec, name="sums", key="sums-1") == workflow_id
    async with running_worker(app, dsn):
        status = await status_when(client, workflow_id, "succeeded", "failed")
    assert status.state == "succeeded" and status.finished_at is not None
    assert steps(status) == {
        "first": ("succeeded", {"sum": 3}),
        "second": ("succeeded", {"sum": 13}),
        "report": ("succeeded", {"text": "total=13", "first": {"sum": 3}}),
    }
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workflows") == 1


async def test_unresolvable_reference_fails_the_workflow_clearly(dsn: str,
                                                               backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "a", "task": "echo", "input": {"x": 1}},
        {"name": "b", "task": "echo", "dependsOn": ["a"], "input": "${steps.a.output.y}"},
        {"name": "c", "task": "echo", "dependsOn": ["b"]},
    ]}, name="broken")
    async with running_worker(app, dsn):
        status = await status_when(client, workflow_id, "succeeded", "failed")
    assert status.state == "failed"
    assert status.message == ("step 'b' cannot start: reference ${steps.a.output.y} does not "
                              "resolve: no 'y'")
    assert steps(status) == {"a": ("succeeded", {"x": 1}), "b": ("cancelled", None),
                             "c": ("cancelled", None)}


async def test_pause_finishes_the_running_step_and_starts_nothing_until_resume(
        dsn: str, backend: Backend, log: str, tmp_path: Path) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "a", "task": "record", "input": {"log": log, "sleep": 1.0}},
        {"name": "b", "task": "record", "dependsOn": ["a"], "input": {"log": log}},
    ]}, name="pausable")
    probe_log = str(tmp_path / "probe.jsonl")
    async with running_worker(app, dsn):
        await eventually(lambda: runs(log), what="step a to start")
        paused = await client.pause(workflow_id, actor="alice", reason="maintenance")
        assert (paused.command, paused.actor, paused.reason, paused.applied) == (
            "pause", "alice", "maintenance", True)
        await status_when(client, workflow_id, "paused")
        # the running step finishes; its successor becomes ready but is not started
        await eventually(lambda: steps_of(backend, workflow_id, "a", "succeeded"),
                         what="step a to finish while paused")
        # A task enqueued after b was ready (so behind it in line) runs: the worker
        # claimed after the pause and passed b over.
        probe = await client.enqueue("record", {"log": probe_log})
        await eventually(lambda: task_in(backend, probe, "succeeded"), what="the probe")
        status = await client.status(workflow_id)
        assert status.state == "paused"
        assert [(s.name, s.state, s.attempts) for s in status.steps] == [
            ("a", "succeeded", 1), ("b", "ready", 0)]
        assert [r["event"] for r in runs(log)] == ["start", "done"]
        resumed = await client.resume(workflow_id, actor="bob")
        assert resumed.applied
        status = await status_when(client, workflow_id, "succeeded")
    assert [s.state for s in status.steps] == ["succeeded", "succeeded"]
    assert [(c.command, c.actor, c.reason, c.applied) for c in status.commands] == [
        ("pause", "alice", "maintenance", True), ("resume", "bob", "", True)]
    assert all(c.created_at <= status.finished_at for c in status.commands)  # type: ignore[operator]


async def test_cancel_stops_running_steps_cooperatively(dsn: str, backend: Backend,
                                                        log: str) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "a", "task": "record", "input": {"log": log, "sleep": 600}},
        {"name": "s", "task": "record-sync", "input": {"log": log, "sleep": 600}},
        {"name": "b", "task": "record", "dependsOn": ["a"], "input": {"log": log}},
    ]}, name="cancellable")
    async with running_worker(app, dsn, claim_ttl=2.0):
        await eventually(lambda: len(runs(log)) == 2, what="a and s to start")
        record = await client.cancel(workflow_id, actor="carol", reason="wrong input")
        assert record.applied
        status = await client.status(workflow_id)
        # b never started and is cancelled at once; a and s are told to stop
        assert status.state in ("cancelling", "cancelled")
        assert dict((s.name, s.state) for s in status.steps)["b"] == "cancelled"
        status = await status_when(client, workflow_id, "cancelled")
    assert [(s.name, s.state, s.error) for s in status.steps] == [
        ("a", "cancelled", "cancelled: the workflow was cancelled"),
        ("s", "cancelled", "cancelled: the workflow was cancelled"),
        ("b", "cancelled", "workflow cancelled by carol")]
    events = sorted((r["event"], r["attempt"]) for r in runs(log))
    assert events == [("cancelled", 1), ("cancelled", 1), ("start", 1), ("start", 1)]
    assert status.message == "cancel by carol: wrong input"
    with pytest.raises(InvalidCommand, match="cannot resume a workflow that is cancelled"):
        await client.resume(workflow_id)
    with pytest.raises(InvalidCommand, match="cannot pause a workflow that is cancelled"):
        await client.pause(workflow_id)
    again = await client.cancel(workflow_id, actor="carol")
    assert not again.applied
    commands = (await client.status(workflow_id)).commands
    assert [(c.command, c.applied) for c in commands] == [("cancel", True), ("cancel", False)]


async def test_commands_are_idempotent(backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}]}, name="idem")
    first = await backend.command(workflow_id, "pause", actor="op", reason="r",
                                  request_id="req-1")
    replay = await backend.command(workflow_id, "pause", actor="someone else",
                                   request_id="req-1")
    assert replay == first and first.applied
    repeat = await backend.command(workflow_id, "pause", actor="op")
    assert not repeat.applied and repeat.id != first.id
    assert (await client.status(workflow_id)).state == "paused"
    with pytest.raises(InvalidCommand, match="unknown command 'stop'"):
        await backend.command(workflow_id, "stop", actor="op")
    status = await client.status(workflow_id)
    assert [(c.command, c.request_id, c.applied) for c in status.commands] == [
        ("pause", "req-1", True), ("pause", None, False)]


async def steps_of(backend: Backend, workflow_id: UUID, step: str, state: str) -> bool:
    status = await backend.workflow_status(workflow_id)
    return any(s.name == step and s.state == state for s in status.steps)
