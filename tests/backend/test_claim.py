"""Claiming against a real Postgres: exclusive under concurrency, routed by namespace,
tags and registered names, delayed tasks wait, priority with aging lets low priority
through, leases are fenced, idempotency keys dedupe."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.backend import Backend, NewTask, Outcome, WorkerIdentity
from tests.support import eventually


def worker(id: str = "w", *, namespace: str = "default", tags: tuple[str, ...] = (),
           names: tuple[str, ...] = ("t",)) -> WorkerIdentity:
    return WorkerIdentity(id=id, namespace=namespace, tags=tags, task_names=names,
                          concurrency=10, max_attempts=(3,) * len(names))


async def test_concurrent_claimers_never_share_a_task(backend: Backend) -> None:
    ids = await backend.enqueue([NewTask("t", i) for i in range(2400)])
    claimed: list[list[int]] = [[] for _ in range(16)]

    async def claimer(n: int) -> None:
        me = worker(f"c{n}")
        while batch := await backend.claim(me, 7, 30):
            claimed[n].extend(t.id for t in batch)

    await asyncio.gather(*(claimer(n) for n in range(16)))
    every = [i for batch in claimed for i in batch]
    assert len(every) == len(set(every)) == 2400
    assert set(every) == set(ids)
    assert sum(1 for c in claimed if c) > 1  # the claimers really competed
    row = await backend.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state = 'running') AS running, max(lease_token) AS t,"
        " max(attempts) AS a FROM shoal.tasks")
    assert dict(row) == {"running": 2400, "t": 1, "a": 1}


async def test_tags_namespaces_and_names_route_tasks(backend: Backend) -> None:
    plain, gpu, gpu_big, other_ns, other_name = await backend.enqueue([
        NewTask("t"), NewTask("t", tags=("gpu",)), NewTask("t", tags=("gpu", "big")),
        NewTask("t", namespace="team-b"), NewTask("unregistered")])

    async def claim(me: WorkerIdentity) -> set[int]:
        got = {t.id for t in await backend.claim(me, 100, 30)}
        if got:  # hand them back so the next worker sees the same queue
            await backend.release([(i, (await backend.get_task(i)).lease_token) for i in got])
        return got

    assert await claim(worker()) == {plain}  # untagged tasks go to any worker
    assert await claim(worker(tags=("big",))) == {plain}
    assert await claim(worker(tags=("gpu",))) == {plain, gpu}
    assert await claim(worker(tags=("big", "gpu", "ssd"))) == {plain, gpu, gpu_big}
    assert await claim(worker(namespace="team-b", tags=("gpu", "big"))) == {other_ns}
    assert await claim(worker(names=("other",))) == set()
    assert await claim(worker(names=("t", "unregistered"))) == {plain, other_name}
    assert (await backend.get_task(other_name)).attempts == 0  # release gave attempts back


async def test_delayed_task_is_not_claimed_before_it_is_due(backend: Backend) -> None:
    """A delayed task waits as `delayed`, out of the claim's way, until promote (the
    maintenance leader's scheduler) makes it ready once due; promote says when the
    next one comes due."""
    (task_id,) = await backend.enqueue([NewTask("t", delay_seconds=1.5)])
    assert (await backend.get_task(task_id)).state == "delayed"
    assert await backend.claim(worker(), 10, 30) == []
    promoted, next_due = await backend.promote()
    assert promoted == 0 and next_due is not None and 1.0 < next_due <= 1.5
    assert await backend.claim(worker(), 10, 30) == []
    async def promoted() -> int:
        return (await backend.promote())[0]

    assert await eventually(promoted, within=10, interval=0.1,
                            what="the delayed task to come due") == 1
    assert await backend.promote() == (0, None)
    (claimed,) = await backend.claim(worker(), 10, 30)
    assert claimed.id == task_id
    row = await backend.pool.fetchrow(
        "SELECT started_at >= run_at AS on_time, run_at - enqueued_at AS delay"
        " FROM shoal.tasks WHERE id = $1", task_id)
    assert row["on_time"] and row["delay"].total_seconds() == 1.5


async def test_higher_priority_first_then_fifo(backend: Backend) -> None:
    low, high, mid, high2 = await backend.enqueue(
        [NewTask("t", priority=0), NewTask("t", priority=9), NewTask("t", priority=5),
         NewTask("t", priority=9)])
    order = [t.id for t in await backend.claim(worker(), 10, 30)]
    assert order == [high, high2, mid, low]


async def aging_race(backend: Backend, seconds: float) -> tuple[int, bool, float]:
    """Keep 5 fresh priority-2 tasks ready; claim one at a time for `seconds`.

    Returns how many high-priority tasks were claimed, whether the priority-0
    task (enqueued first) was claimed, and the seconds it took.
    """
    started = time.monotonic()
    (low,) = await backend.enqueue([NewTask("t", {"low": True}, priority=0)])
    await backend.enqueue([NewTask("t", priority=2) for _ in range(5)])
    me, high_claimed = worker(), 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await backend.enqueue([NewTask("t", priority=2)])  # the stream never dries up
        (task,) = await backend.claim(me, 1, 30)
        await backend.report([Outcome(task.id, task.lease_token)])
        if task.id == low:
            return high_claimed, True, time.monotonic() - started
        high_claimed += 1
        await asyncio.sleep(0.02)
    return high_claimed, False, time.monotonic() - started


async def test_aging_lets_low_priority_through_a_constant_high_priority_stream(
        dsn: str) -> None:
    aging = await Backend.connect(dsn, schema="aging")
    no_aging = await Backend.connect(dsn, schema="no_aging")
    try:
        await aging.migrate(aging_seconds=1)  # waiting 1 s is worth one priority point
        await no_aging.migrate(aging_seconds=86400)
        high_before, reached, waited = await aging_race(aging, seconds=20)
        assert reached, "the low-priority task starved despite aging"
        assert high_before > 0  # it really had to wait behind the stream first
        # The same stream for longer than that wait (and at least 3 s, past the 2 s
        # two priority points are worth above) never lets it through without aging.
        high_claimed, reached, _ = await aging_race(no_aging, seconds=max(3.0, 1.5 * waited))
        assert not reached and high_claimed > 0
    finally:
        await aging.close()
        await no_aging.close()


async def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced(
        backend: Backend) -> None:
    (task_id,) = await backend.enqueue([NewTask("t")])
    (first,) = await backend.claim(worker("a"), 1, lease_seconds=0.3)
    assert await backend.reap_expired() == 0  # not expired yet
    await eventually(backend.reap_expired, within=10, what="the lease to expire")
    task = await backend.get_task(task_id)
    # not a failure: the attempt is not counted, one lease expiry is used up, and the
    # expiry ends the lease (the token moves on)
    assert (task.state, task.worker_id, task.attempts, task.expiries) == ("ready", None, 0, 1)
    assert task.lease_token == first.lease_token + 1
    assert task.error == "lease expired (1 of 4 allowed): worker a stopped heartbeating"
    (second,) = await backend.claim(worker("b"), 1, lease_seconds=30)
    assert (second.id, second.attempt, second.lease_token) == (task_id, 1, first.lease_token + 2)
    # a's heartbeat no longer holds the lease, and its late result is refused
    beat = await backend.heartbeat(worker("a"), [(task_id, first.lease_token)], 30, 1, False)
    assert beat.held == frozenset()
    assert await backend.report([Outcome(task_id, first.lease_token,
                                         result_json='"stale"')]) == set()
    assert await backend.report([Outcome(task_id, second.lease_token,
                                         result_json='"fresh"')]) == {task_id}
    assert await backend.report([Outcome(task_id, first.lease_token, error="late",
                                         retry_in_seconds=0)]) == set()
    done = await backend.get_task(task_id)
    assert (done.state, done.result, done.worker_id, done.error) == (
        "succeeded", "fresh", "b", None)


async def test_lease_expiries_have_their_own_budget(backend: Backend) -> None:
    """A crash is not a failure: with no retries at all (max_attempts 1), a task survives
    its lease expiries up to its budget; the expiry after that makes it a dead letter."""
    (task_id,) = await backend.enqueue([NewTask("t", max_attempts=1, lease_expiries=1)])
    await backend.claim(worker(), 1, lease_seconds=0.2)
    await eventually(backend.reap_expired, within=10, what="the lease to expire")
    task = await backend.get_task(task_id)
    assert (task.state, task.attempts, task.expiries, task.max_expiries) == ("ready", 0, 1, 1)
    (again,) = await backend.claim(worker(), 1, lease_seconds=0.2)
    assert again.attempt == 1
    await eventually(backend.reap_expired, within=10, what="the lease to expire again")
    task = await backend.get_task(task_id)
    assert (task.state, task.attempts, task.expiries) == ("dead", 0, 2)
    assert task.error == "lease expired (2 of 2 allowed): worker w stopped heartbeating"
    assert task.finished_at is not None


async def test_the_claiming_workers_definition_sets_a_budget_the_producer_left_open(
        backend: Backend) -> None:
    """As with retries: a task enqueued without a lease-expiry budget takes the one its
    worker defines for the name when claimed; one the producer set stays."""
    open_id, set_id = await backend.enqueue([NewTask("t"), NewTask("t", lease_expiries=5)])
    assert (await backend.get_task(open_id)).max_expiries is None
    me = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("t",),
                        concurrency=10, max_attempts=(1,), max_expiries=(1,))
    await backend.claim(me, 2, lease_seconds=30)
    assert [(await backend.get_task(i)).max_expiries for i in (open_id, set_id)] == [1, 5]


async def test_the_default_budget_is_three_expiries(backend: Backend) -> None:
    (task_id,) = await backend.enqueue([NewTask("t", max_attempts=1)])
    for expiry in range(1, 5):
        await backend.claim(worker(), 1, lease_seconds=0.1)
        await eventually(backend.reap_expired, within=10, what=f"expiry {expiry}")
        task = await backend.get_task(task_id)
        assert (task.state, task.expiries) == ("ready" if expiry <= 3 else "dead", expiry)


async def test_idempotency_key_returns_the_same_id(backend: Backend) -> None:
    first = await backend.enqueue([NewTask("t", {"v": 1}, idempotency_key="k1")])
    again = await backend.enqueue([NewTask("t", {"v": 2}, idempotency_key="k1"),
                                   NewTask("t", {"v": 3}),
                                   NewTask("t", {"v": 4}, idempotency_key="k2"),
                                   NewTask("t", {"v": 5}, idempotency_key="k2")])
    assert again[0] == first[0] and again[2] == again[3]
    assert len(set(again)) == 3
    other_ns = await backend.enqueue([NewTask("t", namespace="b", idempotency_key="k1")])
    assert other_ns[0] not in again  # keys are per namespace
    rows = await backend.pool.fetch("SELECT payload FROM shoal.tasks ORDER BY id")
    assert [r["payload"] for r in rows] == [{"v": 1}, {"v": 3}, {"v": 4}, None]


async def test_claim_completes_the_claimers_successes_in_the_same_statement(
        backend: Backend) -> None:
    ids = await backend.enqueue([NewTask("t", {"n": n}) for n in range(4)])
    held = await backend.claim(worker("a"), 2, lease_seconds=30)
    (other,) = await backend.claim(worker("b"), 1, lease_seconds=30)
    mine, stale = held
    claimed, accepted = await backend.claim_and_complete(worker("a"), 10, 30, [
        Outcome(mine.id, mine.lease_token, result_json='{"ok": 1}'),
        Outcome(stale.id, stale.lease_token + 1, result_json='"wrong token"'),
        Outcome(other.id, other.lease_token, result_json='"not a\'s lease"'),
    ])
    assert accepted == {mine.id}
    assert [t.id for t in claimed] == [ids[3]]
    done = await backend.get_task(mine.id)
    assert (done.state, done.result, done.finished_at is not None) == (
        "succeeded", {"ok": 1}, True)
    for refused in (stale.id, other.id):
        assert (await backend.get_task(refused)).state == "running"
    # nothing to claim and nothing to complete: still an answer
    assert await backend.claim_and_complete(worker("a"), 10, 30, []) == ([], set())


async def test_a_claim_returns_payloads_as_enqueued_and_when_they_were_due(
        backend: Backend) -> None:
    """Any JSON comes back as it went in (integers beyond 64 bits too, which the fast
    decoder would read as floats), and `due_at` is the task's run_at in Unix seconds."""
    payloads = [{"big": 2**70 + 1, "negative": -(2**64) - 1}, [1.5, "é", None, True], "text", 12]
    ids = await backend.enqueue([NewTask("t", p) for p in payloads])
    claimed = {t.id: t for t in await backend.claim(worker(), 10, 30)}
    assert [claimed[i].payload for i in ids] == payloads
    for i in ids:
        run_at = (await backend.get_task(i)).run_at.timestamp()
        assert claimed[i].due_at == pytest.approx(run_at, abs=1e-6)
