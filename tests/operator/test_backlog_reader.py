"""One backlog statement per database per evaluation round, counted by a real Postgres.

The server of this module loads pg_stat_statements, which counts every
statement the operator's `BacklogReader` sends; the pools' figures are
checked against what was enqueued.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from shoal.backend import Backend, NewTask, PoolTasks
from shoal_operator.pools.autoscaler import BacklogReader
from tests.cluster.postgres import PostgresServer

# pg_stat_statements keeps a statement's text with its constants replaced, so
# each statement is found by a fragment only it has.
CALLS = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE strpos(query, $1) > 0"
         " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
BACKLOGS = "AS s(namespace, tags, names, lead, pool)"
FLOWS = "ORDER BY t.finished_at DESC LIMIT"
SCHEDULES = "FROM shoal.periodic p LEFT JOIN"


@pytest.fixture(scope="module")
def counting_server() -> Iterator[PostgresServer]:
    with PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}) as server:
        yield server


@pytest.fixture
async def backend(counting_server: PostgresServer, request: pytest.FixtureRequest
                  ) -> AsyncIterator[Backend]:
    name = request.node.name.removeprefix("test_")[:60]
    b = await Backend.connect(counting_server.create_database(name))
    await b.migrate()
    await b.pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    yield b
    await b.close()


async def calls(backend: Backend, fragment: str) -> int:
    """How many statements containing `fragment` ran so far (it names one statement)."""
    q = backend.queries
    assert [fragment in sql for sql in (q.backlogs, q.flows, q.list_periodic)].count(True) == 1
    return int(await backend.pool.fetchval(CALLS, fragment))


async def test_several_pools_on_one_database_cost_one_statement_per_round(
        backend: Backend) -> None:
    await backend.enqueue([NewTask("resize", None, namespace="images") for _ in range(3)]
                          + [NewTask("resize", None, namespace="images", tags=["gpu"])]
                          + [NewTask("mail", None, namespace="mail") for _ in range(2)])
    pools = [
        PoolTasks("images"), PoolTasks("images", ("gpu",)),
        PoolTasks("images", ("gpu",), ("thumbnail",)), PoolTasks("mail"),
        PoolTasks("mail", (), ("resize",)), PoolTasks("empty"),
        PoolTasks("images")]  # a second pool with the first one's tasks
    await backend.pool.execute("SELECT pg_stat_statements_reset()")
    reader = BacklogReader(backend)

    figures = [r.backlog for r in await asyncio.gather(*(reader.read(p) for p in pools))]

    assert [f.ready for f in figures] == [3, 4, 0, 2, 0, 0, 3]
    first = figures[0]
    assert (first.ready, first.running, first.waiting, first.dead, first.due) == (3, 0, 0, 0, 0)
    assert await calls(backend, BACKLOGS) == 1
    await asyncio.gather(*(reader.read(p) for p in pools[:3]))
    await reader.read(pools[3])  # alone, in a round of its own
    assert await calls(backend, BACKLOGS) == 3
    await backend.backlog("images", [])  # one pool, the same statement
    assert await calls(backend, BACKLOGS) == 4
    assert await calls(backend, SCHEDULES) == 1  # read with the first round only


async def test_flows_are_read_for_the_pools_that_ask_at_most_every_interval(
        backend: Backend) -> None:
    await backend.enqueue([NewTask("resize", None, namespace="images") for _ in range(2)])
    await backend.pool.execute("SELECT pg_stat_statements_reset()")
    reader = BacklogReader(backend)
    latency, by_count = PoolTasks("images"), PoolTasks("mail")

    first, other = await asyncio.gather(reader.read(latency, 30.0, target=30.0),
                                        reader.read(by_count, 30.0))
    assert other.flows is None and first.flows is not None
    assert [(f.name, f.ready, f.arrivals) for f in first.flows] == [("resize", 2, 2)]
    assert (await calls(backend, FLOWS), await calls(backend, BACKLOGS)) == (1, 1)
    again = await reader.read(latency, 30.0, target=30.0)  # within the interval: cached
    assert again.flows == first.flows
    assert (await calls(backend, FLOWS), await calls(backend, BACKLOGS)) == (1, 2)
    await reader.read(PoolTasks("mail", ("x",)), 30.0, target=30.0)  # never read: read now
    assert await calls(backend, FLOWS) == 2
