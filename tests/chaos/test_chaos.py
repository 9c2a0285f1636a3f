"""The chaos suite: worker processes against a real Postgres 15 under the faults a
production fleet lives through. Each scenario is bounded in tasks and time, counts
handler runs from the handlers' own log (see `harness`), prints its row of the chaos
table (the whole table is printed at the end of the run, and kept in the README), and
fails on any lost task or stale overwrite. Every scenario runs with the default
budgets: no retries, three lease expiries."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from uuid import UUID

import pytest

from shoal import Client, Job
from shoal.backend import Backend, NewTask
from tests.apps.recorder import app, runs
from tests.chaos.harness import (
    Fault,
    Fleet,
    analyze,
    completed,
    database,
    enqueue,
    kill_loop,
    leader,
    leases_of,
    not_ready_after,
    settled,
    states,
)
from tests.cluster.postgres import PostgresServer
from tests.support import NEWER_SPEC, UNREADABLE_SPECS, Spawner, eventually
from tests.worker.test_readiness import answers

BUSY = ("--concurrency", "8", "--batch-size", "8")


async def at_least(log: str, count: float, within: float = 60) -> None:
    await eventually(lambda: completed(log) >= count, within=within, interval=0.1,
                     what=f"{count:g} completed runs")


async def test_kill_9_every_one_to_two_seconds(chaos_dsn: str, spawn: Spawner,
                                               log: str) -> None:
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 3000, sleep=0.1)
        fleet = Fleet(spawn, chaos_dsn, BUSY)
        await fleet.start(4)
        await at_least(log, 100)
        last_kill = await kill_loop(fleet, log, len(ids), kills=10)
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []
        await analyze("kill -9 of a worker every 1-2 s", backend, log, ids, last_kill,
                      fleet.crashed,
                      notes=f"{len(fleet.killed)} kills, restarted like pods")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restarts_under_load(server: PostgresServer, chaos_dsn: str,
                                            spawn: Spawner, log: str, mode: str) -> None:
    """Replaces test_postgres_restarts_under_load_lose_nothing, which restarted before
    every worker had connected and checked attempts == lease_token."""
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 3000, sleep=0.05)
        fleet = Fleet(spawn, chaos_dsn, BUSY)
        await fleet.start(4)
        for fraction in (0.25, 0.6):
            await at_least(log, fraction * len(ids))
            await asyncio.to_thread(server.restart, mode)
        up = time.time()
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []  # no worker died of the restart (the `-m fast` finding)
        await analyze(f"Postgres restart -m {mode}, twice", backend, log, ids, up,
                      fleet.crashed)


async def test_an_outage_longer_than_the_claim_ttl(server: PostgresServer, chaos_dsn: str,
                                                   spawn: Spawner, log: str) -> None:
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 2000, sleep=0.05)
        fleet = Fleet(spawn, chaos_dsn, BUSY)
        await fleet.start(4)
        await at_least(log, 0.25 * len(ids))
        await asyncio.to_thread(server.stop, "fast")
        await asyncio.sleep(6)  # three claim TTLs
        await asyncio.to_thread(server.start)
        up = time.time()
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []
        await analyze("Postgres down 6 s (3 claim TTLs)", backend, log, ids, up, fleet.crashed)


async def test_a_worker_frozen_past_its_claim_ttl(chaos_dsn: str, spawn: Spawner,
                                                  log: str) -> None:
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 240, sleep=0.5)
        fleet = Fleet(spawn, chaos_dsn, ("--concurrency", "4", "--batch-size", "4"))
        await fleet.start(3)
        await at_least(log, 20)
        lead = await eventually(lambda: leader(backend), what="a leader")
        frozen = next(s for s in fleet.alive() if s.worker_id != lead)  # the reaper runs
        frozen.process.signal(signal.SIGSTOP)
        await asyncio.sleep(6)  # three claim TTLs: its leases expire and are reaped
        frozen.process.signal(signal.SIGCONT)
        thawed = time.time()
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []
        refused = frozen.process.output().count("refused: its lease moved on")
        await analyze("SIGSTOP 6 s (3 claim TTLs), then SIGCONT", backend, log, ids, thawed,
                      fleet.crashed,
                      notes=f"{refused} late results of the frozen worker refused")


async def test_rolling_sigterm_with_tasks_longer_than_the_drain(chaos_dsn: str, spawn: Spawner,
                                                               log: str) -> None:
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 48, sleep=4.0)
        fleet = Fleet(spawn, chaos_dsn, (*BUSY, "--drain-timeout", "1s"))
        await fleet.start(3)
        await eventually(lambda: len([e for e in runs(log) if e["event"] == "start"]) >= 24,
                         what="every slot busy")
        for slot in list(fleet.slots):
            await fleet.replace(slot)
            await asyncio.sleep(0.5)
        rolled = time.time()
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []
        released = sum(1 for e in runs(log) if e["event"] == "cancelled")
        assert released >= 8  # at least the first worker's runs outlived its drain
        await analyze("rolling SIGTERM, 4 s tasks, 1 s drain timeout", backend, log, ids,
                      rolled, fleet.crashed, notes=f"{released} runs released on a drain")


STEP = {"task": "tracked"}


def workflow(log: str) -> dict[str, object]:
    run = {"log": log, "sleep": 0.3}
    return {"steps": [
        {"name": "a", **STEP, "input": run},
        {"name": "b", **STEP, "input": run, "dependsOn": ["a"]},
        {"name": "c", **STEP, "input": run, "dependsOn": ["a"]},
        {"name": "d", **STEP, "input": run, "dependsOn": ["b", "c"]},
    ]}


async def steps(backend: Backend, workflow_id: UUID) -> dict[int, str]:
    rows = await backend.pool.fetch(
        "SELECT id, state::text FROM shoal.tasks WHERE workflow_id = $1", workflow_id)
    return {r["id"]: r["state"] for r in rows}


async def test_workflow_pause_and_cancel_under_load(chaos_dsn: str, spawn: Spawner,
                                                   log: str) -> None:
    async with database(chaos_dsn) as backend:
        client = Client(backend, app)
        plain = await enqueue(backend, log, 600, sleep=0.02)
        flows = [await client.submit_workflow(workflow(log), name=f"wf{i}") for i in range(12)]
        paused, cancelled, untouched = flows[:4], flows[4:8], flows[8:]
        fleet = Fleet(spawn, chaos_dsn, BUSY)
        await fleet.start(3)
        await at_least(log, 50)
        for workflow_id in paused:
            await client.pause(workflow_id, reason="chaos")
        paused_at = time.time()
        for workflow_id in cancelled:
            await client.cancel(workflow_id, reason="chaos")
        cancelled_at = time.time()
        await asyncio.sleep(2)
        resumed_at = time.time()
        for workflow_id in paused:
            await client.resume(workflow_id)
        total = len(plain) + 4 * len(flows)
        await settled(backend, total, within=120)
        await fleet.stop()
        assert fleet.exits == []
        by_flow = {w: await steps(backend, w) for w in flows}
        starts = [e for e in runs(log) if e["event"] == "start"]
        for workflow_id in cancelled:
            assert (await client.status(workflow_id)).state == "cancelled"
            late = [e for e in starts if e["task"] in by_flow[workflow_id]
                    and e["t"] > cancelled_at + 0.5]
            assert late == [], f"steps of a cancelled workflow started: {late}"
        for workflow_id in paused:
            held = [e for e in starts if e["task"] in by_flow[workflow_id]
                    and paused_at + 0.5 < e["t"] < resumed_at]
            assert held == [], f"steps of a paused workflow started: {held}"
        for workflow_id in paused + untouched:
            assert (await client.status(workflow_id)).state == "succeeded"
        ids = plain + [i for w in paused + untouched for i in by_flow[w]]
        await analyze("workflow pause and cancel under load", backend, log, ids,
                      resumed_at, fleet.crashed,
                      notes="4 paused 2 s, 4 cancelled, 4 untouched; 600 tasks")


async def test_poison_tasks_end_as_dead_letters_without_stalling_the_pool(
        chaos_dsn: str, spawn: Spawner, log: str) -> None:
    async with database(chaos_dsn) as backend:
        plain = await enqueue(backend, log, 600, sleep=0.02)
        kinds = ("nul", "nul", "exit", "hang", "hang")
        poison = await Client(backend, app).enqueue_many(
            [Job("poison", {"log": log, "kind": kind}) for kind in kinds])
        fleet = Fleet(spawn, chaos_dsn, ("--concurrency", "4", "--batch-size", "4"))
        await fleet.start(3)
        started = time.time()
        await settled(backend, len(plain) + len(poison), within=120)
        await fleet.stop()
        errors = [(await backend.get_task(i)).error or "" for i in poison]
        assert [e.split(":")[0] for e in errors] == [
            "result is not JSON", "result is not JSON", "lease expired (4 of 4 allowed)",
            "timed out after 2s", "timed out after 2s"], errors
        # the exit poison killed one worker per lease it got, then it was a dead letter
        assert [code for _id, code in fleet.exits] == [3] * 4
        await analyze("poison: NUL results, os._exit, hangs", backend, log, plain + poison,
                      started, fleet.crashed, expected_dead=poison,
                      notes="5 poison tasks dead-lettered; 4 worker exits by os._exit")


async def worker_connections(backend: Backend) -> int:
    return int(await backend.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'shoal worker %'"))


async def test_a_hundred_workers_on_one_postgres(chaos_dsn: str, spawn: Spawner,
                                                 log: str) -> None:
    async with database(chaos_dsn) as backend:
        ids = await enqueue(backend, log, 3000, sleep=0.01)
        fleet = Fleet(spawn, chaos_dsn, ("--concurrency", "4", "--batch-size", "4"),
                      claim_ttl="10s")
        started = time.time()
        await fleet.start(100)
        peak = 0

        async def registered() -> bool:
            nonlocal peak
            peak = max(peak, await worker_connections(backend))
            return bool(await backend.pool.fetchval("SELECT count(*) FROM shoal.workers")
                        == 100)

        await eventually(registered, within=180, interval=0.5, what="100 live workers")
        await settled(backend, len(ids), within=120)
        peak = max(peak, await worker_connections(backend))
        await fleet.stop()
        assert fleet.exits == []
        assert peak == 100  # one connection each: claims, reports, heartbeats and LISTEN
        assert (await states(backend))["succeeded"] == len(ids)
        await analyze("100 workers on one Postgres", backend, log, ids, started,
                      fleet.crashed, notes=f"peak {peak} worker connections; recovery: "
                                           "from the first start to the first run")


async def test_failover_to_a_promoted_standby(spawn: Spawner, log: str) -> None:
    """What CloudNativePG users live through on every upgrade: the primary stops, its
    streaming standby is promoted; workers and clients name both hosts and ask for the
    one that accepts writes."""
    with PostgresServer() as primary:
        primary.create_database("failover")
        standby = primary.standby()
        try:
            standby.start()
            dsn = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
                   "/failover?target_session_attrs=read-write")
            async with database(dsn) as backend:
                ids = await enqueue(backend, log, 3000, sleep=0.05)
                fleet = Fleet(spawn, dsn, BUSY)
                await fleet.start(3)
                await at_least(log, 0.3 * len(ids))
                await asyncio.to_thread(primary.stop, "fast")  # waits for the standby
                await asyncio.to_thread(standby.promote)
                promoted = time.time()
                await settled(backend, len(ids), within=120)
                await fleet.stop()
                assert fleet.exits == []
                await analyze("failover: standby promoted, old primary stopped", backend,
                              log, ids, promoted, fleet.crashed)
        finally:
            standby.destroy()


# -- gray failures: silent networks, a frozen leader, a newer version's rows -------------

GRAY_TTL = 4.0  # seconds; the pass interval is 1 s, a term lasts 3 s
PASS = 1.0
GRAY = ("--concurrency", "4", "--batch-size", "4")


async def spread_over(fleet: Fleet, backend: Backend, log: str, workers: int,
                      per_worker: int) -> list[int]:
    """Start `workers` and a leader, and give each worker `per_worker` 6 s tasks (ticking)
    and room for more: each task is enqueued alone once every worker is parked, so it
    is handed to the worker parked longest, which parks again behind the others."""
    await fleet.start(workers)
    await eventually(lambda: leader(backend), within=30, what="a leader")

    async def all_parked() -> bool:
        return bool(await backend.pool.fetchval(
            "SELECT count(*) FROM shoal.workers WHERE parked_channel IS NOT NULL") == workers)

    ids: list[int] = []
    for _ in range(workers * per_worker):
        await eventually(all_parked, within=30, what="every worker parked")
        ids += await enqueue(backend, log, 1, sleep=6.0, tick=0.1)
    await eventually(all_parked, within=30, what="every worker parked")
    held = Counter(await backend.pool.fetchval(
        "SELECT array_agg(worker_id) FROM shoal.tasks WHERE state = 'running'"))
    assert sorted(held.values()) == [per_worker] * workers, held
    return ids


@pytest.mark.parametrize("victims", ["a follower", "the leader", "every worker"])
async def test_a_silent_network(chaos_dsn: str, spawn: Spawner, log: str,
                                victims: str) -> None:
    """A black hole between some workers and Postgres for 2.5 claim TTLs, then healed:
    no bytes, no closed sockets. The cut-off workers go NotReady within TTL/2 and stop
    their handlers (6 s runs: longer than a TTL) at their leases' deadline
    (self-fencing); their tasks run again elsewhere within a TTL and a pass of expiry,
    whoever is cut off, the leader included (its term lapses and a follower takes
    over). With every worker cut off nothing can run again before the heal; then the
    workers give their lapsed leases up and the tasks run again at once. After the heal
    the cut-off workers carry on without a restart."""
    async with database(chaos_dsn) as backend:
        fleet = Fleet(spawn, chaos_dsn, GRAY, claim_ttl=f"{GRAY_TTL:g}s", proxied=True,
                      probed=True)
        ids = await spread_over(fleet, backend, log, 3, per_worker=2)
        lead = await leader(backend)
        cut = {"a follower": [next(s.worker_id for s in fleet.slots if s.worker_id != lead)],
               "the leader": [lead],
               "every worker": [s.worker_id for s in fleet.slots]}[victims]
        began = time.time()
        for worker_id in cut:
            fleet.proxies[worker_id].blackhole()
        fault = Fault(began, await leases_of(backend, cut))
        assert fault.expiries, "the cut-off workers held no lease"
        not_ready = max(await asyncio.gather(*(
            not_ready_after(fleet.ports[w], began, within=GRAY_TTL) for w in cut)))
        await asyncio.sleep(began + 2.5 * GRAY_TTL - time.time())
        for worker_id in cut:
            fleet.proxies[worker_id].heal()
        healed = time.time()
        for worker_id in cut:  # ready again, in the same process
            await eventually(lambda w=worker_id: answers(fleet.ports[w], "/readyz", 200),
                             within=30, what=f"{worker_id} ready again")
            output = fleet.slot(worker_id).process.output()
            assert "no answer from the database for" in output  # why it was not ready
            assert "database connection lost: no answer for" in output
        await settled(backend, len(ids), within=120)
        if victims == "every worker":  # no one could re-run anything before the heal
            assert min(e["t"] for e in runs(log) if e["event"] == "start"
                       and e["t"] > began) > healed
        await fleet.stop()
        assert fleet.exits == []  # no worker died of it
        fenced = sum(fleet.slot(w).process.output().count("not renewed within the claim TTL")
                     for w in cut)
        assert fenced >= len(fault.expiries)  # every cut-off run stopped itself
        report = await analyze(f"black hole between {victims} and Postgres, 2.5 TTLs",
                               backend, log, ids, healed, fleet.crashed, fault=fault,
                               not_ready=not_ready,
                               notes=f"TTL {GRAY_TTL:g} s; {fenced} handlers self-fenced")
    assert report.not_ready is not None and report.not_ready <= GRAY_TTL / 2
    assert report.overlap <= 1.0
    assert report.expiry_to_rerun is not None
    if victims == "every worker":  # nothing could run before the heal; at once after it
        assert report.recovery is not None and report.recovery <= 2 * PASS
    else:
        assert report.expiry_to_rerun <= GRAY_TTL + PASS


async def test_a_frozen_leader_while_a_follower_is_killed(chaos_dsn: str, spawn: Spawner,
                                                          log: str) -> None:
    """The finding: leadership was a session lock a frozen leader kept, and nothing was
    reaped until it thawed (41 s past expiry). Now its term lapses, a follower leads and
    reaps the killed follower's leases and the frozen leader's own; when the leader
    thaws it runs none of its handlers on, and does no maintenance under its old term."""
    async with database(chaos_dsn) as backend:
        fleet = Fleet(spawn, chaos_dsn, GRAY, claim_ttl=f"{GRAY_TTL:g}s")
        ids = await spread_over(fleet, backend, log, 3, per_worker=2)
        lead = fleet.slot(await leader(backend))
        victim = next(s for s in fleet.slots if s is not lead)
        began = time.time()
        lead.process.signal(signal.SIGSTOP)
        fleet.kill(victim)
        fault = Fault(began, await leases_of(backend, [lead.worker_id, victim.worker_id]))
        await asyncio.sleep(began + 4 * GRAY_TTL - time.time())
        lead.process.signal(signal.SIGCONT)
        thawed = time.time()
        await settled(backend, len(ids), within=120)
        await fleet.stop()
        assert fleet.exits == []
        output = lead.process.output()
        assert "no longer leading maintenance" in output
        report = await analyze("SIGSTOP the leader 4 TTLs, kill -9 a follower", backend,
                               log, ids, thawed, fleet.crashed, fault=fault,
                               notes=f"TTL {GRAY_TTL:g} s; the leader thawed after 16 s")
    assert report.overlap <= 1.0
    assert report.expiry_to_rerun is not None and report.expiry_to_rerun <= GRAY_TTL + PASS


async def test_rows_from_a_newer_version(chaos_dsn: str, spawn: Spawner, log: str) -> None:
    """A rolling upgrade's skew, written as a newer version would: workflow specs with
    keys this version does not know (read leniently: they run), specs it cannot read at
    all (they fail with UnreadableStoredSpec), and payloads its handler's model refuses
    (dead letters). The pool serves every other task and no worker exits."""
    async with database(chaos_dsn) as backend:
        client = Client(backend, app)
        plain = await enqueue(backend, log, 300, sleep=0.02)
        flows = [await client.submit_workflow(workflow(log), name=f"skew{i}") for i in range(6)]
        untouched, newer, unreadable = flows[:2], flows[2:4], flows[4:]
        for workflow_id in newer:
            await backend.pool.execute(NEWER_SPEC, workflow_id)
        for workflow_id, (skew, _reason) in zip(unreadable, UNREADABLE_SPECS.values(),
                                                strict=True):
            await backend.pool.execute(skew, workflow_id)
        refused = await backend.enqueue(  # by a newer producer: this app would refuse them
            [NewTask("add-strict", {"a": 1, "b": 2, "c": 3}),
             NewTask("add-strict", {"a": "x", "b": 1})])
        fleet = Fleet(spawn, chaos_dsn, BUSY)
        started = time.time()
        await fleet.start(3)
        total = len(plain) + 4 * len(flows) + len(refused)
        await settled(backend, total, within=120)
        await fleet.stop()
        assert fleet.exits == []  # the bound is one exit per worker; none happen
        for workflow_id in untouched + newer:
            assert (await client.status(workflow_id)).state == "succeeded"
        for workflow_id in unreadable:
            status = await client.status(workflow_id)
            assert status.state == "failed"
            assert (status.message or "").startswith("UnreadableStoredSpec: ")
        for task_id in refused:
            task = await backend.get_task(task_id)
            assert task.state == "dead" and (task.error or "").startswith("InvalidInput: ")
        by_flow = {w: await steps(backend, w) for w in untouched + newer}
        ids = plain + [i for w in by_flow for i in by_flow[w]]
        await analyze("rows from a newer version: specs, payloads", backend, log, ids, started,
                      fleet.crashed, notes="2 newer specs run, 2 unreadable fail their "
                                           "workflow, 2 refused payloads dead-letter")
