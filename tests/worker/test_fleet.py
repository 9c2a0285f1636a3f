"""`shoal worker` processes against a real Postgres: 8 workers run 2400 tasks exactly
once; a worker killed with SIGKILL mid-task loses its task to another worker after the
claim TTL and its late result is refused; SIGTERM drains without losing anything; the
metrics endpoint serves Prometheus counters and health checks."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

from shoal import Client, Job
from shoal.backend import Backend, Outcome
from tests.apps.recorder import app, runs
from tests.cluster.postgres import free_port
from tests.support import Spawner, eventually, task_states


async def succeeded(backend: Backend, total: int) -> bool:
    return (await task_states(backend)).get("succeeded", 0) == total


def events(log: str, event: str) -> list[dict[str, object]]:
    return [e for e in runs(log) if e["event"] == event]


async def test_eight_workers_run_every_task_exactly_once(dsn: str, backend: Backend,
                                                         spawn: Spawner, log: str) -> None:
    total = 2400
    workers = [await spawn.worker(dsn, "--concurrency", "8", "--batch-size", "8",
                                  poll_interval="200ms") for _ in range(8)]
    # all eight are up (a worker registers before its first claim), then the work arrives
    await eventually(lambda: _count_workers(backend, 8), within=60, what="8 live workers")
    ids = await Client(backend, app).enqueue_many([Job("record", {"log": log})] * total)
    await eventually(lambda: succeeded(backend, total), within=180, what="2400 tasks")
    for w in workers:
        w.signal(signal.SIGTERM)
    assert [await w.wait() for w in workers] == [0] * 8
    started = Counter(e["task"] for e in events(log, "start"))
    done = Counter(e["task"] for e in events(log, "done"))
    assert set(started) == set(done) == set(ids)
    assert set(started.values()) == set(done.values()) == {1}  # no task ran twice
    rows = await backend.pool.fetch(
        "SELECT id, attempts, lease_token, (result->>'pid')::int AS pid FROM shoal.tasks")
    assert {(r["attempts"], r["lease_token"]) for r in rows} == {(1, 1)}
    ran_in = {e["task"]: e["pid"] for e in events(log, "done")}
    assert all(ran_in[r["id"]] == r["pid"] for r in rows)  # the result is the run's own
    pids = set(ran_in.values())
    assert pids <= {w.pid for w in workers} and len(pids) > 1
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == 0


async def test_sigkilled_worker_task_is_reclaimed_and_its_late_result_refused(
        dsn: str, backend: Backend, spawn: Spawner, log: str, tmp_path: Path) -> None:
    fast = tmp_path / "fast"
    doomed = await spawn.worker(dsn, claim_ttl="2s")
    task_id = await Client(backend, app).enqueue(
        "record", {"log": log, "sleep": 600, "fast_flag": str(fast)})
    await eventually(lambda: events(log, "start"), what="the task to start")
    held = await backend.get_task(task_id)
    assert (held.state, held.worker_id, held.attempts) == ("running", doomed.worker_id, 1)
    survivor = await spawn.worker(dsn, claim_ttl="2s")
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait() == -signal.SIGKILL
    await asyncio.to_thread(fast.touch)  # the next attempt finishes at once
    await eventually(lambda: succeeded(backend, 1), within=60, what="the task to be reclaimed")
    task = await backend.get_task(task_id)
    # a crash is not a failure: the killed run's attempt is not counted, one lease
    # expiry is; the expiry and the new claim each moved the token on
    assert (task.attempts, task.expiries, task.lease_token, task.worker_id) == (
        1, 1, held.lease_token + 2, survivor.worker_id)
    assert task.result == {"pid": survivor.pid, "attempt": 1}
    assert [(e["event"], e["pid"], e["attempt"]) for e in runs(log)] == [
        ("start", doomed.pid, 1), ("start", survivor.pid, 1), ("done", survivor.pid, 1)]
    # The killed worker's late completion (or failure) carries the old lease token.
    late = [Outcome(task_id, held.lease_token, result_json='{"late": true}'),
            Outcome(task_id, held.lease_token, error="late failure", retry_in_seconds=0)]
    for outcome in late:
        assert await backend.report([outcome]) == set()
    after = await backend.get_task(task_id)
    assert (after.state, after.result, after.error) == ("succeeded", task.result, None)
    survivor.signal(signal.SIGTERM)
    assert await survivor.wait() == 0


async def test_drain_timeout_releases_unfinished_tasks_without_using_attempts(
        dsn: str, backend: Backend, spawn: Spawner, log: str, tmp_path: Path) -> None:
    fast = tmp_path / "fast"
    worker = await spawn.worker(dsn, "--concurrency", "4", "--drain-timeout", "1s")
    ids = await Client(backend, app).enqueue_many(
        [Job("record", {"log": log, "sleep": 600, "fast_flag": str(fast)})] * 4)
    await eventually(lambda: len(events(log, "start")) == 4, what="4 tasks to start")
    worker.signal(signal.SIGTERM)
    assert await worker.wait(within=30) == 0
    assert "drained" in worker.output()
    rows = [await backend.get_task(i) for i in ids]
    assert {(t.state, t.attempts, t.worker_id) for t in rows} == {("ready", 0, None)}
    assert len(events(log, "cancelled")) == 4
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == 0
    await asyncio.to_thread(fast.touch)
    successor = await spawn.worker(dsn)
    await eventually(lambda: succeeded(backend, 4), what="another worker to finish them")
    done = [await backend.get_task(i) for i in ids]
    assert {(t.attempts, t.result["pid"]) for t in done} == {(1, successor.pid)}
    assert sorted(e["task"] for e in events(log, "done")) == sorted(ids)
    successor.signal(signal.SIGTERM)
    assert await successor.wait() == 0


async def test_drain_finishes_in_flight_tasks_and_claims_nothing_new(
        dsn: str, backend: Backend, spawn: Spawner, log: str) -> None:
    worker = await spawn.worker(dsn, "--concurrency", "4", "--batch-size", "4",
                                "--drain-timeout", "60s")
    ids = await Client(backend, app).enqueue_many([Job("record", {"log": log, "sleep": 2})] * 6)
    await eventually(lambda: len(events(log, "start")) == 4, what="4 tasks to start")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    started = {e["task"] for e in events(log, "start")}
    assert {e["task"] for e in events(log, "done")} == started and events(log, "cancelled") == []
    states = {i: (await backend.get_task(i)).state for i in ids}
    assert {states[i] for i in started} == {"succeeded"}
    assert {s for i, s in states.items() if i not in started} == {"ready"}  # never claimed


async def test_metrics_and_health_endpoints(dsn: str, backend: Backend, spawn: Spawner,
                                            log: str) -> None:
    port = free_port()
    worker = await spawn.worker(dsn, "--metrics-port", str(port), "--metrics-host",
                                "127.0.0.1")
    client = Client(backend, app)
    ids = await client.enqueue_many([Job("record", {"log": log})] * 3
                                    + [Job("permanent", {"log": log})])
    await eventually(lambda: _all_finished(backend, ids), what="the tasks to finish")

    async def scrape() -> str | None:
        status, body = await http_get(port, "/metrics")
        ok = status == 200 and 'shoal_tasks_finished_total{outcome="dead",task="permanent"}' \
            in body
        return body if ok else None

    body = await eventually(scrape, what="metrics reflecting the finished tasks")
    for line in ['shoal_tasks_claimed_total{task="record"} 3.0',
                 'shoal_tasks_claimed_total{task="permanent"} 1.0',
                 'shoal_tasks_finished_total{outcome="succeeded",task="record"} 3.0',
                 'shoal_tasks_finished_total{outcome="dead",task="permanent"} 1.0',
                 'shoal_task_duration_seconds_count{task="record"} 3.0',
                 "shoal_tasks_in_flight 0.0",
                 "shoal_claim_latency_seconds_count 4.0",
                 "shoal_leases_lost_total 0.0"]:
        assert line in body.splitlines(), line
    assert await http_get(port, "/healthz") == (200, "ok\n")
    assert await http_get(port, "/readyz") == (200, "ready\n")
    assert (await http_get(port, "/nope"))[0] == 404
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def http_get(port: int, path: str) -> tuple[int, str]:
    """A plain HTTP/1.1 GET (the endpoint is tiny; no client library needed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def _all_finished(backend: Backend, ids: list[int]) -> bool:
    states = [(await backend.get_task(i)).state for i in ids]
    return all(s in ("succeeded", "dead") for s in states)


async def _count_workers(backend: Backend, n: int) -> bool:
    return await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == n
