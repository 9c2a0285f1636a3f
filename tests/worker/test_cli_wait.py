"""`shoal wait`: waits for tasks and workflows run by a real worker, prints how each
ended, and exits 0 (all succeeded), 3 (one failed or was cancelled) or 124 (the
timeout passed first); an unknown id or nothing to wait for is bad input (2)."""

from __future__ import annotations

import json

from shoal import Client
from shoal.backend import Backend
from tests.apps.recorder import app
from tests.support import cli, running_worker


async def test_wait_exits_0_when_every_task_and_workflow_succeeded(
        dsn: str, backend: Backend) -> None:
    client = Client(backend, app)
    first = await client.enqueue("add", {"a": 2, "b": 3})
    second = await client.enqueue("echo", "later", delay="1s")
    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo", "input": 7}]}, name="wf")
    async with running_worker(app, dsn):
        result = await cli("wait", str(first), str(second), "--workflow", str(workflow_id),
                           "--dsn", dsn, "--timeout", "30s", "-o", "json")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert json.loads(result.stdout) == [
        {"kind": "task", "id": first, "state": "succeeded", "timed_out": False,
         "result": {"sum": 5}, "error": None},
        {"kind": "task", "id": second, "state": "succeeded", "timed_out": False,
         "result": "later", "error": None},
        {"kind": "workflow", "id": str(workflow_id), "state": "succeeded", "timed_out": False,
         "result": {"a": 7}, "error": None}]
    table = await cli("wait", str(first), "--dsn", dsn)  # ended already: answered at once
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split() == [f"task/{first}", "succeeded", '{"sum":',
                                                    "5}"]


async def test_wait_exits_3_when_one_failed_and_124_on_timeout(
        dsn: str, backend: Backend, log: str) -> None:
    client = Client(backend, app)
    ok = await client.enqueue("echo", 1)
    dead = await client.enqueue("permanent", {"log": log})
    later = await client.enqueue("echo", 2, delay="1h")
    async with running_worker(app, dsn):
        failed = await cli("wait", str(ok), str(dead), str(later), "--timeout", "2s",
                           "--dsn", dsn)
        timed_out = await cli("wait", str(ok), str(later), "--timeout", "300ms", "--dsn", dsn,
                              "-o", "json")
    assert failed.returncode == 3, failed.stderr  # a failure outranks the timeout
    rows = [line.split(None, 2) for line in failed.stdout.splitlines()[1:]]
    assert rows == [[f"task/{ok}", "succeeded", "1"],
                    [f"task/{dead}", "dead", "PermanentError: this input can never work"],
                    [f"task/{later}", "delayed", "not ended at the timeout"]]
    assert timed_out.returncode == 124, timed_out.stderr
    assert [(o["id"], o["state"], o["timed_out"]) for o in json.loads(timed_out.stdout)] == [
        (ok, "succeeded", False), (later, "delayed", True)]

    await client.cancel_task(later, actor="carol")
    cancelled = await cli("wait", str(later), "--dsn", dsn)
    assert cancelled.returncode == 3
    assert cancelled.stdout.splitlines()[1].split(None, 2) == [
        f"task/{later}", "cancelled", "cancelled by carol"]


async def test_wait_refuses_unknown_ids_and_nothing_to_wait_for(
        dsn: str, backend: Backend) -> None:
    task_id = await Client(backend, app).enqueue("echo", 1)
    unknown = await cli("wait", str(task_id), "424242", "--dsn", dsn, "--timeout", "5s")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == "shoal: error: no task with id 424242\n"
    nothing = await cli("wait", "--dsn", dsn)
    assert (nothing.returncode, nothing.stderr) == (
        2, "shoal: error: name the task ids to wait for, or --workflow IDs\n")
