"""The listener service: the worker's one connection, kept open and watched."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, Backend
from shoal.worker.signals import Signals
from shoal.worker.supervisor import retry_later

log = logging.getLogger(__name__)


class Listener:
    """Keeps the worker's connection (statements and LISTEN) open, and watches it.

    Guarantees: a dropped connection is reopened at once, then with capped
    exponential backoff, so notifications and handoffs flow again as soon as
    the database answers. A statement unanswered for `timeouts.stall`, or an
    idle link whose keepalive probes went unanswered that long, is logged (the
    worker is not ready meanwhile: see `Worker.ready`); a statement unanswered
    for `timeouts.statement` drops the connection (`Session`), and so does the
    kernel an idle link unanswered for `timeouts.user_timeout`. An idle worker
    sends no statement to keep its link checked. After every new connection the
    worker catches up (`catch_up`): it claims at once, and runs the tasks leased
    to it since it started that it does not know of (claims whose reply was
    lost), so none of them waits for its lease to expire.
    """

    name = "listener"

    def __init__(self, backend: Backend, signals: Signals,
                 catch_up: Callable[[], Awaitable[None]]) -> None:
        assert backend.session is not None, "a worker's Backend (for_worker)"
        self.backend = backend
        self.session = backend.session
        self.signals = signals
        self.catch_up = catch_up

    async def run(self) -> None:
        session, t = self.session, self.session.timeouts
        await self.signals.registered.wait()
        caught_up = 0  # the connection generation caught up with
        backoff = Backoff(first=0.1)
        stalled = False
        while True:
            try:
                await session.connect()
                if session.generation != caught_up:
                    await self.catch_up()
                    caught_up = session.generation
            except TRANSIENT_ERRORS as exc:
                await retry_later("connect", exc, backoff)
                continue
            backoff.reset()
            if await wait_event(session.lost, t.probe / 2):
                continue
            silence = session.silence(time.monotonic())
            if silence >= t.stall and not stalled:
                log.warning("no answer from the database for %.1fs: not ready until it "
                            "answers (the connection is dropped after %gs)", silence,
                            t.statement)
            stalled = silence >= t.stall
