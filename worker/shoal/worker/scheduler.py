"""The scheduler service: delayed tasks become ready when they come due."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, Backend
from shoal.worker.signals import Signals
from shoal.worker.supervisor import retry_later

log = logging.getLogger(__name__)

TICK = 1.0  # seconds: the leader looks at least this often
PROMOTE_BATCH = 10_000  # delayed tasks made ready per statement


def next_look(now: float, leading: bool, next_due: float | None,
              expected: list[float]) -> float:
    """When to look next (monotonic seconds): the leader when the next delayed task it
    knows of comes due (`next_due`), any worker when the first of its own retries
    (`expected`, a heap) comes due, and every TICK at the latest (a task delayed since
    the leader's last look may come due sooner; this worker may lead by then)."""
    times = [now + TICK, *expected[:1]]
    if leading and next_due is not None:
        times.append(next_due)
    return min(times)


class Scheduler:
    """Makes delayed tasks (enqueued with a delay, or retried after a backoff) ready
    when they come due, and wakes their namespace's workers: on the maintenance
    leader (`leading`), for every delayed task, one look a second for the whole
    fleet; on any worker, for the retries it scheduled itself (`expect`), at their
    due time. Idle workers' claims never walk past tasks that are not due.

    Guarantees: while a leader leads, a delayed task is ready within TICK of its
    run_at, and at its run_at (as the event loop allows) when it was delayed before
    the leader last looked; a retry is ready at its due time whoever leads. Every
    look runs to exhaustion in batches of PROMOTE_BATCH. With no leader (for a pass
    interval after the last one died, or drained without a successor), delayed
    tasks other than this worker's retries wait for one. Transient database errors
    are retried with backoff.
    """

    name = "scheduler"

    def __init__(self, backend: Backend, leading: Callable[[], bool], signals: Signals) -> None:
        self.backend = backend
        self.leading = leading
        self.signals = signals
        self.expected: list[float] = []  # due times (monotonic) of this worker's retries
        self.poked = asyncio.Event()

    def expect(self, seconds: float) -> None:
        """A retry this worker reported comes due in `seconds`."""
        heapq.heappush(self.expected, time.monotonic() + seconds)
        self.poked.set()

    async def run(self) -> None:
        await self.signals.registered.wait()
        backoff = Backoff()
        next_due: float | None = None  # monotonic: when the next delayed task is due
        while True:
            now = time.monotonic()
            at = next_look(now, self.leading(), next_due, self.expected)
            if at > now and await wait_event(self.poked, at - now):
                self.poked.clear()
                continue  # a retry was expected meanwhile: maybe earlier
            self.poked.clear()
            retry_due = False
            while self.expected and self.expected[0] <= time.monotonic() + 0.001:
                heapq.heappop(self.expected)
                retry_due = True
            if not (retry_due or self.leading()):
                continue
            try:
                seconds = await self._look()
            except TRANSIENT_ERRORS as exc:
                await retry_later("scheduler", exc, backoff)
                continue
            backoff.reset()
            next_due = None if seconds is None else time.monotonic() + max(0.005, seconds)

    async def _look(self) -> float | None:
        """Promote everything due; the seconds until the next delayed task is due."""
        while True:
            promoted, next_due = await self.backend.promote(PROMOTE_BATCH)
            if promoted:
                log.debug("%d delayed tasks came due", promoted)
            if promoted < PROMOTE_BATCH:
                return next_due
