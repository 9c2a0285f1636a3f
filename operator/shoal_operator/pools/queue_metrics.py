"""Per-task queue gauges of each pool, read with its scaler's evaluations.

`QueueMetrics.observe` is called by the pool's scaler after each backlog read;
at most every `interval` seconds it reads the pool's queue by task name (ready,
running, the age of the oldest ready task) and sets the pool's series
(`metrics.record_tasks`, bounded label sets) and its maxReplicas. A failed
read leaves the series as they were: the scaler reports the backend's errors.
"""

from __future__ import annotations

import logging
import time

from shoal.backend import TRANSIENT_ERRORS, Backend
from shoal_operator import metrics
from shoal_operator.pools.spec import PoolSpec

log = logging.getLogger(__name__)

INTERVAL = 10.0  # seconds between reads of one pool's per-task depth


class QueueMetrics:
    """The per-task series of one pool; see the module docstring."""

    def __init__(self, namespace: str, pool: str, interval: float = INTERVAL) -> None:
        self.namespace = namespace
        self.pool = pool
        self.interval = interval
        self.last_read = float("-inf")

    async def observe(self, spec: PoolSpec, backend: Backend) -> None:
        if spec.scaling.mode == "auto":
            metrics.max_replicas.labels(self.namespace, self.pool).set(spec.scaling.max_replicas)
        else:
            metrics.forget_max_replicas(self.namespace, self.pool)
        now = time.monotonic()
        if now - self.last_read < self.interval:
            return
        self.last_read = now
        try:
            depth = await backend.queue_depth(spec.tasks.namespace, spec.tasks.tags,
                                              spec.tasks.names or None)
        except TRANSIENT_ERRORS as exc:
            log.warning("%s/%s: cannot read the queue by task: %s", self.namespace, self.pool,
                        exc)
            return
        metrics.record_tasks(self.namespace, self.pool,
                             {d.name: (d.ready, d.running, d.oldest_ready_seconds)
                              for d in depth})
