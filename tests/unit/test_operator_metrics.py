"""A deleted pool's series leave the operator's /metrics, every one of them; per-task
series stay bounded and drop task names that left; workflows count by phase."""

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
        metrics.max_replicas.labels("ns", pool).set(10)
        metrics.record_tasks("ns", pool, {"resize": (3, 1, 12.5), "mail": (0, 2, None)})
    metrics.forget_pool("ns", "gone")
    assert pool_series("ns", "gone") == set()
    assert {"shoal_workerpool_backlog", "shoal_workerpool_desired_replicas",
            "shoal_scaler_evaluation_seconds_count", "shoal_scaler_errors_total",
            "shoal_workerpool_max_replicas", "shoal_workerpool_tasks",
            "shoal_workerpool_oldest_ready_age_seconds"} <= pool_series("ns", "kept")
    metrics.forget_pool("ns", "kept")


def samples(name: str, **labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(v for k, v in sorted(s.labels.items()) if k not in labels): s.value
            for family in REGISTRY.collect() for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())}


def test_task_series_are_bounded_and_follow_the_queue() -> None:
    depth = {f"task-{i:03d}": (i, 1, float(i)) for i in range(120)}
    kept = metrics.bounded_tasks(depth, limit=50)
    assert len(kept) == 51 and "task-119" in kept and "task-069" not in kept
    assert kept[metrics.OTHER_TASKS] == (sum(range(70)), 70, 69.0)
    metrics.record_tasks("ns", "p", depth)
    ready = samples("shoal_workerpool_tasks", namespace="ns", pool="p", state="ready")
    assert len(ready) == 51 and ready[("task-119",)] == 119
    metrics.record_tasks("ns", "p", {"resize": (2, 0, None)})
    assert samples("shoal_workerpool_tasks", namespace="ns", pool="p") == {
        ("ready", "resize"): 2, ("running", "resize"): 0}
    assert samples("shoal_workerpool_oldest_ready_age_seconds", namespace="ns", pool="p") == {
        ("resize",): 0.0}
    metrics.forget_pool("ns", "p")


def test_workflows_by_phase() -> None:
    metrics.record_workflows([("a", "Running"), ("a", "Running"), ("a", "Paused"),
                              ("b", "Cancelled")])
    counts = samples("shoal_workflows")
    assert counts[("a", "Running")] == 2 and counts[("a", "Paused")] == 1
    assert counts[("a", "Failed")] == 0 and counts[("b", "Cancelled")] == 1
    assert len(counts) == 2 * len(metrics.WORKFLOW_PHASES)
    metrics.record_workflows([("b", "Succeeded")])  # namespace a has none left
    assert {ns for ns, _ in samples("shoal_workflows")} == {"b"}
