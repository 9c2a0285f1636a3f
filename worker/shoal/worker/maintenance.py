"""The maintenance service: one leader per schema keeps the tables in shape."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from shoal.worker import metrics
from shoal.worker.supervisor import repeat

if TYPE_CHECKING:
    from shoal.worker.runtime import Worker

log = logging.getLogger(__name__)

REAP_BATCH = 1000  # expired leases per statement
PRUNE_BATCH = 5000  # finished tasks (and workflows) per statement


def pass_interval(claim_ttl: float) -> float:
    """Seconds between two passes: a quarter of the claim TTL, within [0.25, 5]."""
    return min(5.0, max(0.25, claim_ttl / 4))


class Maintenance:
    """Reaps expired leases, forgets dead workers and prunes finished work, on
    one worker per schema.

    Guarantees: at most one worker leads a schema at a time — the holder of a
    session advisory lock on its connection — and when the leader dies or
    loses its connection, another worker takes over within one pass interval
    (`pass_interval`: claim TTL / 4, between 0.25 and 5 s). Every pass of the
    leader runs to exhaustion in bounded batches (REAP_BATCH, PRUNE_BATCH), so
    other statements get between them and nothing is left for the next pass:
    an expired lease is reclaimed (or dead-lettered) within one interval of
    expiring, a worker unseen for three of its claim TTLs is forgotten, and
    finished plain tasks and finished workflows older than `retention` are
    deleted, however fast they come, and so are the waits crashed clients left
    (`Backend.prune_waits`). A leader's term begins with one claim
    TTL in which it reaps no lease: a new connection usually follows an
    outage (a restart, a failover) that cut the other workers off too, and
    they renew their leases in that time instead of having their running
    tasks given to someone else. Transient database errors are retried with
    backoff.
    """

    name = "maintenance"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.leading = False
        self.term: tuple[int, float] = (0, 0.0)  # connection generation led on, since when

    async def run(self) -> None:
        await self.worker.registered.wait()
        await repeat("maintenance", self._turn)

    async def _turn(self) -> float:
        """Lead if the lock is free, and if leading run a pass; the seconds to the next."""
        if await self._lead():
            await self._pass()
        return pass_interval(self.worker.config.claim_ttl)

    async def _lead(self) -> bool:
        backend = self.worker.backend
        leading = await backend.lead()
        if leading != self.leading:
            log.info("%s maintenance of schema %s", "leading" if leading else "no longer leading",
                     backend.schema)
            self.leading = leading
        assert backend.session is not None
        if leading and self.term[0] != backend.session.generation:
            self.term = (backend.session.generation, time.monotonic())
        return leading

    async def _pass(self) -> None:
        backend = self.worker.backend
        if time.monotonic() - self.term[1] >= self.worker.config.claim_ttl:
            await self._reap()
        await backend.reap_workers()
        while True:
            tasks, workflows = await backend.prune(self.worker.config.retention, PRUNE_BATCH)
            waits = await backend.prune_waits(PRUNE_BATCH)
            if tasks < PRUNE_BATCH and workflows < PRUNE_BATCH and waits < PRUNE_BATCH:
                break

    async def _reap(self) -> None:
        backend = self.worker.backend
        while True:
            reclaimed = await backend.reap_expired(REAP_BATCH)
            if reclaimed:
                metrics.RECLAIMED.inc(reclaimed)
                log.info("reclaimed %d tasks with expired leases", reclaimed)
            if reclaimed < REAP_BATCH:
                break
