"""The fence service: self-fencing of leases this worker could not renew."""

from __future__ import annotations

import time
from collections.abc import Callable

from shoal.aio import wait_event
from shoal.worker.ledger import Lease, Ledger
from shoal.worker.signals import Signals


class Fence:
    """Stops every handler whose lease this worker has not renewed in time.

    Guarantees: at a lease's deadline — the send time of the claim or heartbeat
    that last extended it, plus the claim TTL, by this worker's own clock, which
    is never later than the database's expiry — its handler is stopped, and its
    attempt is never reported: an async handler is cancelled (and, after a freeze,
    is not resumed past the deadline: see `runtime.Fenced`); a sync one is told
    through `ctx.cancelled` and abandoned to its thread, which is logged and
    counted. So a handler and its re-run elsewhere overlap by at most the clock
    drift between this host and the database. The lease is then given up as an
    expiry (one of the task's lease expiries used, as a killed worker's would
    be) as soon as the database answers, so the task need not wait for the
    leader to reap it; if it never answers, the leader reaps it.
    """

    name = "fence"

    def __init__(self, ledger: Ledger, signals: Signals,
                 lapse: Callable[[Lease], None]) -> None:
        self.ledger = ledger
        self.signals = signals
        self.lapse = lapse

    async def run(self) -> None:
        due = self.signals.fence_due
        while True:
            for lease in self.ledger.lapsed(time.monotonic()):
                self.lapse(lease)
            deadline = self.ledger.next_deadline()
            due.clear()
            if deadline is None:
                await due.wait()
            else:
                await wait_event(due, deadline - time.monotonic())
