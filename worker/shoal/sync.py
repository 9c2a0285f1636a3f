"""`shoal.sync.Client`: the producer API for code that is not async.

    with shoal.sync.Client.connect(dsn, app=app) as client:
        task_id = client.enqueue("resize", {"url": "..."})
        result = client.wait(task_id, timeout=30)

Every method of `shoal.Client` is here, blocking, with the same arguments,
results and errors. One client is safe to share between threads (a web
server's request handlers): its calls run on one event loop in a thread of
its own, over one connection pool. Transactional enqueue takes the caller's
asyncpg connection, so it belongs to the async client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from shoal.client import Client as AsyncClient
from shoal.worker.app import App

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]
              ) -> Callable[Concatenate[Client, P], T]:
    """`method` of the async client as a blocking method of this one."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(method(self.client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"Client.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class Client:
    """The async `shoal.Client`, blocking and thread-safe; see the module docstring."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread) -> None:
        self.client = client
        self.loop = loop
        self.thread = thread

    @classmethod
    def connect(cls, dsn: str, *, schema: str = "shoal", app: App | None = None,
                namespace: str = "default", max_size: int = 4,
                listen_dsn: str | None = None) -> Client:
        """Connect a pool (as `shoal.Client.connect`) served by a thread of its own."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="shoal-sync-client",
                                  daemon=True)
        thread.start()
        try:
            client = asyncio.run_coroutine_threadsafe(AsyncClient.connect(
                dsn, schema=schema, app=app, namespace=namespace, max_size=max_size,
                listen_dsn=listen_dsn),
                loop).result()
        except BaseException:
            _stop(loop, thread)
            raise
        return cls(client, loop, thread)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the client's loop and return its result (or raise its error)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Close the pool and stop the client's thread."""
        if self.loop.is_closed():
            return
        try:
            self.run(self.client.close())
        finally:
            _stop(self.loop, self.thread)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, name: str, payload: Any = None, **options: Any) -> int:
        """Enqueue one task and return its id (see `shoal.Client.enqueue`)."""
        return self.run(self.client.enqueue(name, payload, **options))

    enqueue_many = _blocking(AsyncClient.enqueue_many)
    task = _blocking(AsyncClient.task)
    tasks = _blocking(AsyncClient.tasks)
    cancel_task = _blocking(AsyncClient.cancel_task)
    wait = _blocking(AsyncClient.wait)
    wait_workflow = _blocking(AsyncClient.wait_workflow)
    queue = _blocking(AsyncClient.queue)
    schedules = _blocking(AsyncClient.schedules)
    submit_workflow = _blocking(AsyncClient.submit_workflow)
    pause = _blocking(AsyncClient.pause)
    resume = _blocking(AsyncClient.resume)
    cancel = _blocking(AsyncClient.cancel)
    status = _blocking(AsyncClient.status)
    dead_letters = _blocking(AsyncClient.dead_letters)
    count_dead_letters = _blocking(AsyncClient.count_dead_letters)
    retry_dead_letters = _blocking(AsyncClient.retry_dead_letters)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
