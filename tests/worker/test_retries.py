"""Failures in a real worker: retries back off exponentially, then the task is a dead
letter; `shoal dead-letters list|count|retry` and the client API filter by task,
namespace and workflow; a retried task runs again and a failed workflow revives.
Also per-task timeouts, permanent errors, results that are not JSON, sync handlers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shoal import Client
from shoal.backend import Backend, DeadLetterFilter
from tests.apps.recorder import app, runs
from tests.support import cli, eventually, running_worker


async def states_of(backend: Backend, ids: list[int]) -> list[str]:
    return [(await backend.get_task(i)).state for i in ids]


def all_in(*wanted: str) -> Any:
    async def check(backend: Backend, ids: list[int]) -> bool:
        return all(s in wanted for s in await states_of(backend, ids))
    return check


async def test_retries_back_off_then_dead_letter_then_retry(
        dsn: str, backend: Backend, log: str, tmp_path: Path) -> None:
    ok_flag = str(tmp_path / "ok")
    run = {"log": log, "ok_flag": ok_flag}
    client = Client(backend, app)
    other = Client(backend, app, namespace="other")
    a, b = await client.enqueue("flaky", run), await client.enqueue("flaky", run)
    p = await client.enqueue("permanent", run)
    o = await other.enqueue("flaky", run)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "x", "task": "flaky", "input": run},
        {"name": "y", "task": "record", "dependsOn": ["x"], "input": {"log": log}},
    ]}, name="fragile")
    x_id = await backend.pool.fetchval(
        "SELECT id FROM shoal.tasks WHERE workflow_id = $1 AND step = 'x'", workflow_id)
    every = [a, b, p, o, x_id]
    dead = all_in("dead")
    async with running_worker(app, dsn), running_worker(app, dsn, namespace="other"):
        await eventually(lambda: dead(backend, every), within=30, what="five dead letters")
        assert (await client.status(workflow_id)).state == "failed"

        # flaky has retries=2: three attempts, each after the backoff (base 0.2 s,
        # equal jitter: between half the nominal 0.2 s, then 0.4 s, and all of it;
        # the upper bounds leave 0.8 s for scheduling on a loaded machine)
        events = runs(log)
        for task_id in (a, b, o):
            mine = [e for e in events if e["task"] == task_id]
            assert [(e["event"], e["attempt"]) for e in mine] == [
                ("start", 1), ("failed", 1), ("start", 2), ("failed", 2), ("start", 3),
                ("failed", 3)]
            assert 0.1 <= mine[2]["t"] - mine[1]["t"] <= 0.2 + 0.8
            assert 0.2 <= mine[4]["t"] - mine[3]["t"] <= 0.4 + 0.8
            task = await backend.get_task(task_id)
            assert (task.attempts, task.max_attempts) == (3, 3)
            assert task.error == f"RuntimeError: flaky task {task_id} failed attempt 3"
        permanent = await backend.get_task(p)  # a PermanentError skips the retries
        assert (permanent.attempts, permanent.max_attempts, permanent.error) == (
            1, 6, "PermanentError: this input can never work")
        assert [e["attempt"] for e in events if e["task"] == x_id] == [1, 1]  # retries: 0
        status = await client.status(workflow_id)
        assert status.message == f"step 'x' failed: RuntimeError: flaky task {x_id} failed " \
                                 "attempt 1"
        assert [(s.name, s.state) for s in status.steps] == [("x", "dead"), ("y", "cancelled")]

        # list and count, by the CLI and the client, with every filter
        async def count(*filters: str) -> int:
            result = await cli("dead-letters", "count", "--dsn", dsn, *filters)
            assert result.returncode == 0, result.stderr
            return int(result.stdout)

        assert await count() == 5
        assert await count("--task", "flaky") == 4
        assert await count("--task", "permanent") == 1
        assert await count("--namespace", "other") == 1
        assert await count("--namespace", "default", "--task", "flaky") == 3
        assert await count("--workflow", str(workflow_id)) == 1
        assert await count("--id", str(p)) == 1
        assert await count("--task", "nothing-like-this") == 0
        listed = await cli("dead-letters", "list", "--dsn", dsn, "--namespace", "other")
        assert listed.stdout.splitlines() == [
            f"{o}\tother\tflaky\tattempts 3/3\tRuntimeError: flaky task {o} failed attempt 3"]
        as_json = await cli("dead-letters", "list", "--dsn", dsn, "-o", "json",
                            "--workflow", str(workflow_id))
        (letter,) = json.loads(as_json.stdout)
        assert (letter["id"], letter["step"], letter["workflow_id"]) == (
            x_id, "x", str(workflow_id))
        assert await client.count_dead_letters() == 5
        flaky = await client.dead_letters(DeadLetterFilter(task_name="flaky"), limit=10)
        assert {d.id for d in flaky} == {a, b, o, x_id}
        finished = [d.finished_at for d in flaky]
        assert finished == sorted(finished, reverse=True)  # newest first
        assert len(await client.dead_letters(limit=2)) == 2
        assert [d.id for d in await client.dead_letters(
            DeadLetterFilter(namespace="other"))] == [o]

        # retry: one by filter (CLI), one by id (client), one workflow (CLI)
        await asyncio.to_thread(Path(ok_flag).touch)
        retried = await cli("dead-letters", "retry", "--dsn", dsn, "--namespace", "other")
        assert retried.stdout.strip() == "retried 1"
        assert await client.retry_dead_letters(DeadLetterFilter(task_id=a)) == 1
        retried = await cli("dead-letters", "retry", "--dsn", dsn, "--workflow",
                            str(workflow_id))
        assert retried.stdout.strip() == "retried 1"
        done = all_in("succeeded")
        await eventually(lambda: done(backend, [a, o, x_id]), what="the retried tasks")
        status = await _settled(client, workflow_id)  # it runs its remaining step y
    assert status.state == "succeeded", status
    assert [(s.name, s.state) for s in status.steps] == [("x", "succeeded"),
                                                          ("y", "succeeded")]
    for task_id in (a, o):
        task = await backend.get_task(task_id)
        assert (task.attempts, task.result, task.error) == (1, "recovered", None)
    assert await states_of(backend, [b, p]) == ["dead", "dead"]  # not retried: still dead
    assert await client.count_dead_letters() == 2
    # each retried task ran once more; the others did not run again
    events = runs(log)
    assert [e["event"] for e in events if e["task"] in (a, o, x_id)].count("done") == 3
    assert len([e for e in events if e["task"] == b]) == 6


async def _settled(client: Client, workflow_id: Any) -> Any:
    async def check() -> Any:
        status = await client.status(workflow_id)
        return status if status.state != "running" else None
    return await eventually(check, within=20, what="the revived workflow to finish")


async def test_timeout_fails_the_attempt_and_is_retried(dsn: str, backend: Backend,
                                                        log: str) -> None:
    client = Client(backend, app)
    task_id = await client.enqueue("stall", {"log": log, "sleep": 600})
    dead = all_in("dead")
    async with running_worker(app, dsn):
        await eventually(lambda: dead(backend, [task_id]), what="the stalled task to die")
    task = await backend.get_task(task_id)
    assert (task.attempts, task.error) == (2, "timed out after 0.3s")  # retries=1
    assert [(e["event"], e["attempt"]) for e in runs(log)] == [("start", 1), ("start", 2)]


async def test_per_task_timeout_overrides_the_definition(dsn: str, backend: Backend,
                                                         log: str) -> None:
    client = Client(backend, app)
    task_id = await client.enqueue("record", {"log": log, "sleep": 600}, timeout="200ms",
                                   retries=0)
    dead = all_in("dead")
    async with running_worker(app, dsn):
        await eventually(lambda: dead(backend, [task_id]), what="the task to time out")
    task = await backend.get_task(task_id)
    assert (task.attempts, task.max_attempts, task.error) == (1, 1, "timed out after 0.2s")
    assert [e["event"] for e in runs(log)] == ["start", "cancelled"]


async def test_result_that_is_not_json_is_a_dead_letter(dsn: str, backend: Backend,
                                                        log: str) -> None:
    task_id = await Client(backend, app).enqueue("unjsonable", {"log": log})
    dead = all_in("dead")
    async with running_worker(app, dsn):
        await eventually(lambda: dead(backend, [task_id]), what="the task to fail")
    error = (await backend.get_task(task_id)).error or ""
    assert error.startswith("result is not JSON: Object of type object")


async def test_sync_handlers_run_in_worker_threads(dsn: str, backend: Backend,
                                                   log: str) -> None:
    client = Client(backend, app)
    ids = [await client.enqueue("record-sync", {"log": log, "sleep": 0.2}) for _ in range(4)]
    done = all_in("succeeded")
    async with running_worker(app, dsn, concurrency=4):
        await eventually(lambda: done(backend, ids), what="the sync tasks")
    threads = {(await backend.get_task(i)).result["thread"] for i in ids}
    assert all(t.startswith("shoal-task") for t in threads)


async def test_sync_handler_is_told_to_stop_when_it_times_out(dsn: str, backend: Backend,
                                                              log: str) -> None:
    task_id = await Client(backend, app).enqueue("record-sync", {"log": log, "sleep": 600},
                                                 timeout="300ms", retries=0)
    dead = all_in("dead")
    async with running_worker(app, dsn):
        await eventually(lambda: dead(backend, [task_id]), what="the task to time out")
        assert (await backend.get_task(task_id)).error == "timed out after 0.3s"
        # the thread cannot be killed; the cooperative handler sees ctx.cancelled
        await eventually(lambda: _has_event(log, "cancelled"), what="the handler to stop")
    assert [e["event"] for e in runs(log)] == ["start", "cancelled"]


async def _has_event(log: str, event: str) -> bool:
    return any(e["event"] == event for e in runs(log))


async def test_delayed_tasks_start_when_due_without_polling(dsn: str, backend: Backend,
                                                            log: str) -> None:
    """Delayed tasks wait as `delayed`, out of the claims' way; the maintenance leader's
    scheduler makes each ready as it comes due and wakes the workers: each starts at
    its run_at, though the worker polls only every 30 s."""
    client = Client(backend, app)
    async with running_worker(app, dsn, poll_interval=30.0):
        ids = [await client.enqueue("record", {"log": log}, delay=f"{d}s")
               for d in (1.5, 2.0, 3.0)]
        assert await states_of(backend, ids) == ["delayed"] * 3
        await eventually(lambda: all_in("succeeded")(backend, ids), within=30,
                         what="the delayed tasks")
    starts = {e["task"]: e["t"] for e in runs(log) if e["event"] == "start"}
    for task_id in ids:
        due = (await backend.get_task(task_id)).run_at.timestamp()
        assert 0 <= starts[task_id] - due <= 0.25, (task_id, starts[task_id] - due)
