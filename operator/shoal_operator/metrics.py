"""Prometheus metrics of the operator, served on `--metrics-port` at /metrics."""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

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
service_failures = Counter("shoal_operator_service_failures_total",
                           "Failed rounds of the operator's services (scaler/NS/POOL, "
                           "workflow-sync)", ["service"])
service_failing = Gauge("shoal_operator_service_failing",
                        "1 while a service failed its last rounds in a row or died (the "
                        "operator is then not ready)", ["service"])


def start(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics in a background thread; port 0 disables it."""
    try:
        build_info.info({"version": version("shoal")})
    except PackageNotFoundError:
        build_info.info({"version": "unknown"})
    if port:
        start_http_server(port, addr=host)


def forget_pool(namespace: str, pool: str) -> None:
    """Drop a deleted pool's series so dashboards do not show ghosts."""
    removals: list[tuple[Gauge | Histogram, tuple[str, ...]]] = [
        (backlog, (namespace, pool, state)) for state in ("ready", "running", "waiting", "dead")]
    removals.append((desired_replicas, (namespace, pool)))
    removals.append((evaluation_seconds, (namespace, pool)))
    for metric, labels in removals:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
    reasons = {sample.labels["reason"] for family in scaler_errors.collect()
               for sample in family.samples
               if (sample.labels["namespace"], sample.labels["pool"]) == (namespace, pool)}
    for reason in reasons:  # one series per reason seen
        scaler_errors.remove(namespace, pool, reason)


def forget_service(service: str) -> None:
    """Drop the series of a service that ended on purpose (its pool was deleted)."""
    for metric in (service_failures, service_failing):
        with contextlib.suppress(KeyError):
            metric.remove(service)
