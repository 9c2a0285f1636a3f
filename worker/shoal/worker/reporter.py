"""The report service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from shoal.aio import Backoff
from shoal.backend import TRANSIENT_ERRORS
from shoal.worker.signals import Signals
from shoal.worker.supervisor import retry_later

log = logging.getLogger(__name__)


class Reporter:
    """Reports finished attempts as they come, in chunks of `ledger.REPORT_CHUNK`.

    Guarantees: failures, cancellations and workflow steps are reported at
    once; plain successes too, unless a claim is coming that carries them.
    An outcome stays in the outbox until the database has recorded it (or
    refused it for a lease that moved on): transient database errors are
    retried with backoff, and a reconnect does not lose it.
    """

    name = "report"

    def __init__(self, signals: Signals, report: Callable[[bool], Awaitable[None]],
                 claim_coming: Callable[[], bool]) -> None:
        self.signals = signals
        self.report = report
        self.claim_coming = claim_coming

    async def run(self) -> None:
        due = self.signals.report_due
        backoff = Backoff()
        while True:
            await due.wait()
            due.clear()
            try:
                await self.report(not self.claim_coming())
            except TRANSIENT_ERRORS as exc:
                await retry_later("report", exc, backoff)
                continue
            backoff.reset()
