"""`Client.wait`: woken by the task's completion notification (never by polling), it
returns the result or raises the recorded error, the cancellation or a timeout; the
same for workflows. Tasks nobody waits for send no notification."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from shoal import Client, NotFound, TaskFailed, WaitTimeout, WorkflowFailed
from shoal.backend import Backend, Outcome, TaskFilter, WorkerIdentity
from tests.apps.recorder import app, runs
from tests.support import eventually, running_worker, waited_for

WORKER = WorkerIdentity(id="w1", namespace="default", tags=(), task_names=("echo",),
                        concurrency=4, max_attempts=(1,))


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[Client]:
    """A client on the test's backend; closing it stops its listener too."""
    client = Client(backend, app)
    yield client
    await client.close()


class Reads:
    """Counts the state reads of waits (real calls, counted): polling would show here."""

    def __init__(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.answered = 0
        read = backend.read_watched

        async def counted(task_id: int) -> tuple[str, object, str | None]:
            self.count += 1
            answer = await read(task_id)
            self.answered += 1
            return answer

        monkeypatch.setattr(backend, "read_watched", counted)


async def test_wait_returns_the_result_within_milliseconds(
        dsn: str, backend: Backend, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_worker(app, dsn):
        task_id = await client.enqueue("add", {"a": 2, "b": 3})
        assert await client.wait(task_id, timeout=30) == {"sum": 5}
        # A task that ends later: wait sleeps until the notification, then reads once.
        reads = Reads(backend, monkeypatch)
        slow = await client.enqueue("echo", "later", delay="1s")
        assert await client.wait(slow, timeout=30) == "later"
        returned = time.time()
        finished = (await client.task(slow)).finished_at
        assert finished is not None
        latency = returned - finished.timestamp()
        print(f"wait returned {latency * 1000:.1f} ms after the task finished")
        # Generous for a loaded 2-core machine; a poll every second would miss it often.
        assert latency < 0.5
        assert reads.count == 2  # the state before sleeping, and after the notification


async def test_wait_raises_the_dead_letters_error(dsn: str, client: Client, log: str) -> None:
    async with running_worker(app, dsn):
        task_id = await client.enqueue("permanent", {"log": log})
        with pytest.raises(TaskFailed) as failed:
            await client.wait(task_id, timeout=30)
    assert failed.value.state == "dead" and failed.value.task_id == task_id
    assert failed.value.error == "PermanentError: this input can never work"
    # Already finished: answered at once, from the row.
    with pytest.raises(TaskFailed, match="is dead: PermanentError"):
        await client.wait(task_id, timeout=0.001)


async def test_wait_raises_when_cancelled_and_on_timeout(client: Client) -> None:
    task_id = await client.enqueue("echo", 1)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=f"after 0.3s: task {task_id} is still ready"):
        await client.wait(task_id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    waiting = asyncio.create_task(client.wait(task_id, timeout=30))
    await eventually(lambda: waited_for(client.backend, task_id), what="the wait to start")
    await client.cancel_task(task_id, actor="carol")
    with pytest.raises(TaskFailed, match=f"task {task_id} is cancelled: cancelled by carol"):
        await waiting
    with pytest.raises(NotFound):
        await client.wait(123456, timeout=1)


async def test_a_wait_removes_its_registration_however_it_ends(
        backend: Backend, client: Client) -> None:
    """Answered, timed out, cancelled or not found: no registration is left behind."""
    async def registrations() -> int:
        return int(await backend.pool.fetchval("SELECT count(*) FROM shoal.waits"))

    task_id = await client.enqueue("echo", "x")
    with pytest.raises(WaitTimeout):
        await client.wait(task_id, timeout=0.2)
    await eventually(lambda: _equals(registrations(), 0), what="the timed-out wait's removal")
    waiting = asyncio.create_task(client.wait(task_id, timeout=30))
    await eventually(lambda: waited_for(backend, task_id), what="the wait to start")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await eventually(lambda: _equals(registrations(), 0), what="the cancelled wait's removal")
    with pytest.raises(NotFound):
        await client.wait(task_id + 1, timeout=1)
    waiting = asyncio.create_task(client.wait(task_id, timeout=30))
    await eventually(lambda: waited_for(backend, task_id), what="the wait to start")
    (claimed,) = await backend.claim(WORKER, 1, 30)
    await backend.report([Outcome(claimed.id, claimed.lease_token, result_json='"x"')])
    assert await waiting == "x"
    await eventually(lambda: _equals(registrations(), 0), what="the answered wait's removal")


async def test_many_waits_share_one_listener(backend: Backend, client: Client) -> None:
    ids = [await client.enqueue("echo", i) for i in range(20)]
    waits = [asyncio.create_task(client.wait(i, timeout=30)) for i in ids]
    await eventually(lambda: waited_for(backend, *ids), what="every wait to start")
    claimed = await backend.claim(WORKER, 20, 30)
    accepted = await backend.report([Outcome(t.id, t.lease_token, result_json=str(t.payload))
                                     for t in claimed])
    assert accepted == set(ids)
    assert await asyncio.gather(*waits) == list(range(20))
    listening = await backend.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'")
    assert listening == 1


async def test_unwaited_tasks_notify_nobody(dsn: str, backend: Backend, client: Client) -> None:
    """The hot path pays nothing: only a task someone waits for notifies its end."""
    heard: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.add_listener(backend.queries.finished_channel,
                                lambda *args: heard.append(args[3]))
        plain = await client.enqueue("echo", 1)
        waited = await client.enqueue("echo", 2)
        waiting = asyncio.create_task(client.wait(waited, timeout=30))
        await eventually(lambda: waited_for(backend, waited), what="the wait to start")
        claimed = await backend.claim(WORKER, 2, 30)
        await backend.report([Outcome(t.id, t.lease_token) for t in claimed])
        await waiting
        await conn.execute("SELECT 1")
        assert heard == [str(waited)] and plain not in map(int, heard)
    finally:
        await conn.close()


async def test_wait_for_a_workflow(dsn: str, client: Client) -> None:
    spec = {"steps": [{"name": "a", "task": "add", "input": {"a": 1, "b": 1}},
                      {"name": "b", "task": "add", "dependsOn": ["a"],
                       "input": {"a": "${steps.a.output.sum}", "b": 40}}]}
    good = await client.submit_workflow(spec, name="good")
    bad = await client.submit_workflow({"steps": [{"name": "p", "task": "permanent",
                                                   "input": {"log": "/dev/null"}}]}, name="bad")
    async with running_worker(app, dsn):
        status = await client.wait_workflow(good, timeout=30)
        with pytest.raises(WorkflowFailed) as failed:
            await client.wait_workflow(bad, timeout=30)
    assert status.state == "succeeded"
    assert [s.output for s in status.steps] == [{"sum": 2}, {"sum": 42}]
    assert failed.value.state == "failed" and "PermanentError" in (failed.value.message or "")


async def test_every_way_a_task_ends_wakes_its_waiter(backend: Backend, client: Client) -> None:
    """Success riding on a claim, death by failure or by lease expiry, cancellation with
    the workflow: each statement that ends a waited task notifies; a retry does not."""
    async def ended(task_id: int, end: Callable[[], Awaitable[object]]) -> Any:
        waiting = asyncio.create_task(client.wait(task_id, timeout=10))
        await eventually(lambda: waited_for(backend, task_id), what="the wait to start")
        await end()
        return await waiting

    ids = [await client.enqueue("echo", i, retries=1) for i in range(3)]
    claimed = {t.id: t for t in await backend.claim(WORKER, 3, 30)}
    first = claimed[ids[0]]
    assert await ended(ids[0], lambda: backend.claim_and_complete(
        WORKER, 1, 30, [Outcome(first.id, first.lease_token, result_json='"rode"')])) == "rode"

    second = claimed[ids[1]]
    retrying = asyncio.create_task(client.wait(ids[1], timeout=10))
    await eventually(lambda: waited_for(backend, ids[1]), what="the wait to start")
    await backend.report([Outcome(second.id, second.lease_token, error="once",
                                  retry_in_seconds=0.0)])
    await asyncio.sleep(0.3)
    assert not retrying.done()  # ready again: not an end
    (again,) = [t for t in await backend.claim(WORKER, 5, 30) if t.id == ids[1]]
    await backend.report([Outcome(again.id, again.lease_token, error="twice")])
    with pytest.raises(TaskFailed, match="is dead: twice"):
        await retrying

    third = claimed[ids[2]]
    await backend.pool.execute("UPDATE shoal.tasks SET expiries = max_expiries, "
                               "lease_expires_at = now() - interval '1 second' WHERE id = $1",
                               third.id)
    with pytest.raises(TaskFailed, match="lease expired"):
        await ended(ids[2], backend.reap_expired)

    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}]}, name="cancelled")
    (step,) = await backend.list_tasks(TaskFilter(workflow_id=workflow_id))
    with pytest.raises(TaskFailed, match="cancelled"):
        await ended(step.id, lambda: client.cancel(workflow_id))


async def test_a_wait_does_not_delay_the_task_it_waits_for(
        dsn: str, backend: Backend, client: Client, log: str) -> None:
    """Issue 18: a transactional enqueue followed at once by `wait`. The wait must not
    lock the task's row while the woken worker claims it (the claim skips locked rows
    and the worker would park until its next poll, 5 s here): every handler starts
    well within half the poll interval of the commit."""
    caller = await asyncpg.connect(dsn)
    committed: dict[int, float] = {}
    try:
        async with running_worker(app, dsn, poll_interval=5.0):
            await eventually(lambda: backend.pool.fetchval(
                "SELECT count(*) FROM shoal.workers WHERE parked_channel IS NOT NULL"),
                what="the worker to park")
            for _ in range(20):
                async with caller.transaction():
                    task_id = await client.enqueue("record", {"log": log}, connection=caller)
                committed[task_id] = time.time()
                await client.wait(task_id, timeout=30)
    finally:
        await caller.close()
    started = {e["task"]: e["t"] for e in runs(log) if e["event"] == "start"}
    delays = {i: started[i] - committed[i] for i in committed}
    print("handler start after commit (ms):", sorted(round(d * 1000) for d in delays.values()))
    assert not {i: d for i, d in delays.items() if d > 2.5}


async def test_a_wait_begun_while_its_task_ends_is_answered(
        dsn: str, backend: Backend, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement that ends a task may have begun before a wait registered, and not
    see the registration (its snapshot is older). Here a report is held up on the row
    while the wait begins: the wait must still answer the outcome the report writes."""
    task_id = await client.enqueue("echo", 1)
    (claimed,) = await backend.claim(WORKER, 1, 30)
    reads = Reads(backend, monkeypatch)

    async def waiting_for_locks() -> int:
        return int(await backend.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))

    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT FROM shoal.tasks WHERE id = $1 FOR NO KEY UPDATE",
                                 task_id)
            reporting = asyncio.create_task(backend.report(
                [Outcome(claimed.id, claimed.lease_token, result_json='"ended"')]))
            await eventually(waiting_for_locks, what="the report to wait for the row")
            waiting = asyncio.create_task(client.wait(task_id, timeout=10))
            await eventually(lambda: reads.answered or _equals(waiting_for_locks(), 2),
                             what="the wait to read the task, or to wait for its row")
    finally:
        await holder.close()
    assert await reporting == {task_id}
    assert await waiting == "ended"


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
