"""The claim service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, Backend, ClaimedTask, Outcome, WorkerIdentity
from shoal.worker.config import WorkerConfig
from shoal.worker.ledger import Ledger
from shoal.worker.signals import Signals
from shoal.worker.supervisor import retry_later

log = logging.getLogger(__name__)

Start = Callable[[list[ClaimedTask], float], None]  # tasks, their lease's deadline
Settle = Callable[[list[Outcome], set[int]], None]


class Claimer:
    """Claims tasks while the worker has room, until it drains.

    Guarantees: at most `concurrency` handlers run, and at most `concurrency`
    more results wait for their report (backpressure). A claim never returns a
    task this worker still holds, and a task that arrives twice (the reply and
    the catch-up after a reconnect) starts once. A claimed lease lasts the claim
    TTL from the moment the claim was sent, by this worker's clock. The plain
    successes waiting for their report ride on the next claim (one statement,
    one commit). A claim that finds less than it asked for parks the worker for
    handoffs; it then waits for a wake-up (an enqueue in its namespace, delayed
    tasks coming due, a handoff, a reconnect) or `poll_interval`, a fallback.
    Transient database errors are retried with backoff.
    """

    name = "claim"

    def __init__(self, backend: Backend, ledger: Ledger, identity: WorkerIdentity,
                 config: WorkerConfig, signals: Signals, start: Start, settle: Settle) -> None:
        self.backend = backend
        self.ledger = ledger
        self.identity = identity
        self.config = config
        self.signals = signals
        self.start = start
        self.settle = settle
        self.idle = False  # waiting for a wake-up, not for a free slot
        self.stopped = asyncio.Event()  # no claim will come any more

    def will_claim(self) -> bool:
        """Whether a claim is coming without a wake-up (and can carry successes)."""
        return (not self.idle and not self.signals.stopping.is_set()
                and self.ledger.free_slots() > 0)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.stopped.set()

    async def _run(self) -> None:
        s = self.signals
        await s.registered.wait()
        backoff = Backoff()
        while not s.stopping.is_set():
            free = self.ledger.free_slots()
            if free <= 0:
                s.slot_free.clear()
                self._leave_successes()
                await s.slot_free.wait()
                continue
            want = min(self.config.batch_size, free)
            s.wake.clear()
            sent_at = time.monotonic()
            try:
                claimed = await self._claim(want)
            except TRANSIENT_ERRORS as exc:
                await retry_later("claim", exc, backoff)
                continue
            backoff.reset()
            self.start(claimed, sent_at + self.config.claim_ttl)
            if len(claimed) < want:
                self.idle = True
                self._leave_successes()
                try:
                    await wait_event(s.wake, self.config.poll_interval)
                finally:
                    self.idle = False

    def _leave_successes(self) -> None:
        """No claim is coming now: the reporter takes the successes waiting."""
        if self.ledger.outbox:
            self.signals.report_due.set()

    async def _claim(self, want: int) -> list[ClaimedTask]:
        """Claim up to `want` tasks, completing the plain successes in the outbox in
        the same statement."""
        succeeded = self.ledger.take_successes()
        try:
            claimed, accepted = await self.backend.claim_and_complete(
                self.identity, want, self.config.claim_ttl, succeeded,
                holding=self.ledger.leases)
        except BaseException:
            self.ledger.put_back(succeeded)
            self.signals.report_due.set()
            raise
        self.settle(succeeded, accepted)
        return claimed
