"""The heartbeat service."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shoal.aio import Backoff, wait_event
from shoal.backend import TRANSIENT_ERRORS
from shoal.worker.supervisor import retry_later

if TYPE_CHECKING:
    from shoal.worker.runtime import Worker

log = logging.getLogger(__name__)


class Heartbeat:
    """Extends every lease this worker holds and refreshes its liveness row.

    Guarantees: one statement every `claim_ttl / 2`, or at once when poked (a
    cancel notification, the drain). A handler whose lease is found gone is
    cancelled; it is the lease the run holds, since a run's lease never
    changes (a claim never returns a task its worker still holds), so a run
    under a newer lease is never cancelled for an older one. A handler whose
    task or workflow was cancelled is told to stop. Transient database errors are
    retried after at most `claim_ttl / 10` (at most a second), never longer.
    """

    name = "heartbeat"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def run(self) -> None:
        w = self.worker
        await w.registered.wait()
        pause = min(1.0, w.config.claim_ttl / 10)
        retry = Backoff(first=pause, cap=pause)  # no growth: a lease must not lapse meanwhile
        while True:
            await wait_event(w.beat_due, w.config.claim_ttl / 2)
            w.beat_due.clear()
            try:
                await self.beat()
            except TRANSIENT_ERRORS as exc:
                await retry_later("heartbeat", exc, retry)
                w.beat_due.set()

    async def beat(self) -> None:
        """One heartbeat (the first one registers the liveness row)."""
        w = self.worker
        leases = [(task.id, task.lease_token) for task in w.held.values()]
        reply = await w.backend.heartbeat(w.identity, leases, w.config.claim_ttl,
                                          in_flight=len(leases),
                                          draining=w.stopping.is_set())
        for task_id, _token in leases:
            execution = w.executions.get(task_id)
            if execution is None or execution.stop_reason is not None:
                continue
            if task_id not in reply.held:
                log.warning("lease on task #%d lost; cancelling its handler", task_id)
                w.interrupt(execution, "lease_lost")
            elif task_id in reply.withdrawn:
                log.info("task #%d was cancelled; cancelling its handler", task_id)
                w.interrupt(execution, "withdrawn")
            elif task_id in reply.cancel:
                log.info("task #%d: workflow cancelled; cancelling its handler", task_id)
                w.interrupt(execution, "cancelled")
