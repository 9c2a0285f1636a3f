"""Prometheus metrics of the operator, served on `--metrics-port` at /metrics.

Label sets are bounded: per pool at most `MAX_TASK_SERIES` task names (the rest
sum up under task="_other"); workflows by Kubernetes namespace and phase.
"""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from shoal.version import VERSION

POOL = ("namespace", "pool")

backlog = Gauge("shoal_workerpool_backlog",
                "Tasks the pool can serve, by state (ready, running, waiting, dead)",
                [*POOL, "state"])
desired_replicas = Gauge("shoal_workerpool_desired_replicas",
                         "Replicas the scaler decided for the pool", POOL)
scaler_errors = Counter("shoal_scaler_errors_total",
                        "Failed scaler evaluations, by reason", [*POOL, "reason"])
evaluation_seconds = Histogram("shoal_scaler_evaluation_seconds",
                          "Duration of one scaler evaluation (read backlog, decide, apply)",
                          POOL, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
reconciles = Counter("shoal_reconcile_total", "Reconciles by kind and result",
                     ["kind", "result"])
reconcile_seconds = Histogram("shoal_reconcile_duration_seconds", "Reconcile duration by kind",
                              ["kind"])
build_info = Info("shoal_build", "Shoal operator build information")
max_replicas = Gauge("shoal_workerpool_max_replicas",
                     "The pool's scaling.maxReplicas (auto mode only)", POOL)
tasks = Gauge("shoal_workerpool_tasks",
              "Tasks the pool serves by task name and state (ready: due and runnable; "
              "running)", [*POOL, "task", "state"])
oldest_ready = Gauge("shoal_workerpool_oldest_ready_age_seconds",
                     "How long the oldest ready task the pool serves has waited, by task name "
                     "(0: none ready)", [*POOL, "task"])
api_requests = Counter("shoal_operator_api_requests_total",
                       "Requests of the operator's own API client (kopf's watches and "
                       "patches not included), by verb and resource", ["verb", "resource"])
oom_kills = Counter("shoal_workerpool_oom_kills_total",
                    "Runs of the pool's worker containers that ended OOMKilled", POOL)
oom_tasks = Counter("shoal_workerpool_oom_killed_tasks_total",
                    "Tasks whose worker was OOMKilled while running them, by what became of "
                    "them (retried, rerouted: retried with spec.onOOMKilled's tags, dead: "
                    "lease-expiry budget used up)", [*POOL, "outcome"])
workflows = Gauge("shoal_workflows", "Workflow CRs by namespace and phase",
                  ["namespace", "phase"])

MAX_TASK_SERIES = 50
OTHER_TASKS = "_other"
WORKFLOW_PHASES = ("Pending", "Running", "Paused", "Cancelling", "Cancelled", "Succeeded",
                   "Failed")
POOL_METRICS: tuple[MetricWrapperBase, ...] = (
    backlog, desired_replicas, scaler_errors, evaluation_seconds, max_replicas, tasks,
    oldest_ready, oom_kills, oom_tasks)
service_failures = Counter("shoal_operator_service_failures_total",
                           "Failed rounds of the operator's services (scaler/NS/POOL, "
                           "workflow-sync)", ["service"])
service_failing = Gauge("shoal_operator_service_failing",
                        "1 while a service failed its last rounds in a row or died (the "
                        "operator is then not ready)", ["service"])


def start(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics in a background thread; port 0 disables it."""
    build_info.info({"version": VERSION})
    if port:
        start_http_server(port, addr=host)


def _children(metric: MetricWrapperBase, namespace: str, pool: str) -> set[tuple[str, ...]]:
    """The label values of every series `metric` has for the pool."""
    return {tuple(sample.labels[name] for name in metric._labelnames)
            for family in metric.collect() for sample in family.samples
            if (sample.labels.get("namespace"), sample.labels.get("pool")) == (namespace, pool)}


def forget_pool(namespace: str, pool: str) -> None:
    """Drop a deleted pool's series so dashboards do not show ghosts."""
    for metric in POOL_METRICS:
        for labels in _children(metric, namespace, pool):
            metric.remove(*labels)


def forget_max_replicas(namespace: str, pool: str) -> None:
    """A pool in manual mode has no maxReplicas to reach."""
    for labels in _children(max_replicas, namespace, pool):
        max_replicas.remove(*labels)


# (ready, running, seconds the oldest ready task has waited or None)
TaskDepth = tuple[int, int, float | None]


def bounded_tasks(depth: Mapping[str, TaskDepth], limit: int = MAX_TASK_SERIES
                  ) -> dict[str, TaskDepth]:
    """At most `limit` task names, the busiest (ready + running) first; the rest
    summed under OTHER_TASKS, with the oldest of their ages."""
    ranked = sorted(depth.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    kept = dict(ranked[:limit])
    rest = [d for _, d in ranked[limit:]]
    if rest:
        ages = [age for _, _, age in rest if age is not None]
        kept[OTHER_TASKS] = (sum(r for r, _, _ in rest), sum(n for _, n, _ in rest),
                             max(ages) if ages else None)
    return kept


def record_tasks(namespace: str, pool: str, depth: Mapping[str, TaskDepth]) -> None:
    """Set the pool's per-task series to `depth`; task names no longer there are dropped."""
    rows = bounded_tasks(depth)
    for labels in _children(tasks, namespace, pool):
        if labels[2] not in rows:
            tasks.remove(*labels)
    for labels in _children(oldest_ready, namespace, pool):
        if labels[2] not in rows:
            oldest_ready.remove(*labels)
    for task, (ready, running, age) in rows.items():
        tasks.labels(namespace, pool, task, "ready").set(ready)
        tasks.labels(namespace, pool, task, "running").set(running)
        oldest_ready.labels(namespace, pool, task).set(age or 0.0)


def record_workflows(phases: Iterable[tuple[str, str]]) -> None:
    """Count Workflow CRs by (namespace, phase); every phase of a namespace is exported."""
    counts = Tally(phases)
    namespaces = {namespace for namespace, _ in counts}
    for (namespace, phase) in {tuple(s.labels.values()) for f in workflows.collect()
                               for s in f.samples}:
        if namespace not in namespaces:
            workflows.remove(namespace, phase)
    for namespace in namespaces:
        for phase in WORKFLOW_PHASES:
            workflows.labels(namespace, phase).set(counts.get((namespace, phase), 0))


def forget_service(service: str) -> None:
    """Drop the series of a service that ended on purpose (its pool was deleted)."""
    for metric in (service_failures, service_failing):
        with contextlib.suppress(KeyError):
            metric.remove(service)
