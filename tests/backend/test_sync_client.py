"""`shoal.sync.Client`: the async client's API, blocking, shared by threads over one
pool; errors are the async client's; closing stops its thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal import InvalidInput, NotFound, TaskFailed, UnknownTask, WaitTimeout
from shoal.backend import Backend, Outcome, WorkerIdentity
from shoal.sync import Client
from tests.apps.recorder import app
from tests.support import eventually, waited_for

WORKER = WorkerIdentity(id="w1", namespace="default", tags=(), task_names=("add",),
                        concurrency=100)


async def test_threads_share_one_client(dsn: str, backend: Backend) -> None:
    client = await asyncio.to_thread(Client.connect, dsn, app=app, max_size=2)
    try:
        def produce(n: int) -> list[int]:
            return [client.enqueue("add", {"a": n, "b": i}) for i in range(10)]

        with ThreadPoolExecutor(8) as threads:
            batches = await asyncio.gather(*(asyncio.wrap_future(threads.submit(produce, n))
                                             for n in range(8)))
        ids = [i for batch in batches for i in batch]
        assert len(set(ids)) == 80
        assert client.client.backend.pool.pool.get_max_size() == 2  # one pool for every thread

        waits = [asyncio.to_thread(client.wait, i, timeout=30) for i in ids[:5]]
        waiting = asyncio.gather(*waits)
        await eventually(lambda: waited_for(backend, *ids[:5]), what="the waits to start")
        claimed = await backend.claim(WORKER, 100, 30)
        assert len(claimed) == 80
        await backend.report([Outcome(t.id, t.lease_token,
                                      result_json=str(t.payload["a"] + t.payload["b"]))
                              for t in claimed])
        assert await waiting == [0, 1, 2, 3, 4]
        summary = await asyncio.to_thread(client.tasks)
        assert len(summary) == 80 and {t.state for t in summary} == {"succeeded"}
        assert await asyncio.to_thread(client.queue) == []  # nothing waits any more
    finally:
        await asyncio.to_thread(client.close)
    assert not client.thread.is_alive()
    await asyncio.to_thread(client.close)  # twice is harmless


async def test_errors_are_the_async_clients(dsn: str, backend: Backend) -> None:
    with await asyncio.to_thread(Client.connect, dsn, app=app) as client:
        with pytest.raises(UnknownTask):
            await asyncio.to_thread(client.enqueue, "nope")
        with pytest.raises(InvalidInput, match="payload for task 'add' is invalid"):
            await asyncio.to_thread(client.enqueue, "add", {"a": "x"})
        with pytest.raises(NotFound):
            await asyncio.to_thread(client.task, 424242)
        task_id = await asyncio.to_thread(client.enqueue, "add", {"a": 1, "b": 2})
        with pytest.raises(WaitTimeout):
            await asyncio.to_thread(client.wait, task_id, timeout=0.2)
        await asyncio.to_thread(client.cancel_task, task_id)
        with pytest.raises(TaskFailed, match="cancelled"):
            await asyncio.to_thread(client.wait, task_id, timeout=5)
    assert client.loop.is_closed()


def test_a_failed_connect_leaves_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(Exception, match="cannot reach the database"):
        Client.connect("postgresql://nobody@127.0.0.1:1/none")
    assert threading.active_count() == before
