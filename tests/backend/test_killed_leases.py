"""`end_killed_leases`: the leases of a pod's worker run that was killed (an OOM kill) end
at once as lease expiries with that cause, fenced, idempotent, within the lease-expiry
budget, optionally rerouted by tags; a lease the reaper ended first gets the cause."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shoal.backend import (
    Backend,
    KilledWorker,
    NewTask,
    Outcome,
    Reroute,
    WorkerIdentity,
)
from shoal.errors import InvalidInput

POD = WorkerIdentity(id="pod-a", namespace="default", tags=(), task_names=("t", "u"),
                     concurrency=8, max_expiries=(2, 2), pool="small", pod_name="pod-a")
OTHER = WorkerIdentity(id="pod-b", namespace="default", tags=("highmem",),
                       task_names=("t", "u"), concurrency=8, pool="big", pod_name="pod-b")
CAUSE = "OOMKilled on pod pod-a (container worker, memory limit 64Mi)"


async def run_of(backend: Backend, started: datetime, *, cause: str = CAUSE,
                 killed: datetime | None = None) -> KilledWorker:
    """pod-a's run from `started` until now (the database's clock)."""
    return KilledWorker(pool="small", pod_name="pod-a", started_at=started,
                        killed_at=killed or await backend.clock(), cause=cause)


async def claimed_by(backend: Backend, worker: WorkerIdentity, count: int,
                     **task: object) -> dict[int, int]:
    """Enqueue `count` tasks `t` and let `worker` (its liveness row written) claim them:
    {task id: lease token}."""
    await backend.heartbeat(worker, [], 30, in_flight=0, draining=False)
    await backend.enqueue([NewTask("t", **task) for _ in range(count)])  # type: ignore[arg-type]
    return {c.id: c.lease_token for c in await backend.claim(worker, count, 30)}


async def test_the_killed_runs_leases_are_retried_at_once_with_the_cause(
        backend: Backend) -> None:
    started = await backend.clock()
    leases = await claimed_by(backend, POD, 2)
    ended = await backend.end_killed_leases(await run_of(backend, started))
    assert sorted((e.task_id, e.state, e.rerouted, e.reaped) for e in ended) == [
        (i, "ready", False, False) for i in sorted(leases)]
    for task_id, token in leases.items():
        task = await backend.get_task(task_id)
        assert (task.state, task.attempts, task.expiries, task.worker_id, task.lease_token) \
            == ("ready", 0, 1, None, token + 1)
        assert task.error == f"worker killed (1 of 3 allowed): {CAUSE}"
    # the killed run's late report (were it alive) is refused by the fence
    late = [Outcome(i, t, result_json='"late"') for i, t in leases.items()]
    assert await backend.report(late, worker_id=POD.id) == set()
    # ready at once: another worker claims them now, not after the TTL
    assert {c.id for c in await backend.claim(OTHER, 10, 30)} == set(leases)


async def test_a_second_call_changes_nothing(backend: Backend) -> None:
    started = await backend.clock()
    (task_id,) = await claimed_by(backend, POD, 1)
    run = await run_of(backend, started)
    assert len(await backend.end_killed_leases(run)) == 1
    assert await backend.end_killed_leases(run) == []
    assert (await backend.get_task(task_id)).expiries == 1


async def test_finished_reclaimed_and_later_leases_are_untouched(backend: Backend) -> None:
    """Only leases the pod's worker took during the killed run and still holds end."""
    started = await backend.clock()
    leases = await claimed_by(backend, POD, 3)
    done, failed, expired = leases
    await backend.report([Outcome(done, leases[done], result_json='"ok"'),
                          Outcome(failed, leases[failed], error="boom")], worker_id=POD.id)
    await backend.pool.execute(  # the reaper ended it and another worker claimed it
        "UPDATE shoal.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        expired)
    assert await backend.reap_expired() == 1
    (reclaimed,) = await backend.claim(OTHER, 1, 30)
    killed_at = await backend.clock()
    # the restarted container (same worker id) claims after the kill
    (later,) = await claimed_by(backend, POD, 1)
    assert await backend.end_killed_leases(await run_of(backend, started,
                                                        killed=killed_at)) == []
    states = [(await backend.get_task(i)).state for i in (done, failed, expired, later)]
    assert states == ["succeeded", "dead", "running", "running"]
    assert (await backend.get_task(expired)).worker_id == OTHER.id == "pod-b"
    assert reclaimed.id == expired
    # nor are leases taken before the run began (an earlier run's)
    assert await backend.end_killed_leases(await run_of(
        backend, killed_at + timedelta(days=1), killed=killed_at + timedelta(days=2))) == []


async def test_the_budget_is_the_lease_expiry_budget(backend: Backend) -> None:
    """An OOM end counts as a lease expiry: once the budget is used up, a dead letter."""
    (task_id,) = await backend.enqueue([NewTask("t", lease_expiries=1)])
    await backend.heartbeat(POD, [], 30, in_flight=0, draining=False)
    states = []
    for _ in range(2):
        started = await backend.clock()
        (claimed,) = await backend.claim(POD, 1, 30)
        assert claimed.id == task_id
        (ended,) = await backend.end_killed_leases(await run_of(backend, started))
        states.append(ended.state)
    assert states == ["ready", "dead"]
    task = await backend.get_task(task_id)
    assert (task.state, task.expiries, task.attempts) == ("dead", 2, 0)
    assert task.error == f"worker killed (2 of 2 allowed): {CAUSE}"
    assert task.finished_at is not None


async def test_a_reroute_gives_the_retry_its_tags(backend: Backend) -> None:
    """Rerouted retries take the reroute's tags (only its names, when it names any);
    a dead letter keeps its own. The pod's own pool no longer claims them."""
    started = await backend.clock()
    await backend.heartbeat(POD, [], 30, in_flight=0, draining=False)
    t, u, last = await backend.enqueue([NewTask("t"), NewTask("u"),
                                        NewTask("t", lease_expiries=0)])
    assert len(await backend.claim(POD, 3, 30)) == 3
    ended = await backend.end_killed_leases(await run_of(backend, started),
                                            Reroute(tags=("highmem",), names=("t",)))
    assert sorted((e.task_id, e.state, e.rerouted) for e in ended) == [
        (t, "ready", True), (u, "ready", False), (last, "dead", False)]
    assert [(await backend.get_task(i)).tags for i in (t, u, last)] == [["highmem"], [], []]
    assert [c.id for c in await backend.claim(POD, 3, 30)] == [u]
    assert [c.id for c in await backend.claim(OTHER, 3, 30)] == [t]


async def test_a_lease_the_reaper_ended_first_gets_the_cause(backend: Backend) -> None:
    """Seen late (over half a claim TTL after the kill): the reaper's error gains the
    cause, the retry is rerouted, and nothing is counted twice."""
    started = await backend.clock()
    await backend.heartbeat(POD, [], 60, in_flight=0, draining=False)
    ready, dead = await backend.enqueue([NewTask("t"), NewTask("t", lease_expiries=0)])
    assert len(await backend.claim(POD, 2, 60)) == 2
    killed_at = await backend.clock()
    await backend.pool.execute(
        "UPDATE shoal.tasks SET lease_expires_at = now() - interval '1 second'")
    assert await backend.reap_expired() == 2
    run = await run_of(backend, started, killed=killed_at)
    assert await backend.end_killed_leases(run) == []  # not half a TTL yet: not looked for
    await backend.pool.execute("UPDATE shoal.workers SET claim_ttl = 0")  # half a TTL: past
    ended = await backend.end_killed_leases(run, Reroute(tags=("highmem",)))
    assert sorted((e.task_id, e.state, e.rerouted, e.reaped) for e in ended) == [
        (ready, "ready", True, True), (dead, "dead", False, True)]
    for task_id, budget in ((ready, "1 of 3"), (dead, "1 of 1")):
        task = await backend.get_task(task_id)
        assert task.expiries == 1
        assert task.error == (f"lease expired ({budget} allowed): worker pod-a stopped "
                              f"heartbeating: {CAUSE}")
    assert await backend.end_killed_leases(run) == []


async def test_bad_input_is_refused_before_any_sql(backend: Backend) -> None:
    started = await backend.clock()
    with pytest.raises(InvalidInput, match="cause contains a NUL"):
        await backend.end_killed_leases(await run_of(backend, started, cause="a\x00b"))
    with pytest.raises(InvalidInput, match="reroute: invalid tags"):
        await backend.end_killed_leases(await run_of(backend, started), Reroute(tags=("a,b",)))
