"""The supervisor: runs a worker's services next to its main coroutine.

A service is a named long-running loop (`Service`) whose docstring says what
it guarantees. It retries transient database errors itself; anything else it
raises is a failure, and the supervisor guarantees that a failure is never
silent: it is logged with its traceback and the service's name, `failed`
says which service it was (the worker stops being ready) and `failure` why,
the main coroutine
is cancelled, and `run` returns False so the worker can hand back what it
holds and exit non-zero for Kubernetes to restart it. A service that returns
has finished its job and is not restarted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, describe
from shoal.worker import metrics

log = logging.getLogger(__name__)


async def retry_later(operation: str, exc: BaseException, backoff: Backoff) -> None:
    """What a service does with a transient database error: count it (by operation),
    log it, and wait the next backoff delay before trying again."""
    metrics.DB_ERRORS.labels(operation).inc()
    log.warning("%s failed, retrying: %s", operation, describe(exc))
    await backoff.wait()


async def repeat(operation: str, one_pass: Callable[[], Awaitable[float]],
                 wake: asyncio.Event | None = None) -> None:
    """Run `one_pass` for ever, sleeping the seconds each pass returns (or until `wake`
    is set); a pass that meets a transient database error is tried again after
    `retry_later`."""
    backoff = Backoff()
    wake = wake or asyncio.Event()
    while True:
        try:
            pause = await one_pass()
        except TRANSIENT_ERRORS as exc:
            await retry_later(operation, exc, backoff)
            continue
        backoff.reset()
        await wait_event(wake, pause)
        wake.clear()


class Service(Protocol):
    """A named long-running loop."""

    name: str

    async def run(self) -> None: ...


class Supervisor:
    """Runs services and reports the first failure; see the module docstring."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self.failed: str | None = None  # the service that failed
        self.failure: str | None = None  # what happened, in one line
        self._failure = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Service] = {}

    def fail(self, name: str, exc: BaseException) -> None:
        """Record a failure found outside the services (e.g. in a handler's bookkeeping)."""
        if self.failed is None:
            log.error("service %s failed; handing back and exiting", name, exc_info=exc)
            self.failed = name
            self.failure = f"service {name} failed: {describe(exc)}"
        self._failure.set()

    async def run(self, main: Coroutine[Any, Any, None]) -> bool:
        """Run every service and `main`; True when `main` returned, False after a failure.

        The services keep running when `main` returns; `stop()` ends them.
        """
        self._tasks = {asyncio.create_task(s.run(), name=s.name): s for s in self.services}
        main_task = asyncio.create_task(main, name="main")
        failure = asyncio.create_task(self._failure.wait(), name="failure")
        pending: set[asyncio.Task[Any]] = {main_task, failure, *self._tasks}
        try:
            while True:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done - {main_task, failure}:
                    self._check(self._tasks[task].name, task)
                if main_task in done and not self.failed:
                    self._check("main", main_task)
                    if not self.failed:
                        return True
                if self.failed:
                    return False
        finally:
            failure.cancel()
            if not main_task.done():
                main_task.cancel()
                await asyncio.gather(main_task, return_exceptions=True)

    def _check(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.fail(name, asyncio.CancelledError(f"service {name} was cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self.fail(name, exc)

    async def stop(self) -> None:
        """Cancel every service still running and wait for it to end (10 s at most:
        one that does not end is logged, and the process goes on exiting)."""
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            return
        _done, stuck = await asyncio.wait(self._tasks, timeout=10)
        for task in stuck:
            log.error("service %s did not stop when cancelled", self._tasks[task].name)
