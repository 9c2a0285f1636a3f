"""The listener service: the worker's one connection, kept open."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS
from shoal.worker.supervisor import retry_later

if TYPE_CHECKING:
    from shoal.worker.runtime import Worker

log = logging.getLogger(__name__)

PING_INTERVAL = 5.0  # seconds between checks of the connection
PING_TIMEOUT = 5.0


class Listener:
    """Keeps the worker's connection (statements and LISTEN) open.

    Guarantees: a dropped connection is reopened at once, then with capped
    exponential backoff, so notifications and handoffs flow again as soon as
    the database answers; a connection is checked every PING_INTERVAL, so a
    half-open one is noticed within PING_INTERVAL + PING_TIMEOUT. After every
    new connection the worker catches up: it claims at once, and runs the
    tasks leased to it since it started that it does not know of (claims
    whose reply was lost), so none of them waits for its lease to expire.
    """

    name = "listener"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def run(self) -> None:
        w = self.worker
        session = w.backend.session
        assert session is not None
        await w.registered.wait()
        caught_up = 0  # the connection generation caught up with
        backoff = Backoff(first=0.1)
        while True:
            try:
                await session.connect()
                if session.generation != caught_up:
                    await self._catch_up()
                    caught_up = session.generation
            except TRANSIENT_ERRORS as exc:
                await retry_later("listen", exc, backoff)
                continue
            backoff.reset()
            if not await wait_event(session.lost, PING_INTERVAL):
                try:
                    async with asyncio.timeout(PING_TIMEOUT):
                        await w.backend.ping()
                except TRANSIENT_ERRORS as exc:
                    log.warning("database connection lost: %s", exc)

    async def _catch_up(self) -> None:
        w = self.worker
        w.wake.set()
        if w.stopping.is_set():
            return
        for task in await w.backend.leased_to(w.identity.id, w.since):
            w.on_handoff(task)
