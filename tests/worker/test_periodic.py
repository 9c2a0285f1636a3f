"""Periodic schedules against a real Postgres: one enqueue per tick whatever the number
of workers (8 schedulers on a clock that jumps; 8 `shoal worker` processes on a
schedule every second), only the latest missed tick after an outage, and the
schedules with their next run in `shoal periodic list`."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoal import App
from shoal.backend import Backend, TaskFilter
from shoal.worker.periodic import PeriodicScheduler
from tests.support import REPO, Spawner, cli, eventually

T0 = datetime(2030, 1, 1, 9, 40, tzinfo=UTC)
PERIODIC_APP = f"{REPO}/tests/apps/periodic.py:app"


class Clock:
    """The time every scheduler reads; the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def hourly_app() -> App:
    app = App()

    @app.task("report", cron="0 * * * *", tags=["batch"])
    async def report(payload: dict[str, str]) -> None: ...

    app.periodic("report", name="report-riga", cron="0 9 * * *", timezone="Europe/Riga",
                 payload={"region": "riga"}, priority=7)
    return app


async def enqueued(backend: Backend) -> list[tuple[str, str]]:
    rows = await backend.pool.fetch(
        "SELECT idempotency_key, payload::text FROM shoal.tasks ORDER BY id")
    return [(r["idempotency_key"], r["payload"]) for r in rows]


async def test_eight_schedulers_enqueue_each_tick_once(dsn: str) -> None:
    app = hourly_app()
    clock = Clock(T0)
    backends = [await Backend.connect(dsn, max_size=2) for _ in range(8)]
    try:
        await backends[0].migrate()
        schedulers = [PeriodicScheduler(b, "default", app.schedules, clock) for b in backends]

        async def everyone_at(now: datetime) -> None:
            clock.now = now
            await asyncio.gather(*(s.run_once() for s in schedulers))

        await everyone_at(T0)  # first declaration: nothing before it runs
        assert await enqueued(backends[0]) == []
        # Through 10:00, 11:00 and 12:00, looking every 20 minutes, some of the
        # schedulers a little late.
        for minutes in range(20, 181, 20):
            await everyone_at(T0 + timedelta(minutes=minutes))
        hourly = [f"periodic:report:2030-01-01T{h}:00:00Z" for h in (10, 11, 12)]
        assert [key for key, _ in await enqueued(backends[0])] == hourly
        # An outage: the clock jumps from 12:40 to 23:10 the next day. One run (23:00),
        # not 35 — and the 09:00 Riga schedule (07:00 UTC) runs once, not twice.
        await everyone_at(datetime(2030, 1, 2, 23, 10, tzinfo=UTC))
        after_jump = sorted(key for key, _ in (await enqueued(backends[0]))[3:])
        assert after_jump == ["periodic:report-riga:2030-01-02T07:00:00Z",
                              "periodic:report:2030-01-02T23:00:00Z"]
        # The clock goes back an hour (a corrected host): nothing is enqueued again.
        await everyone_at(datetime(2030, 1, 2, 22, 5, tzinfo=UTC))
        await everyone_at(datetime(2030, 1, 2, 23, 30, tzinfo=UTC))
        assert len(await enqueued(backends[0])) == 5
        await everyone_at(datetime(2030, 1, 3, 0, 0, 1, tzinfo=UTC))
        keys = [key for key, _ in await enqueued(backends[0])]
        assert keys[5:] == ["periodic:report:2030-01-03T00:00:00Z"]
        assert len(keys) == len(set(keys)) == 6
        riga = await backends[0].pool.fetchrow(
            "SELECT payload, priority, tags FROM shoal.tasks WHERE idempotency_key LIKE "
            "'periodic:report-riga:%'")
        assert (riga["payload"], riga["priority"], riga["tags"]) == ({"region": "riga"}, 7,
                                                                     ["batch"])
        (status,) = [s for s in await backends[0].list_periodic() if s.name == "report"]
        assert status.last_tick == datetime(2030, 1, 3, 0, 0, tzinfo=UTC)
        assert status.last_state == "ready" and status.last_task_id is not None
    finally:
        for b in backends:
            await b.close()


async def test_eight_worker_processes_enqueue_each_second_once(
        dsn: str, backend: Backend, spawn: Spawner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "ticks.jsonl"
    monkeypatch.setenv("SHOAL_TEST_PERIODIC_LOG", str(log))
    workers = [await spawn.worker(dsn, app=PERIODIC_APP) for _ in range(8)]
    await eventually(lambda: log.exists() and len(log.read_text().splitlines()) >= 6,
                     within=60, what="six periodic runs")
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait() == 0, worker.output()
    keys = [r["idempotency_key"] for r in await backend.pool.fetch(
        "SELECT idempotency_key FROM shoal.tasks WHERE name = 'tick'")]
    ticks = sorted(datetime.strptime(key, "periodic:tick:%Y-%m-%dT%H:%M:%SZ") for key in keys)
    assert len(ticks) == len(set(ticks)) >= 6  # one task per tick
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(gap == timedelta(seconds=1) for gap in gaps), gaps  # and every tick has one
    tasks = await backend.list_tasks(TaskFilter(name="tick"), limit=1000)
    runs = [json.loads(line)["task"] for line in log.read_text().splitlines()]
    assert len(runs) == len(set(runs))  # each ran once
    assert set(runs) <= {t.id for t in tasks}
    listed = await cli("periodic", "list", "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "TASK", "CRON", "TIMEZONE", "LAST", "TICK",
                              "LAST", "TASK", "NEXT", "RUN", "DECLARED"]
    assert row.split()[:8] == ["default", "tick", "tick", "*", "*", "*", "*", "*"]

