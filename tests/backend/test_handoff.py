"""Handoff to a parked worker: an enqueue of one due task leases it to an idle worker
that could claim it and sends it on that worker's channel; anything in doubt takes the
claim path (a ready task and the namespace NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from shoal.backend import Backend, ClaimedTask, NewTask, Outcome, Subscription, WorkerIdentity
from shoal.backend.driver import parse_handoff
from tests.support import eventually

CHANNEL = "shoal_handoff_test"
ME = WorkerIdentity(id="w1", namespace="default", tags=("gpu",), task_names=("t", "u"),
                    concurrency=4, max_attempts=(3, 1), max_expiries=(2, 0), channel=CHANNEL)


@pytest.fixture
async def handoffs(dsn: str) -> AsyncIterator[list[ClaimedTask]]:
    """What arrives on ME's channel (listening before the test begins)."""
    heard: list[ClaimedTask] = []
    subscription = Subscription(dsn, [CHANNEL], lambda _c, p: heard.append(parse_handoff(p)))
    listening = asyncio.create_task(subscription.run())
    try:
        await asyncio.wait_for(subscription.connected.wait(), 30)
        yield heard
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def park(backend: Backend, draining: bool = False) -> None:
    """Register ME and let a claim that finds nothing park it."""
    await backend.heartbeat(ME, [], 30, in_flight=0, draining=draining)
    assert await backend.claim(ME, 4, 30) == []


async def parked(backend: Backend) -> str | None:
    return await backend.pool.fetchval(
        "SELECT parked_channel FROM shoal.workers WHERE id = $1", ME.id)


async def test_one_due_task_is_leased_to_the_parked_worker(backend: Backend,
                                                           handoffs: list[ClaimedTask]) -> None:
    await park(backend)
    assert await parked(backend) == CHANNEL
    (task_id,) = await backend.enqueue([NewTask("t", {"x": 2**70 + 1}, tags=("gpu",),
                                                timeout_seconds=2.5)])
    (task,) = await eventually(lambda: list(handoffs), what="the handoff")
    assert (task.id, task.name, task.payload, task.attempt, task.lease_token) == \
        (task_id, "t", {"x": 2**70 + 1}, 1, 1)
    assert (task.max_attempts, task.timeout_seconds) == (3, 2.5)  # the worker's default
    row = await backend.get_task(task_id)
    assert (row.state, row.worker_id, row.lease_token, row.max_expiries) == (
        "running", "w1", 1, 2)
    assert await parked(backend) is None  # one handoff per park
    # the lease's expiry travels with it: the worker never starts it past that
    expires = await backend.pool.fetchval(
        "SELECT extract(epoch FROM lease_expires_at)::float8 FROM shoal.tasks WHERE id = $1",
        task_id)
    assert task.expires_at == pytest.approx(expires)
    (second,) = await backend.enqueue([NewTask("t")])
    assert (await backend.get_task(second)).state == "ready"
    # The lease fences as any claim's does: the token is accepted once; a re-report
    # under it is acknowledged and changes nothing; an older token is refused.
    assert await backend.report([Outcome(task_id, 1)], worker_id="w1") == {task_id}
    assert await backend.report([Outcome(task_id, 1, result_json='"again"')],
                                worker_id="w1") == {task_id}
    assert (await backend.get_task(task_id)).result is None
    assert await backend.report([Outcome(task_id, 0)], worker_id="w1") == set()
    # The next claim takes the ready task; finding fewer than asked parks again.
    assert [t.id for t in await backend.claim(ME, 4, 30)] == [second]
    assert await parked(backend) == CHANNEL


async def test_handoffs_go_to_the_worker_parked_longest(backend: Backend) -> None:
    """The finding: single enqueues always went to the parked worker the scan met first
    (one healthy worker got 0 of 570 handoffs in 60 s). Now each goes to the worker
    that has waited longest; a worker parked again queues behind the others."""
    fleet = [WorkerIdentity(id=f"w{i}", namespace="default", tags=(), task_names=("t",),
                            concurrency=4, max_attempts=(1,), channel=f"shoal_handoff_w{i}")
             for i in range(3)]
    for worker in fleet:
        await backend.heartbeat(worker, [], 30, in_flight=0, draining=False)

    async def handed_to() -> str | None:
        (task_id,) = await backend.enqueue([NewTask("t")])
        return (await backend.get_task(task_id)).worker_id

    for order in ([1, 2, 0], [0, 2, 1]):
        for i in order:  # park in this order (each claim finds nothing)
            assert await backend.claim(fleet[i], 4, 30) == []
        assert [await handed_to() for _ in order] == [fleet[i].id for i in order]
        assert await handed_to() is None  # nobody parked: the task waits, ready
        await backend.pool.execute("DELETE FROM shoal.tasks")


@pytest.mark.parametrize("tasks", [
    [NewTask("t", tags=("ssd",))],                 # tags not a subset of the worker's
    [NewTask("t", namespace="other")],             # another namespace
    [NewTask("v")],                                # a name the worker did not register
    [NewTask("t", delay_seconds=5)],               # not due yet
    [NewTask("t", idempotency_key="k")],           # may be a duplicate of an existing task
    [NewTask("t"), NewTask("t")],                  # a batch: workers claim it
    [NewTask("t", "x" * 8000)],                    # too big for a notification
], ids=["tags", "namespace", "name", "delayed", "keyed", "batch", "big"])
async def test_anything_else_takes_the_claim_path(backend: Backend,
                                                  handoffs: list[ClaimedTask],
                                                  tasks: list[NewTask]) -> None:
    await park(backend)
    ids = await backend.enqueue(tasks)
    delayed = any(t.delay_seconds for t in tasks)
    assert {(await backend.get_task(i)).state for i in ids} == {
        "delayed" if delayed else "ready"}
    assert await parked(backend) == CHANNEL
    await asyncio.sleep(0.2)
    assert handoffs == []


async def test_a_due_task_ahead_in_claim_order_is_claimed_first(
        backend: Backend, handoffs: list[ClaimedTask]) -> None:
    await park(backend)
    # Ready ahead of what comes next: e.g. a retry that just became due.
    await backend.pool.execute("""
        INSERT INTO shoal.tasks (namespace, name, priority, sort_key)
        VALUES ('default', 'u', 5, shoal.sort_key(now(), 5))""")
    (low,) = await backend.enqueue([NewTask("t", priority=0)])
    assert (await backend.get_task(low)).state == "ready"
    assert [t.name for t in await backend.claim(ME, 1, 30)] == ["u"]
    assert handoffs == []


async def test_a_draining_or_restarted_worker_is_not_parked(backend: Backend) -> None:
    await park(backend)
    await backend.heartbeat(ME, [], 30, in_flight=0, draining=True)
    assert await parked(backend) is None
    await park(backend)
    # The same id with another channel: a new process that never listened on the old one.
    again = WorkerIdentity(id=ME.id, namespace=ME.namespace, tags=ME.tags,
                           task_names=ME.task_names, concurrency=4, channel="shoal_handoff_new")
    await backend.heartbeat(again, [], 30, in_flight=0, draining=False)
    assert await parked(backend) is None
    (task_id,) = await backend.enqueue([NewTask("t", tags=("gpu",))])
    assert (await backend.get_task(task_id)).state == "ready"


async def test_leases_a_worker_holds_are_found_for_it(backend: Backend) -> None:
    await park(backend)
    (task_id,) = await backend.enqueue([NewTask("t")])  # nobody listens: the handoff is lost
    since = await backend.clock()
    (found,) = await backend.leased_to(ME.id, since - timedelta(seconds=5))
    assert (found.id, found.lease_token, found.attempt) == (task_id, 1, 1)
    assert await backend.leased_to("someone-else", since - timedelta(seconds=5)) == []
    # a lease taken before a process started is an earlier process's: not its own
    assert await backend.leased_to(ME.id, await backend.clock()) == []
