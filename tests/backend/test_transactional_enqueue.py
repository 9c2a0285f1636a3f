"""Enqueue on the caller's own connection, inside its transaction: the task exists if
and only if the transaction commits, and the wake-up NOTIFY arrives on commit only."""

from __future__ import annotations

import json

import asyncpg
import pytest

from shoal import Client, Job
from shoal.backend import Backend, WorkerIdentity
from tests.support import task_states

PARKED = WorkerIdentity(id="idle", namespace="default", tags=(), task_names=("echo",),
                        concurrency=1, max_attempts=(1,), channel="shoal_handoff_test")


class Wakeups:
    """A LISTEN connection on the tasks channel, as an idle worker has one."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.heard: list[str] = []

    async def start(self, channel: str) -> Wakeups:
        await self.conn.add_listener(channel, lambda *args: self.heard.append(args[3]))
        return self

    async def settle(self) -> list[str]:
        """What was heard, once anything sent before now has had time to arrive."""
        await self.conn.execute("SELECT 1")  # a round trip: earlier notifications arrive first
        return self.heard


@pytest.fixture
async def listener(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def caller(dsn: str) -> asyncpg.Connection:
    """The producer's own connection, with a jsonb codec of its own as apps often set."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    yield conn
    await conn.close()


async def test_committed_tasks_exist_and_wake_workers_on_commit(
        backend: Backend, caller: asyncpg.Connection, listener: asyncpg.Connection) -> None:
    client = Client(backend)
    wakeups = await Wakeups(listener).start(backend.queries.tasks_channel)
    await backend.heartbeat(PARKED, [], 30, 0, False)
    await backend.claim(PARKED, 1, 30)  # an idle worker, parked for a handoff
    assert await backend.pool.fetchval("SELECT parked_channel FROM shoal.workers") == \
        PARKED.channel
    await caller.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    async with caller.transaction():
        await caller.execute("INSERT INTO orders VALUES (42)")
        task_id = await client.enqueue("echo", {"order": 42, "lines": [1, 2]},
                                       connection=caller)
        more = await client.enqueue_many([Job("echo", 1), Job("echo", 2)], connection=caller)
        assert await backend.pool.fetchval(
            "SELECT count(*) FROM shoal.tasks") == 0  # invisible to others before commit
        assert await wakeups.settle() == []  # and no one was woken yet
    assert await wakeups.settle() == ["default"]  # one notification, delivered on commit
    row = await client.task(task_id)
    assert (row.state, row.payload, row.worker_id) == ("ready", {"order": 42, "lines": [1, 2]},
                                                          None)  # handed to no worker
    assert [(await client.task(i)).payload for i in more] == [1, 2]
    assert await task_states(backend) == {"ready": 3}
    # The worker stayed parked: its row was not taken for a handoff (which would have
    # held its lock until the caller's commit).
    assert await backend.pool.fetchval("SELECT parked_channel FROM shoal.workers") == \
        PARKED.channel


async def test_a_rolled_back_transaction_leaves_no_task(
        backend: Backend, caller: asyncpg.Connection, listener: asyncpg.Connection) -> None:
    client = Client(backend)
    wakeups = await Wakeups(listener).start(backend.queries.tasks_channel)
    with pytest.raises(RuntimeError, match="payment declined"):
        async with caller.transaction():
            await client.enqueue("echo", {"order": 7}, connection=caller)
            await client.enqueue("echo", {"order": 7}, idempotency_key="order-7",
                                 connection=caller)
            raise RuntimeError("payment declined")
    assert await task_states(backend) == {}
    assert await wakeups.settle() == []
    # The key was never taken: the same enqueue succeeds later.
    task_id = await client.enqueue("echo", {"order": 7}, idempotency_key="order-7")
    assert (await client.task(task_id)).state == "ready"


async def test_a_key_enqueued_before_is_found_in_the_transaction(
        backend: Backend, caller: asyncpg.Connection) -> None:
    client = Client(backend)
    first = await client.enqueue("echo", 1, idempotency_key="k")
    async with caller.transaction():
        again = await client.enqueue("echo", 2, idempotency_key="k", connection=caller)
    assert again == first and (await client.task(first)).payload == 1

