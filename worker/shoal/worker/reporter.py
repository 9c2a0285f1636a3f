"""The report service."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shoal.aio import Backoff
from shoal.backend import TRANSIENT_ERRORS
from shoal.worker.supervisor import retry_later

if TYPE_CHECKING:
    from shoal.worker.runtime import Worker

log = logging.getLogger(__name__)

# Results per report statement: bounds each statement's cost whatever plan the
# database picks, and lets other statements run between two chunks.
REPORT_CHUNK = 500


class Reporter:
    """Reports finished attempts as they come, in chunks of REPORT_CHUNK.

    Guarantees: failures, cancellations and workflow steps are reported at
    once; plain successes too, unless a claim is coming that carries them.
    An outcome stays in the outbox until the database has recorded it (or
    refused it for a lease that moved on): transient database errors are
    retried with backoff, and a reconnect does not lose it.
    """

    name = "report"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def run(self) -> None:
        w = self.worker
        backoff = Backoff()
        while True:
            await w.report_due.wait()
            w.report_due.clear()
            try:
                await w.report(successes=not w.claimer.will_claim())
            except TRANSIENT_ERRORS as exc:
                await retry_later("report", exc, backoff)
                continue
            backoff.reset()
