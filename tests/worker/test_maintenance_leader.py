"""Maintenance runs on one leader per schema: exactly one worker holds the maintenance
role's unexpired term; when it is killed another takes over once the term lapses, and
when it drains it resigns and another takes over at once; a pass works through
everything that is due in bounded batches — expired leases and old finished tasks —
not a fixed amount a minute."""

from __future__ import annotations

import asyncio
import signal

from shoal.backend import Backend, NewTask
from tests.support import Spawner, eventually


async def leaders(backend: Backend) -> list[str]:
    """The worker leading maintenance now, if any (a list: there is never more than one)."""
    rows = await backend.pool.fetch(
        "SELECT holder FROM shoal.leaders WHERE role = 'maintenance' AND expires_at > now()")
    return [r["holder"] for r in rows]


async def test_one_leader_and_it_moves_when_the_leader_is_killed(
        dsn: str, backend: Backend, spawn: Spawner) -> None:
    workers = {w.worker_id: w for w in
               [await spawn.worker(dsn, claim_ttl="2s") for _ in range(3)]}
    (first,) = await eventually(lambda: leaders(backend), what="a leader")
    await asyncio.sleep(1.5)  # three pass intervals: still one leader, the same one
    assert await leaders(backend) == [first]
    workers[first].signal(signal.SIGKILL)
    await workers[first].wait()

    async def new_leader() -> list[str]:
        found = await leaders(backend)
        return found if found and found != [first] else []

    (second,) = await eventually(new_leader, within=10, what="another worker to lead")
    assert second in workers and second != first
    await eventually(lambda: "leading maintenance of schema shoal" in workers[second].output(),
                     within=2, what="the new leader to say so")
    # a drained leader resigns: the last worker leads well before the term would lapse
    workers[second].signal(signal.SIGTERM)
    assert await workers[second].wait() == 0
    assert "resigned maintenance of schema shoal" in workers[second].output()
    (third,) = await eventually(lambda: leaders(backend), within=0.5, what="the third leader")
    assert third not in (first, second)
    workers[third].signal(signal.SIGTERM)
    assert sorted([await w.wait() for w in workers.values()]) == [-signal.SIGKILL, 0, 0]


async def test_a_pass_reaps_and_prunes_everything_due(dsn: str, backend: Backend,
                                                      spawn: Spawner) -> None:
    # 12,000 finished tasks past the retention (the old pruner took 10,000 a minute) and
    # 2,500 expired leases (the reaper takes 1,000 a statement); tasks named "t", which
    # the worker does not serve, so reclaimed ones stay ready
    ids = await backend.enqueue([NewTask("t", i) for i in range(14_500)])
    await backend.pool.execute(
        "UPDATE shoal.tasks SET state = 'succeeded', finished_at = now() - interval '1 hour'"
        " WHERE id <= $1", ids[11_999])
    await backend.pool.execute(
        "UPDATE shoal.tasks SET state = 'running', attempts = 1, max_attempts = 3, lease_token = 1,"
        " worker_id = 'gone', lease_expires_at = now() - interval '1 minute' WHERE id > $1",
        ids[11_999])
    worker = await spawn.worker(dsn, "--retention", "10m", claim_ttl="2s")

    async def states() -> dict[str, int]:
        rows = await backend.pool.fetch(
            "SELECT state::text, count(*) AS n FROM shoal.tasks GROUP BY 1")
        return {r["state"]: r["n"] for r in rows}

    async def all_handled() -> bool:
        return await states() == {"ready": 2_500}

    await eventually(all_handled, within=30, what="every due row handled")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0

