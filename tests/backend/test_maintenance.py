"""What the runtime and the operator rely on besides claiming: one NOTIFY per enqueue
batch and namespace, a heartbeat that extends leases, reports liveness and carries a
workflow's cancel, pruning of finished tasks, stale-worker expiry, backlog counts."""

from __future__ import annotations

import asyncio

from shoal import Client
from shoal.backend import (
    Backend,
    Candidacy,
    NewTask,
    Outcome,
    PoolTasks,
    Subscription,
    WorkerIdentity,
)
from tests.apps.recorder import app
from tests.support import eventually

ME = WorkerIdentity(id="w1", namespace="default", tags=("gpu",), task_names=("t", "echo"),
                    concurrency=4, max_attempts=(1, 1), pool="pool-a", pod_name="pod-1")


async def test_one_notification_per_enqueue_batch_and_namespace(dsn: str,
                                                                backend: Backend) -> None:
    heard: list[tuple[str, str]] = []
    subscription = Subscription(dsn, [backend.queries.tasks_channel],
                                lambda channel, payload: heard.append((channel, payload)))
    listening = asyncio.create_task(subscription.run())
    try:
        await asyncio.wait_for(subscription.connected.wait(), 30)
        await backend.enqueue([NewTask("t", i) for i in range(500)]
                              + [NewTask("t", i, namespace="b") for i in range(500)])
        await eventually(lambda: len(heard) >= 2, what="the notifications")
        await backend.enqueue([NewTask("t", delay_seconds=0)])
        await eventually(lambda: len(heard) >= 3, what="the third notification")
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
    assert sorted(heard) == [("shoal_tasks", "b"), ("shoal_tasks", "default"),
                             ("shoal_tasks", "default")]


async def test_heartbeat_extends_leases_records_liveness_and_carries_cancel(
        backend: Backend) -> None:
    client = Client(backend, app)
    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}]}, name="w")
    (plain,) = await backend.enqueue([NewTask("t")])
    claimed = await backend.claim(ME, 10, lease_seconds=5)
    leases = [(t.id, t.lease_token) for t in claimed]
    step = next(t.id for t in claimed if t.workflow_id == workflow_id)
    before = await backend.pool.fetchval(
        "SELECT max(lease_expires_at) FROM shoal.tasks WHERE state = 'running'")
    reply = await backend.heartbeat(ME, leases, 60, in_flight=2, draining=False)
    assert reply.held == {plain, step} and reply.cancel == frozenset()
    after = await backend.pool.fetchval(
        "SELECT min(lease_expires_at) FROM shoal.tasks WHERE state = 'running'")
    assert after > before
    (row,) = await backend.pool_workers("pool-a")
    assert (row.id, row.pod_name, row.tags, row.task_names, row.concurrency, row.in_flight,
            row.draining) == ("w1", "pod-1", ["gpu"], ["t", "echo"], 4, 2, False)
    record = await client.cancel(workflow_id, actor="op")
    assert (await client.status(workflow_id)).state == "cancelling"  # its step still runs
    reply = await backend.heartbeat(ME, leases, 60, in_flight=2, draining=True)
    assert reply.held == {plain, step} and reply.cancel == {step}
    assert record.applied and (await backend.pool_workers("pool-a"))[0].draining
    # the worker stops the step and reports it cancelled: the workflow is cancelled
    assert await backend.report([Outcome(step, dict(leases)[step], workflow_id,
                                         cancelled=True, error="cancelled")]) == {step}
    assert (await client.status(workflow_id)).state == "cancelled"
    assert await backend.reap_workers(stale_seconds=3600) == []
    assert await backend.reap_workers(stale_seconds=0) == ["w1"]
    assert await backend.pool_workers("pool-a") == []


async def test_prune_removes_only_old_finished_plain_tasks(backend: Backend) -> None:
    client = Client(backend, app)
    done, failed, waiting, running = await backend.enqueue(
        [NewTask("t"), NewTask("t", max_attempts=1), NewTask("t"), NewTask("t")])
    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}]}, name="w")
    claimed = {t.id: t for t in await backend.claim(ME, 3, 60)}
    claimed |= {t.id: t for t in await backend.claim(ME, 3, 60)}
    outcomes = [Outcome(done, claimed[done].lease_token),
                Outcome(failed, claimed[failed].lease_token, error="boom")]
    step = next(t for t in claimed.values() if t.workflow_id == workflow_id)
    outcomes.append(Outcome(step.id, step.lease_token, workflow_id, result_json='"ok"'))
    await backend.release([(waiting, claimed[waiting].lease_token)])
    assert await backend.report(outcomes) == {done, failed, step.id}
    assert await backend.prune(retention_seconds=3600) == (0, 0)  # all too recent
    assert await backend.prune(retention_seconds=0) == (1, 1)
    rows = await backend.pool.fetch("SELECT id, state::text FROM shoal.tasks ORDER BY id")
    # the succeeded task and the finished workflow (with its step) are gone; the dead
    # letter, the ready and the running task stay
    assert [(r["id"], r["state"]) for r in rows] == [
        (failed, "dead"), (waiting, "ready"), (running, "running")]


async def test_prune_waits_removes_what_crashed_clients_left(backend: Backend) -> None:
    """A wait's registration is pruned once its task ended or is gone, a minute after it
    began; a task still pending keeps its waits, however old (a wait has no deadline)."""
    ready, ended = await backend.enqueue([NewTask("t"), NewTask("t")])
    await backend.pool.execute("UPDATE shoal.tasks SET state = 'succeeded' WHERE id = $1", ended)
    gone = ended + 1000
    for task_id, age in [(ready, 3600), (ended, 3600), (ended, 10), (gone, 120)]:
        await backend.pool.execute(
            "INSERT INTO shoal.waits (task_id, waiter, since) "
            "VALUES ($1, gen_random_uuid(), now() - $2 * interval '1 second')", task_id, age)
    assert await backend.prune_waits(term=1) == 0  # not the role's current term
    term = (await backend.elect("leader", 0, 30)).term
    assert await backend.prune_waits(limit=1, term=term) == 1
    assert await backend.prune_waits() == 1  # an administrator's call (no term)
    assert await backend.prune_waits() == 0
    rows = await backend.pool.fetch(
        "SELECT task_id, now() - since > interval '1 minute' AS old FROM shoal.waits "
        "ORDER BY task_id, since")
    assert [(r["task_id"], r["old"]) for r in rows] == [(ready, True), (ended, False)]


async def test_backlog_counts_what_a_pool_can_serve(backend: Backend) -> None:
    await backend.enqueue([NewTask("t"), NewTask("t", tags=("gpu",)),
                           NewTask("t", tags=("tpu",)), NewTask("t", delay_seconds=3600),
                           NewTask("other"), NewTask("t", namespace="b"),
                           NewTask("t", max_attempts=1)])
    (claimed,) = await backend.claim(ME, 1, 60)
    await backend.report([Outcome(claimed.id, claimed.lease_token, error="x")])  # dead
    await backend.claim(ME, 1, 60)  # one running
    backlog = await backend.backlog("default", ["gpu"])
    assert (backlog.ready, backlog.running, backlog.waiting, backlog.dead) == (2, 1, 1, 1)
    only_t = await backend.backlog("default", ["gpu"], ["t"])
    assert (only_t.ready, only_t.waiting) == (1, 1)


async def test_backlog_says_what_is_due_and_how_old_the_queue_is(backend: Backend) -> None:
    """Due: not yet ready but due within the pool's lead, or overdue (no worker promoted
    it yet); the oldest ready task's age; the seconds to the next task not yet due."""
    await backend.enqueue([NewTask("t", delay_seconds=5), NewTask("t", delay_seconds=50),
                           NewTask("t", delay_seconds=500), NewTask("t")])
    await backend.pool.execute(  # the ready one became ready 40 s ago
        "UPDATE shoal.tasks SET run_at = now() - interval '40 seconds' WHERE state = 'ready'")
    pool = PoolTasks("default")
    short, long = await backend.backlogs([pool, pool], leads=[10, 60])
    assert (short.ready, short.waiting, short.due, long.due) == (1, 3, 1, 2)
    assert 39 < short.oldest_ready_seconds < 45 and short.newest_ready_seconds == \
        short.oldest_ready_seconds
    assert short.next_due_seconds is not None and 48 < short.next_due_seconds <= 50
    assert long.next_due_seconds is not None and 498 < long.next_due_seconds <= 500
    await backend.pool.execute(  # overdue: no worker's scheduler has promoted it
        "UPDATE shoal.tasks SET run_at = now() - interval '1 second' WHERE state = 'delayed' "
        "AND run_at < now() + interval '10 seconds'")
    (overdue,) = await backend.backlogs([pool])
    assert (overdue.due, overdue.ready) == (1, 1)
    assert overdue.next_due_seconds is not None and 48 < overdue.next_due_seconds <= 50
    idle = await backend.backlog("nobody", [])
    assert (idle.due, idle.oldest_ready_seconds, idle.next_due_seconds) == (0, 0.0, None)


async def test_flows_measure_service_time_and_arrivals_by_name(backend: Backend) -> None:
    """Per task name: finished tasks of the window and their busy seconds, tasks that
    became ready within the span (finished or live), tasks ready now; a full sample
    narrows the span to what it covers."""
    await backend.enqueue([NewTask("fast") for _ in range(4)] + [NewTask("slow")])
    await backend.pool.execute(  # finished 1 s ago after 0.5 s (fast), 4 s (slow)
        "UPDATE shoal.tasks SET state = 'succeeded', finished_at = now() - interval '1 second',"
        " started_at = now() - interval '1 second' - CASE name WHEN 'fast' THEN "
        "interval '0.5 seconds' ELSE interval '4 seconds' END")
    await backend.pool.execute(  # an old one, outside the window
        "UPDATE shoal.tasks SET run_at = now() - interval '2 hours', finished_at = now() - "
        "interval '2 hours', started_at = now() - interval '2 hours 1 second' "
        "WHERE id = (SELECT min(id) FROM shoal.tasks)")
    await backend.enqueue([NewTask("fast"), NewTask("fast"), NewTask("new"), NewTask("long"),
                           NewTask("long")])
    await backend.pool.execute(  # one has run for 40 s, one for 10 s
        "UPDATE shoal.tasks SET state = 'running', started_at = now() - CASE WHEN id = "
        "(SELECT min(id) FROM shoal.tasks WHERE name = 'long') THEN interval '40 seconds' "
        "ELSE interval '10 seconds' END, lease_expires_at = now() + interval '1 minute' "
        "WHERE name = 'long'")
    pool = PoolTasks("default")
    (flow,) = await backend.flows([pool], [30], window_seconds=60, sample=1000)
    by_name = {f.name: f for f in flow}
    fast, slow, new = by_name["fast"], by_name["slow"], by_name["new"]
    assert (fast.finished, fast.arrivals, fast.ready) == (3, 5, 2)
    assert abs(fast.busy_seconds - 1.5) < 0.01 and fast.span_seconds == 60
    assert (slow.finished, slow.arrivals, slow.ready) == (1, 1, 0)
    assert abs(slow.busy_seconds - 4) < 0.01
    assert (new.finished, new.arrivals, new.ready) == (0, 1, 1)
    assert (by_name["long"].long_running, by_name["long"].ready, fast.long_running) == (1, 0, 0)
    (full,) = await backend.flows([pool], [30], window_seconds=60, sample=2)
    assert sum(f.finished for f in full) == 2 and full[0].span_seconds < 5
    assert await backend.flows([PoolTasks("nobody")], [30], window_seconds=60,
                               sample=10) == [[]]


async def test_a_followers_heartbeat_stands_for_the_role(backend: Backend) -> None:
    """A follower's heartbeat stands as `elect` would, in the same statement: it leaves a
    current term alone and says how much is left, takes a lapsed one under a new
    term, and without a candidacy stands for nothing."""
    term = (await backend.elect("leader", 0, 30)).term
    assert term is not None
    stand = Candidacy(ME.id, seconds=30, grace=0)
    reply = await backend.heartbeat(ME, [], 30, in_flight=0, draining=False, stand=stand)
    assert reply.election is not None
    assert (reply.election.term, reply.election.holder) == (None, "leader")
    assert 29 < reply.election.remaining <= 30
    await backend.pool.execute("UPDATE shoal.leaders SET expires_at = now() - interval '2s'")
    late = Candidacy(ME.id, seconds=30, grace=5)  # not in contact: a grace after the lapse
    missed = await backend.heartbeat(ME, [], 30, in_flight=0, draining=False, stand=late)
    assert missed.election is not None and missed.election.term is None
    assert (await backend.heartbeat(ME, [], 30, in_flight=0, draining=False)).election is None
    won = await backend.heartbeat(ME, [], 30, in_flight=0, draining=False, stand=stand)
    assert won.election is not None and won.election.term == term + 1
    assert (await backend.elect(ME.id, term + 1, 30)).term == term + 1  # it renews as leader
