"""One backlog statement per database per evaluation round, counted by a real Postgres.

The server of this module loads pg_stat_statements, which counts every
statement the operator's `BacklogReader` sends; the pools' figures are
checked against what was enqueued.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from shoal.backend import Backend, Backlog, NewTask
from shoal_operator.pools.autoscaler import BacklogReader, Selector
from tests.cluster.postgres import PostgresServer

# pg_stat_statements keeps a statement's text with its constants replaced, so
# each backlog statement is found by a fragment only it has.
CALLS = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE strpos(query, $1) > 0"
         " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
BATCHED = "unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY"
SINGLE = "AND t.tags <@ $2::text[]"


@pytest.fixture(scope="module")
def counting_server() -> Iterator[PostgresServer]:
    with PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}) as server:
        yield server


@pytest.fixture
async def backend(counting_server: PostgresServer) -> AsyncIterator[Backend]:
    b = await Backend.connect(counting_server.create_database("reader"))
    await b.migrate()
    await b.pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    yield b
    await b.close()


async def calls(backend: Backend) -> tuple[int, int]:
    """(batched backlog statements, single-pool backlog statements) run so far."""
    assert BATCHED in backend.queries.backlogs and SINGLE in backend.queries.backlog
    return (int(await backend.pool.fetchval(CALLS, BATCHED)),
            int(await backend.pool.fetchval(CALLS, SINGLE)))


async def test_several_pools_on_one_database_cost_one_statement_per_round(
        backend: Backend) -> None:
    await backend.enqueue([NewTask("resize", None, namespace="images") for _ in range(3)]
                          + [NewTask("resize", None, namespace="images", tags=["gpu"])]
                          + [NewTask("mail", None, namespace="mail") for _ in range(2)])
    pools: list[Selector] = [
        ("images", (), None), ("images", ("gpu",), None), ("images", ("gpu",), ("thumbnail",)),
        ("mail", (), None), ("mail", (), ("resize",)), ("empty", (), None),
        ("images", (), None)]  # a second pool with the first one's selector
    await backend.pool.execute("SELECT pg_stat_statements_reset()")
    reader = BacklogReader(backend)

    figures = await asyncio.gather(*(reader.read(p) for p in pools))

    assert [f.ready for f in figures] == [3, 4, 0, 2, 0, 0, 3]
    assert figures[0] == Backlog(ready=3, running=0, waiting=0, dead=0)
    assert await calls(backend) == (1, 0)
    await asyncio.gather(*(reader.read(p) for p in pools[:3]))
    await reader.read(pools[3])  # alone, in a round of its own
    assert await calls(backend) == (3, 0)
    await backend.backlog("images", [])  # what each pool's scaler used to send
    assert await calls(backend) == (3, 1)
