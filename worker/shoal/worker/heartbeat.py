"""The heartbeat service."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS, Backend, Candidacy, Election, WorkerIdentity
from shoal.worker.ledger import Lease, Ledger, Stop
from shoal.worker.signals import Signals
from shoal.worker.supervisor import retry_later

log = logging.getLogger(__name__)

Interrupt = Callable[[Lease, Stop], None]
Stand = Callable[[], Candidacy | None]  # what the beat stands for (Maintenance.candidacy)
Counted = Callable[[Election], None]  # its outcome (Maintenance.counted)

_SAY = {Stop.LEASE_LOST: "lease on task #%d lost; cancelling its handler",
        Stop.WITHDRAWN: "task #%d was cancelled; cancelling its handler",
        Stop.CANCELLED: "task #%d: workflow cancelled; cancelling its handler"}


class Heartbeat:
    """Extends every lease this worker holds and refreshes its liveness row.

    Guarantees: one statement every `claim_ttl / 2`, or at once when poked (a
    cancel notification, the drain, a lease taken with little time left, a
    follower whose leader's term would lapse); while the worker follows, that
    statement also stands for the maintenance role (`Maintenance.candidacy`). Each
    lease it renews lasts a claim TTL from the moment the heartbeat was sent,
    by this worker's clock (`Ledger.renewed`; the fence stops what is not
    renewed in time), and each answer on time keeps this worker in contact
    (`ledger.Contact`). A handler whose lease is found gone is cancelled; it is
    the lease the run holds, since a run's lease never changes (a claim never
    returns a task its worker still holds). A handler whose task or workflow was
    cancelled is told to stop. Transient database errors are retried after at
    most `claim_ttl / 10` (at most a second), never longer, and break contact.
    """

    name = "heartbeat"

    def __init__(self, backend: Backend, ledger: Ledger, identity: WorkerIdentity,
                 signals: Signals, interrupt: Interrupt, stand: Stand,
                 counted: Counted) -> None:
        self.backend = backend
        self.ledger = ledger
        self.identity = identity
        self.signals = signals
        self.interrupt = interrupt
        self.stand = stand
        self.counted = counted

    async def run(self) -> None:
        s, ttl = self.signals, self.ledger.claim_ttl
        await s.registered.wait()
        pause = min(1.0, ttl / 10)
        retry = Backoff(first=pause, cap=pause)  # no growth: a lease must not lapse meanwhile
        while True:
            await wait_event(s.beat_due, ttl / 2)
            s.beat_due.clear()
            try:
                await self.beat()
            except TRANSIENT_ERRORS as exc:
                self.ledger.contact.failed()
                await retry_later("heartbeat", exc, retry)
                s.beat_due.set()

    async def beat(self) -> None:
        """One heartbeat (the first one registers the liveness row), standing for the
        maintenance role while following."""
        ledger = self.ledger
        leases = ledger.renewal()
        sent_at = time.monotonic()
        reply = await self.backend.heartbeat(self.identity, leases, ledger.claim_ttl,
                                             in_flight=len(leases),
                                             draining=self.signals.stopping.is_set(),
                                             stand=self.stand())
        for lease, stop in ledger.renewed(leases, sent_at, time.monotonic(), reply):
            (log.warning if stop is Stop.LEASE_LOST else log.info)(_SAY[stop], lease.task.id)
            self.interrupt(lease, stop)
        self.signals.fence_due.set()
        if reply.election is not None:
            self.counted(reply.election)
