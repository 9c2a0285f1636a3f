"""The operator's NotifyHub against a real Postgres: one LISTEN connection, routed by channel."""

from __future__ import annotations

from functools import partial

from shoal.backend import Backend
from shoal_operator.backends import NotifyHub
from tests.support import eventually

LISTENERS = ("SELECT count(*) FROM pg_stat_activity"
             " WHERE query LIKE 'LISTEN%' AND datname = current_database()")


async def test_one_connection_routes_by_channel_and_payload(dsn: str) -> None:
    backend = await Backend.connect(dsn)
    hub = NotifyHub()
    got: dict[str, list[str]] = {"a": [], "b": [], "workflows": []}
    connects: list[str] = []
    try:
        q = backend.queries
        stop_a = hub.subscribe(backend, q.tasks_channel, "a", got["a"].append,
                               lambda: connects.append("a"))
        hub.subscribe(backend, q.tasks_channel, "b", got["b"].append, lambda: connects.append("b"))
        hub.subscribe(backend, q.workflows_channel, None, got["workflows"].append,
                      lambda: connects.append("workflows"))

        async def all_connected() -> bool:
            return sorted(connects) == ["a", "b", "workflows"]

        await eventually(all_connected, within=10, what="every subscriber's on_connect")
        assert await backend.pool.fetchval(LISTENERS) == 1

        for channel, payload in ((q.tasks_channel, "a"), (q.tasks_channel, "b"),
                                 (q.workflows_channel, "wf-1"), (q.tasks_channel, "c")):
            await backend.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

        async def delivered() -> bool:
            return got == {"a": ["a"], "b": ["b"], "workflows": ["wf-1"]}

        await eventually(delivered, within=10, what=f"routed notifications (got {got})")

        stop_a()
        await backend.pool.execute("SELECT pg_notify($1, 'a')", q.tasks_channel)
        await backend.pool.execute("SELECT pg_notify($1, 'b')", q.tasks_channel)

        async def b_again() -> bool:
            return got["b"] == ["b", "b"]

        await eventually(b_again, within=10, what="the second notification for b")
        assert got["a"] == ["a"]  # sent before b's, so it would have arrived by now
    finally:
        await hub.close()
        await backend.close()


async def test_last_unsubscribe_closes_the_connection(dsn: str) -> None:
    backend = await Backend.connect(dsn)
    hub = NotifyHub()
    connected: list[bool] = []
    try:
        stop = hub.subscribe(backend, backend.queries.tasks_channel, None, lambda _p: None,
                             lambda: connected.append(True))

        async def listening() -> bool:
            return bool(connected) and await backend.pool.fetchval(LISTENERS) == 1

        await eventually(listening, within=10, what="the LISTEN connection")
        stop()

        async def closed() -> bool:
            return await backend.pool.fetchval(LISTENERS) == 0

        await eventually(closed, within=10, what="the LISTEN connection to close")
    finally:
        await hub.close()
        await backend.close()


async def test_subscribers_hear_of_a_reconnect(dsn: str) -> None:
    """After the LISTEN connection drops, every subscriber's on_connect runs again,
    so a pool re-reads its backlog instead of missing what was enqueued meanwhile."""
    backend = await Backend.connect(dsn)
    hub = NotifyHub()
    connects: list[str] = []
    try:
        for pool in ("a", "b"):
            hub.subscribe(backend, backend.queries.tasks_channel, pool, lambda _p: None,
                          partial(connects.append, pool))

        async def connected(times: int) -> bool:
            return sorted(connects) == sorted(["a", "b"] * times)

        await eventually(lambda: connected(1), within=10, what="the first connect")
        await backend.pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND datname = current_database()")
        await eventually(lambda: connected(2), within=15, what="on_connect after the reconnect")
        assert await backend.pool.fetchval(LISTENERS) == 1
    finally:
        await hub.close()
        await backend.close()
