"""The claim service."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, ClaimedTask
from shoal.worker.reporter import REPORT_CHUNK
from shoal.worker.supervisor import retry_later

if TYPE_CHECKING:
    from shoal.worker.runtime import Worker

log = logging.getLogger(__name__)


class Claimer:
    """Claims tasks while the worker has room, until it drains.

    Guarantees: at most `concurrency` handlers run, and at most `concurrency`
    more results wait for their report (backpressure). A claim never returns a
    task this worker still holds. The plain successes waiting for their report
    ride on the next claim (one statement, one commit). A claim that finds
    less than it asked for parks the worker for handoffs; it then waits for a
    wake-up (an enqueue in its namespace, a handoff, one of its own retries
    coming due) or `poll_interval`. Transient database errors are retried with
    backoff.
    """

    name = "claim"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.idle = False  # waiting for a wake-up, not for a free slot
        self.stopped = asyncio.Event()  # no claim will come any more

    def will_claim(self) -> bool:
        """Whether a claim is coming without a wake-up (and can carry successes)."""
        w = self.worker
        return not self.idle and not w.stopping.is_set() and w.free_slots() > 0

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.stopped.set()

    async def _run(self) -> None:
        w = self.worker
        await w.registered.wait()
        backoff = Backoff()
        while not w.stopping.is_set():
            free = w.free_slots()
            if free <= 0:
                w.slot_free.clear()
                self._leave_successes()
                await w.slot_free.wait()
                continue
            want = min(w.config.batch_size, free)
            w.wake.clear()
            try:
                claimed = await self._claim(want)
            except TRANSIENT_ERRORS as exc:
                await retry_later("claim", exc, backoff)
                continue
            backoff.reset()
            now = time.time()
            for task in claimed:
                w.start(task, now)
            if len(claimed) < want:
                self.idle = True
                self._leave_successes()
                try:
                    await wait_event(w.wake, w.config.poll_interval)
                finally:
                    self.idle = False

    def _leave_successes(self) -> None:
        """No claim is coming now: the reporter takes the successes waiting."""
        if self.worker.outbox:
            self.worker.report_due.set()

    async def _claim(self, want: int) -> list[ClaimedTask]:
        """Claim up to `want` tasks, completing the plain successes in the outbox in
        the same statement."""
        w = self.worker
        succeeded = [o for o in w.outbox if o.is_plain_success][:REPORT_CHUNK]
        if succeeded:
            taken = {o.task_id for o in succeeded}
            w.outbox = [o for o in w.outbox if o.task_id not in taken]
        try:
            claimed, accepted = await w.backend.claim_and_complete(
                w.identity, want, w.config.claim_ttl, succeeded, holding=w.held)
        except BaseException:
            w.outbox[:0] = succeeded
            w.report_due.set()
            raise
        w.settle(succeeded, accepted)
        return claimed
