"""Idempotency scopes: a key held forever (the default), while its task is active
(`unique="active"`: free again once the task succeeded, was cancelled or is dead), or
per clock-aligned period. Race-safe: concurrent enqueues of one key make one task,
and an enqueue racing with a transaction that inserts or ends the key's holder waits
for it, as the unique index makes it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from shoal import Client
from shoal.backend import Backend, DeadLetterFilter, Outcome, WorkerIdentity
from shoal.client import Job
from tests.support import cli

WORKER = WorkerIdentity(id="w1", namespace="default", tags=(), task_names=("echo",),
                        concurrency=10, max_attempts=(1,))


async def finish(backend: Backend, task_id: int, error: str | None = None) -> None:
    """Claim the (only ready) task and report it: succeeded, or dead with `error`."""
    (claimed,) = await backend.claim(WORKER, 1, 30)
    assert claimed.id == task_id
    await backend.report([Outcome(task_id, claimed.lease_token, error=error)])


async def test_an_active_key_is_free_again_once_its_task_ended(backend: Backend) -> None:
    client = Client(backend)
    first = await client.enqueue("echo", 1, idempotency_key="k", unique="active")
    assert await client.enqueue("echo", 2, idempotency_key="k", unique="active") == first
    await client.cancel_task(first)
    second = await client.enqueue("echo", 3, idempotency_key="k", unique="active")
    assert second != first
    assert await client.enqueue("echo", 4, idempotency_key="k", unique="active") == second
    await finish(backend, second)
    third = await client.enqueue("echo", 5, idempotency_key="k", unique="active")
    await finish(backend, third, error="boom")
    assert (await client.task(third)).state == "dead"
    fourth = await client.enqueue("echo", 6, idempotency_key="k", unique="active")
    assert len({first, second, third, fourth}) == 4
    assert [(await client.task(i)).payload for i in (first, second, third, fourth)] == [
        1, 3, 5, 6]
    # Another namespace is another key.
    elsewhere = Client(backend, namespace="batch")
    assert await elsewhere.enqueue("echo", 7, idempotency_key="k", unique="active") != fourth


async def test_a_permanent_key_stays_held_and_scopes_are_apart(backend: Backend) -> None:
    client = Client(backend)
    forever = await client.enqueue("echo", 1, idempotency_key="f")
    await client.cancel_task(forever)
    assert await client.enqueue("echo", 2, idempotency_key="f") == forever
    # A key of one scope is not a key of the other.
    active = await client.enqueue("echo", 3, idempotency_key="f", unique="active")
    assert active != forever
    assert await client.enqueue("echo", 4, idempotency_key="f") == forever
    # One batch: repeated keys get one task, per namespace and scope.
    ids = await client.enqueue_many([
        Job("echo", 5, idempotency_key="b", unique="active"),
        Job("echo", 6),
        Job("echo", 7, idempotency_key="b", unique="active"),
        Job("echo", 8, idempotency_key="f"),
        Job("echo", 9, idempotency_key="f", unique="active"),
        Job("echo", 10, idempotency_key="b")])
    assert ids[0] == ids[2] and ids[3:5] == [forever, active]
    assert len({ids[0], ids[1], ids[5], forever, active}) == 5
    assert [(await client.task(i)).payload for i in (ids[0], ids[1], ids[5])] == [5, 6, 10]


async def active_holders(backend: Backend, key: str) -> list[int]:
    return [r["id"] for r in await backend.pool.fetch(
        "SELECT id FROM shoal.tasks WHERE active_key = $1 "
        "AND state NOT IN ('succeeded', 'cancelled', 'dead')", key)]


async def test_concurrent_enqueues_of_one_key_make_one_task(backend: Backend) -> None:
    """20 producers on 20 connections at once, five times, ending the holder between."""
    client = Client(backend)
    start = asyncio.Event()

    async def produce(n: int) -> int:
        await start.wait()
        return await client.enqueue("echo", n, idempotency_key="hot", unique="active")

    previous: set[int] = set()
    for _ in range(5):
        start.clear()
        producers = [asyncio.create_task(produce(n)) for n in range(20)]
        await asyncio.sleep(0.05)
        start.set()
        ids = set(await asyncio.gather(*producers))
        assert len(ids) == 1 and not ids & previous
        assert await active_holders(backend, "hot") == list(ids)
        await client.cancel_task(ids.pop())
        previous |= set(await active_holders(backend, "hot")) | ids
    assert await backend.pool.fetchval(
        "SELECT count(*) FROM shoal.tasks WHERE active_key = 'hot'") == 5


async def racing(dsn: str, client: Client, theirs: Callable[[asyncpg.Connection], Awaitable[Any]],
                 commit: bool) -> int:
    """Our enqueue of key `k` while another transaction has run `theirs` and not ended:
    ours must wait for it, then see its outcome (`commit`, or a rollback)."""
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await theirs(conn)
        ours = asyncio.create_task(
            client.enqueue("echo", 2, idempotency_key="k", unique="active"))
        await asyncio.sleep(0.3)
        assert not ours.done()  # waiting for their transaction
        await (tx.commit() if commit else tx.rollback())
        return await asyncio.wait_for(ours, 10)
    finally:
        await conn.close()


@pytest.mark.parametrize("commit", [True, False])
async def test_an_enqueue_waits_for_a_transaction_that_inserts_the_key(
        dsn: str, backend: Backend, commit: bool) -> None:
    client = Client(backend)
    theirs: list[int] = []

    async def insert(conn: asyncpg.Connection) -> None:
        theirs.append(await client.enqueue("echo", 1, idempotency_key="k", unique="active",
                                           connection=conn))

    task_id = await racing(dsn, client, insert, commit)
    assert (task_id == theirs[0]) is commit
    assert await active_holders(backend, "k") == [task_id]


@pytest.mark.parametrize("commit", [True, False])
async def test_an_enqueue_waits_for_a_transaction_that_ends_the_holder(
        dsn: str, backend: Backend, commit: bool) -> None:
    client = Client(backend)
    holder = await client.enqueue("echo", 1, idempotency_key="k", unique="active")

    async def cancel(conn: asyncpg.Connection) -> None:
        await conn.execute("UPDATE shoal.tasks SET state = 'cancelled', finished_at = now() "
                           "WHERE id = $1", holder)

    task_id = await racing(dsn, client, cancel, commit)
    assert (task_id != holder) is commit  # ended: a new task; still active: the holder
    assert await active_holders(backend, "k") == [task_id]


async def test_a_holder_that_ends_before_its_lookup_frees_the_key(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The insert met an active holder, which ended before the lookup of its id: the
    key is free, so the enqueue inserts in a second round."""
    client = Client(backend)
    holder = await client.enqueue("echo", 1, idempotency_key="k", unique="active")
    lookup = backend._holders

    async def ended_first(*args: Any) -> dict[str, int]:
        await client.cancel_task(holder)
        return await lookup(*args)

    monkeypatch.setattr(backend, "_holders", ended_first)
    task_id = await client.enqueue("echo", 2, idempotency_key="k", unique="active")
    assert task_id != holder and (await client.task(task_id)).payload == 2


async def test_a_period_key_holds_within_its_window(backend: Backend) -> None:
    client = Client(backend)
    first = await client.enqueue("echo", 1, idempotency_key="p", unique="1h")
    await client.cancel_task(first)
    assert await client.enqueue("echo", 2, idempotency_key="p", unique=3600) == first
    key = await backend.pool.fetchval("SELECT idempotency_key FROM shoal.tasks WHERE id = $1",
                                      first)
    assert key.startswith("p@") and key.endswith(":00:00Z")
    assert await client.enqueue("echo", 3, idempotency_key="p", unique="1m") != first


async def test_cli_enqueue_unique(dsn: str, backend: Backend) -> None:
    async def enqueue(*args: str) -> str:
        result = await cli("enqueue", "echo", "--dsn", dsn, "--force", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = await enqueue("--key", "k", "--unique", "active")
    assert await enqueue("--key", "k", "--unique", "active") == first
    await Client(backend).cancel_task(int(first))
    assert await enqueue("--key", "k", "--unique", "active") != first
    for args, error in [
            (("--unique", "active"), "shoal: error: unique='active' needs an idempotency key"),
            (("--key", "k", "--unique", "soon"),
             "shoal: error: unique must be 'forever', 'active' or a period of whole seconds "
             "such as 1h, not 'soon'")]:
        refused = await cli("enqueue", "echo", "--dsn", dsn, "--force", *args)
        assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", error + "\n")


async def test_a_dead_letter_whose_key_was_taken_is_not_retried(backend: Backend) -> None:
    """Retrying a dead letter whose active key another active task holds now would make
    two active tasks of one key: it stays dead (the holder does the work); once the
    holder ended, the retry revives it."""
    client = Client(backend)
    dead = await client.enqueue("echo", 1, idempotency_key="k", unique="active")
    await finish(backend, dead, error="boom")
    holder = await client.enqueue("echo", 2, idempotency_key="k", unique="active")
    assert holder != dead
    assert await client.retry_dead_letters(DeadLetterFilter(task_id=dead)) == 0
    assert (await client.task(dead)).state == "dead"
    await client.cancel_task(holder)
    assert await client.retry_dead_letters(DeadLetterFilter(task_id=dead)) == 1
    assert await client.enqueue("echo", 3, idempotency_key="k", unique="active") == dead
