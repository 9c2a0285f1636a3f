"""Producers through transaction-mode PgBouncer (Debian's `pgbouncer`), workers direct.

A DSN marked `?prepared_statements=false` goes through a transaction pooler: the
client, the sync client, transactional enqueue and the CLI work through it with
more clients than the bouncer has server connections, and a real worker on a
direct DSN runs every task once. Unmarked, the failures are one-line errors that
say what to do; what needs a session refuses a marked DSN.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from shoal import App, Client, Job
from shoal import sync as shoal_sync
from shoal.backend import Backend, Endpoint
from shoal.errors import BackendUnavailable, InvalidInput, SessionRequired
from shoal.worker import Worker, WorkerConfig
from tests.backend.pgbouncer import PgBouncer, find_pgbouncer
from tests.support import cli, eventually, running_worker, task_states

POOL = 2  # the bouncer's server connections per database
MARK = "prepared_statements=false"
# What Shoal's session settings would need PgBouncer to ignore, unmarked.
SHOAL_STARTUP = ("jit", "tcp_keepalives_idle", "tcp_keepalives_interval",
                 "tcp_keepalives_count", "tcp_user_timeout")
ASYNC_CLIENTS, SYNC_CLIENTS, CALLERS = 12, 3, 6  # producers, each with connections of its own
EACH = 20  # tasks per producer


def bouncer(dsn: str, **options: Any) -> Iterator[PgBouncer]:
    if find_pgbouncer() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    with PgBouncer(dsn, pool_size=POOL, **options) as running:
        yield running


@pytest.fixture
def pgbouncer(dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode, PgBouncer's defaults otherwise (startup parameters it does not
    track are refused)."""
    yield from bouncer(dsn)


@pytest.fixture
def lenient_pgbouncer(dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode, ignoring the startup parameters Shoal sets on a session (as a
    guide for another client may have said to configure it)."""
    yield from bouncer(dsn, ignore_startup_parameters=SHOAL_STARTUP)


def database(dsn: str) -> str:
    return dsn.rpartition("/")[2]


class Pressure:
    """Samples `SHOW POOLS` while producers run: the most clients the bouncer held at
    once (active and waiting) and the most server connections it used."""

    def __init__(self, bouncer: PgBouncer, database: str) -> None:
        self.bouncer = bouncer
        self.database = database
        self.clients = self.servers = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.is_set():
            row = self.bouncer.pool(self.database)
            if row:
                self.clients = max(self.clients,
                                   int(row["cl_active"]) + int(row["cl_waiting"]))
                self.servers = max(self.servers, sum(int(row[k]) for k in (
                    "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")))
            time.sleep(0.02)

    def __enter__(self) -> Pressure:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def recording_app() -> tuple[App, list[int]]:
    """An app whose one task records its payload's id: the handler's own record."""
    app = App()
    ran: list[int] = []

    @app.task("record")
    async def record(payload: dict[str, int]) -> int:
        ran.append(payload["id"])
        return payload["id"]

    return app, ran


async def async_producer(url: str, first: int) -> list[int]:
    """EACH enqueues: one by one, then a batch; through a client of its own."""
    async with await Client.connect(url, max_size=2) as client:
        for i in range(first, first + EACH // 2):
            await client.enqueue("record", {"id": i})
        await client.enqueue_many([Job("record", {"id": i})
                                   for i in range(first + EACH // 2, first + EACH)])
    return list(range(first, first + EACH))


def sync_producer(url: str, first: int) -> list[int]:
    with shoal_sync.Client.connect(url, max_size=2) as client:
        for i in range(first, first + EACH):
            client.enqueue("record", {"id": i})
    return list(range(first, first + EACH))


async def transactional_producer(url: str, backend: Backend, first: int) -> list[int]:
    """EACH transactions on the caller's own connection (asyncpg's PgBouncer setting):
    an order row and its task; every third one rolls back, and its task must not exist."""
    conn = await asyncpg.connect(Endpoint.parse(url).dsn, statement_cache_size=0)
    client = Client(backend)
    committed = []
    try:
        for i in range(first, first + EACH):
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders VALUES ($1)", i)
                    await client.enqueue("record", {"id": i}, connection=conn)
                    if i % 3 == 0:
                        raise RuntimeError("the order is refused")
                committed.append(i)
            except RuntimeError:
                pass
    finally:
        await conn.close()
    return committed


async def test_producers_through_a_transaction_pooler_lose_nothing(
        dsn: str, backend: Backend, pgbouncer: PgBouncer) -> None:
    url = pgbouncer.dsn_for(database(dsn), MARK)
    app, ran = recording_app()
    await backend.pool.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    async with running_worker(app, dsn):  # the worker on a direct connection
        with Pressure(pgbouncer, database(dsn)) as pressure:
            groups = await asyncio.gather(
                *(async_producer(url, 1000 * (1 + n)) for n in range(ASYNC_CLIENTS)),
                *(asyncio.to_thread(sync_producer, url, 100_000 + 1000 * n)
                  for n in range(SYNC_CLIENTS)),
                *(transactional_producer(url, backend, 200_000 + 1000 * n)
                  for n in range(CALLERS)))
            by_cli = await cli("enqueue", "record", "--payload", '{"id": 7}', "--dsn", url,
                               "--force")
        assert by_cli.returncode == 0, by_cli.stderr
        expected = sorted([7, *(i for group in groups for i in group)])
        await eventually(lambda: len(ran) >= len(expected), within=60,
                         what=f"{len(expected)} handler runs")
        await asyncio.sleep(0.5)  # a duplicate run would show up by now
    assert sorted(ran) == expected  # every task ran once; no rolled-back one ran
    assert await task_states(backend) == {"succeeded": len(expected)}
    committed = [i for group in groups[-CALLERS:] for i in group]
    assert committed == [i for n in range(CALLERS)
                         for i in range(200_000 + 1000 * n, 200_000 + 1000 * n + EACH) if i % 3]
    assert await backend.pool.fetchval("SELECT count(*) FROM orders") == len(committed)
    # Pooling happened: more clients at once than the bouncer had server connections.
    assert pressure.clients > POOL >= pressure.servers > 0, vars(pressure)


async def test_waits_listen_on_a_session_dsn(dsn: str, backend: Backend,
                                             pgbouncer: PgBouncer) -> None:
    url = pgbouncer.dsn_for(database(dsn), MARK)
    app, _ = recording_app()
    async with running_worker(app, dsn):
        async with await Client.connect(url) as pooled:
            task_id = await pooled.enqueue("record", {"id": 1})
            with pytest.raises(SessionRequired) as refused:
                await pooled.wait(task_id, timeout=10)
        async with await Client.connect(url, listen_dsn=dsn) as client:
            assert await client.wait(task_id, timeout=30) == 1
    message = str(refused.value)
    assert "\n" not in message and "listen_dsn" in message and MARK in message, message


async def test_unmarked_dsn_fails_to_connect_saying_what_to_do(
        dsn: str, backend: Backend, pgbouncer: PgBouncer) -> None:
    url = pgbouncer.dsn_for(database(dsn))
    with pytest.raises(BackendUnavailable) as refused:
        await Client.connect(url)
    message = str(refused.value)
    assert "\n" not in message and "unsupported startup parameter" in message, message
    assert MARK in message, message
    by_cli = await cli("enqueue", "record", "--dsn", url, "--force")
    assert by_cli.returncode != 0 and len(by_cli.stderr.strip().splitlines()) == 1, by_cli
    assert MARK in by_cli.stderr, by_cli.stderr


async def producers_errors(url: str) -> list[BaseException]:
    """Run ASYNC_CLIENTS producers at once; the errors they raised."""
    outcomes = await asyncio.gather(
        *(async_producer(url, 1000 * (1 + n)) for n in range(ASYNC_CLIENTS)),
        return_exceptions=True)
    return [o for o in outcomes if isinstance(o, BaseException)]


async def test_prepared_statements_fail_unmarked_and_work_marked(
        dsn: str, backend: Backend, lenient_pgbouncer: PgBouncer) -> None:
    """Past the startup parameters, an unmarked DSN meets asyncpg's prepared statements
    on other server connections than the ones that prepared them: a one-line error
    naming the fix. Marked, the same producers lose nothing."""
    unmarked = await producers_errors(lenient_pgbouncer.dsn_for(database(dsn)))
    assert unmarked, "every producer got through unmarked"
    for error in unmarked:
        assert isinstance(error, SessionRequired), repr(error)
        assert "\n" not in str(error) and "prepared statement" in str(error), str(error)
        assert MARK in str(error), str(error)
    await backend.pool.execute("DELETE FROM shoal.tasks")
    assert await producers_errors(lenient_pgbouncer.dsn_for(database(dsn), MARK)) == []
    assert await task_states(backend) == {"ready": ASYNC_CLIENTS * EACH}


async def test_what_needs_a_session_refuses_a_marked_dsn(
        dsn: str, backend: Backend, pgbouncer: PgBouncer) -> None:
    url = pgbouncer.dsn_for(database(dsn), MARK)
    app, _ = recording_app()
    refusals: list[SessionRequired] = []
    with pytest.raises(SessionRequired) as worker:
        Worker(app, WorkerConfig(dsn=url, metrics_port=0))
    refusals.append(worker.value)
    pooled = await Backend.connect(url)
    try:
        with pytest.raises(SessionRequired) as migrate:
            await pooled.migrate()
        refusals.append(migrate.value)
    finally:
        await pooled.close()
    for refusal in refusals:
        assert "\n" not in str(refusal) and MARK in str(refusal), str(refusal)
    by_cli = await cli("migrate", "--dsn", url)
    assert by_cli.returncode == 2 and "needs a session" in by_cli.stderr, by_cli
    assert len(by_cli.stderr.strip().splitlines()) == 1, by_cli.stderr


def test_the_mark_is_read_and_removed_from_the_dsn() -> None:
    base = "postgresql://u:p%3Fw@h1:5432,h2:5432/db"
    assert Endpoint.parse(base) == Endpoint(base, False)
    assert Endpoint.parse(f"{base}?{MARK}") == Endpoint(base, True)
    assert Endpoint.parse(f"{base}?sslmode=require&prepared_statements=0&x=1") == \
        Endpoint(f"{base}?sslmode=require&x=1", True)
    assert Endpoint.parse(f"{base}?prepared_statements=true") == Endpoint(base, False)
    with pytest.raises(InvalidInput, match="prepared_statements=maybe"):
        Endpoint.parse(f"{base}?prepared_statements=maybe")
