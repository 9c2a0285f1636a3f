"""The worker's Prometheus metrics and its small HTTP endpoint.

`/metrics` serves the registry; `/healthz` answers 200 while the event loop
runs (a liveness probe must not fail just because the database is down);
`/readyz` answers 200 while the worker reaches the database and is not draining.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

# A registry of the worker's own: importing shoal (as the operator does) must
# not add worker series to another process's /metrics.
REGISTRY = CollectorRegistry()
_IN = {"registry": REGISTRY}
TASK = ("task",)
CLAIMED = Counter("shoal_tasks_claimed_total", "Tasks claimed by this worker", TASK, **_IN)
FINISHED = Counter("shoal_tasks_finished_total",
                   "Finished attempts by outcome: succeeded, retried, dead, cancelled",
                   ("task", "outcome"), **_IN)
DURATION = Histogram("shoal_task_duration_seconds", "Handler run time", TASK, **_IN,
                     buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900))
CLAIM_LATENCY = Histogram("shoal_claim_latency_seconds",
                          "From a task becoming due (run_at) to its handler starting", **_IN,
                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
IN_FLIGHT = Gauge("shoal_tasks_in_flight", "Attempts running or awaiting their report", **_IN)
LEASES_LOST = Counter("shoal_leases_lost_total",
                      "Attempts whose lease another worker took over, or whose report was refused",
                      **_IN)
RECLAIMED = Counter("shoal_tasks_reclaimed_total",
                    "Expired leases this worker's reaper made claimable again", **_IN)
DB_ERRORS = Counter("shoal_backend_errors_total", "Failed database calls", ("operation",), **_IN)


class TaskMetrics:
    """Per-task-name metric children, looked up once: labels() is costly per call."""

    __slots__ = ("claimed", "duration", "finished")

    def __init__(self, task: str) -> None:
        self.claimed = CLAIMED.labels(task)
        self.duration = DURATION.labels(task)
        self.finished = {kind: FINISHED.labels(task, kind)
                         for kind in ("succeeded", "retried", "dead", "cancelled")}


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on one port until cancelled."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self.host = host
        self.port = port
        self.ready = ready

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                status, body, kind = "200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            elif path.startswith("/healthz"):
                status, body, kind = "200 OK", b"ok\n", "text/plain"
            elif path.startswith("/readyz"):
                ok = self.ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (b"ready\n" if ok else b"not ready\n"), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
