"""The worker's Prometheus metrics and its small HTTP endpoint.

`/metrics` serves the registry (the worker's own series, its build, and the
process's CPU, memory, file descriptors and Python GC); `/healthz` answers 200 while the event loop
runs (a liveness probe must not fail just because the database is down);
`/readyz` answers 200 while the worker is connected to the database, not
draining, and none of its services failed.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shoal.version import VERSION

log = logging.getLogger(__name__)

# A registry of the worker's own: importing shoal (as the operator does) must
# not add worker series to another process's /metrics.
REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)  # also in the default registry: stateless, safe to share
BUILD_INFO = Info("shoal_worker_build", "Shoal worker build information", registry=REGISTRY)
BUILD_INFO.info({"version": VERSION, "python": platform.python_version()})
IN_FLIGHT = Gauge("shoal_tasks_in_flight", "Attempts running or awaiting their report",
                  registry=REGISTRY)
LEASES_LOST = Counter("shoal_leases_lost_total",
                      "Attempts whose lease another worker took over, or whose report was refused",
                      registry=REGISTRY)
LEASES_LAPSED = Counter("shoal_leases_lapsed_total",
                        "Attempts this worker stopped itself because it could not renew their "
                        "lease within the claim TTL (self-fencing)", registry=REGISTRY)
SYNC_ABANDONED = Counter("shoal_sync_handlers_abandoned_total",
                         "Sync handlers stopped while running: told through ctx.cancelled, "
                         "their thread left to finish on its own", registry=REGISTRY)
RECLAIMED = Counter("shoal_tasks_reclaimed_total",
                    "Expired leases this worker's reaper made claimable again", registry=REGISTRY)
DB_ERRORS = Counter("shoal_backend_errors_total", "Failed database calls", ("operation",),
                    registry=REGISTRY)

DURATION_BUCKETS = (.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900)
CLAIM_LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
OUTCOMES = ("succeeded", "retried", "dead", "cancelled")


class Buckets:
    """A histogram's counts, updated on the event loop's thread only (so no lock)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        return [(_go_float(bound), float(count)) for bound, count in
                zip((*self.bounds, math.inf), itertools.accumulate(self.counts), strict=True)]


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (`+Inf`, `0.5`)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class TaskMetrics:
    """The per-task series, counted once per attempt on the event loop's thread.

    Plain numbers instead of prometheus_client children: their lock and checks
    on every call were a fifth of a no-op task's worker CPU. `task_metrics()`
    hands out one per task name; `TaskCollector` exports them.
    """

    __slots__ = ("claimed", "duration", "finished")

    def __init__(self) -> None:
        self.claimed = 0
        self.duration = Buckets(DURATION_BUCKETS)
        self.finished = dict.fromkeys(OUTCOMES, 0)


class TaskCollector(Collector):
    """Exports every TaskMetrics and the claim latency histogram."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskMetrics] = {}
        self.claim_latency = Buckets(CLAIM_LATENCY_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        claimed = CounterMetricFamily("shoal_tasks_claimed", "Tasks claimed by this worker",
                                      labels=["task"])
        finished = CounterMetricFamily(
            "shoal_tasks_finished",
            "Finished attempts by outcome: succeeded, retried, dead, cancelled",
            labels=["task", "outcome"])
        duration = HistogramMetricFamily("shoal_task_duration_seconds", "Handler run time",
                                         labels=["task"])
        for name, task in self.tasks.items():
            claimed.add_metric([name], task.claimed)
            for outcome, count in task.finished.items():
                finished.add_metric([name, outcome], count)
            duration.add_metric([name], task.duration.cumulative(), task.duration.sum)
        latency = HistogramMetricFamily(
            "shoal_claim_latency_seconds",
            "From a task becoming due (run_at) to its handler starting")
        latency.add_metric([], self.claim_latency.cumulative(), self.claim_latency.sum)
        yield from (claimed, finished, duration, latency)


TASKS = TaskCollector()
REGISTRY.register(TASKS)
CLAIM_LATENCY = TASKS.claim_latency


def task_metrics(name: str) -> TaskMetrics:
    """The series of task `name` (shared by every worker of this process)."""
    return TASKS.tasks.setdefault(name, TaskMetrics())


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on one port until cancelled.

    Guarantees: /healthz answers 200 while the event loop runs; /readyz answers
    200 only while `ready()` is true (503 otherwise), computed per request.
    A port that cannot be bound fails the service (and so the worker).
    """

    name = "metrics"

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
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
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
