"""A deleted pool's series leave the operator's /metrics, every one of them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from shoal_operator import metrics


def pool_series(namespace: str, pool: str) -> set[str]:
    return {sample.name for family in REGISTRY.collect() for sample in family.samples
            if sample.labels.get("namespace") == namespace and sample.labels.get("pool") == pool}


def test_forget_pool_drops_every_series_of_that_pool_only() -> None:
    for pool in ("gone", "kept"):
        metrics.backlog.labels("ns", pool, "ready").set(3)
        metrics.desired_replicas.labels("ns", pool).set(2)
        metrics.evaluation_seconds.labels("ns", pool).observe(0.01)
        for reason in ("Unreachable", "QueryFailed"):
            metrics.scaler_errors.labels("ns", pool, reason).inc()
    metrics.forget_pool("ns", "gone")
    assert pool_series("ns", "gone") == set()
    assert {"shoal_workerpool_backlog", "shoal_workerpool_desired_replicas",
            "shoal_scaler_evaluation_seconds_count", "shoal_scaler_errors_total"} <= pool_series(
        "ns", "kept")
