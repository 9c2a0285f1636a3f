"""Readiness against a real Postgres of its own: a worker's /readyz answers 503 within
one probe period (1 s, the Deployment's readiness periodSeconds) of the database going
away and 200 again once it is back, while /healthz (liveness) stays 200 throughout:
a database outage must take workers out of rotation, never get them restarted."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from shoal import Client
from shoal.backend import Backend
from tests.apps.recorder import app
from tests.cluster.postgres import PostgresServer, free_port
from tests.support import Spawner, eventually, task_in
from tests.worker.test_fleet import http_get

PROBE_PERIOD = 1.0  # seconds: the worker Deployment's readinessProbe.periodSeconds


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server this test may stop and start without disturbing the others."""
    with PostgresServer(max_connections=20) as server:
        yield server


async def status(port: int, path: str) -> int:
    return (await http_get(port, path))[0]


async def answers(port: int, path: str, code: int) -> bool:
    return await status(port, path) == code


async def test_readyz_follows_the_database_and_healthz_stays_up(
        own_postgres: PostgresServer, spawn: Spawner, log: str) -> None:
    dsn = own_postgres.create_database("ready")
    backend = await Backend.connect(dsn)
    await backend.migrate()
    await backend.close()
    port = free_port()
    worker = await spawn.worker(dsn, "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                                claim_ttl="10s")
    await eventually(lambda: answers(port, "/readyz", 200), what="the worker to be ready")
    for mode in ("fast", "immediate"):
        await asyncio.to_thread(own_postgres.stop, mode)
        await eventually(lambda: answers(port, "/readyz", 503), within=PROBE_PERIOD,
                         interval=0.05, what=f"/readyz 503 after a {mode} stop")
        assert await status(port, "/healthz") == 200
        await asyncio.sleep(2 * PROBE_PERIOD)  # still not ready while the database is down
        assert await status(port, "/readyz") == 503
        assert await status(port, "/healthz") == 200
        await asyncio.to_thread(own_postgres.start)
        await eventually(lambda: answers(port, "/readyz", 200), within=15,
                         what=f"/readyz 200 after the {mode} stop's restart")
    # and it works: a task enqueued now runs
    backend = await Backend.connect(dsn)
    try:
        task_id = await Client(backend, app).enqueue("record", {"log": log})
        await eventually(lambda: task_in(backend, task_id, "succeeded"), what="a task")
    finally:
        await backend.close()
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_not_ready_until_the_database_answers_at_start_up(spawn: Spawner) -> None:
    port = free_port()
    with PostgresServer(max_connections=20) as server:
        dsn = server.create_database("late")
        server.stop("fast")
        worker = await spawn.worker(dsn, "--metrics-port", str(port), "--metrics-host",
                                    "127.0.0.1")
        await eventually(lambda: answers(port, "/healthz", 200), what="the endpoint")
        assert await status(port, "/readyz") == 503
        await eventually(lambda: "database not ready (attempt 2" in worker.output(),
                         what="a second attempt")
        await asyncio.to_thread(server.start)
        # up, but not migrated: still waiting, saying what to do
        await eventually(lambda: "run `shoal migrate`" in worker.output(), what="the advice")
        assert await status(port, "/readyz") == 503
        backend = await Backend.connect(dsn)
        await backend.migrate()
        await backend.close()
        await eventually(lambda: answers(port, "/readyz", 200), within=30,
                         what="ready once migrated")
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
