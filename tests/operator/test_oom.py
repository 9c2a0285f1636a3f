"""OOM-aware retries on real kubelets: a task that allocates past its pod's memory limit is
OOMKilled by the kernel; the operator sees the kill in the pod's status, ends the task's
lease at once with that cause (not after the claim TTL), says so in a TaskOOMKilled Event
and its metrics, and, with `spec.onOOMKilled`, sends the retry to a pool with more memory.

Each test reads what happened from the handlers' own records (the recorder's notes in the
folder shared with the nodes: which pod started and finished what, and when) besides
the task row, the pool's Events, the pod's annotation and the operator's /metrics.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.e2e.support import RunLog, ready_pool, settled
from tests.operator.harness import OperatorProcess, events_for, pool_pods
from tests.support import eventually

pytestmark = [pytest.mark.kube, pytest.mark.kind]  # records runs in the shared folder

# Long leases: a retry seen well within one shows that the lease did not just expire.
TTL = 60


def counter(operator: OperatorProcess, name: str, **labels: str) -> float:
    """The value of the operator's counter sample `name` with `labels` (0 if absent)."""
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def messages(kube: KubeAccess, namespace: str, pool: str, reason: str) -> list[str]:
    return [e["message"] for e in events_for(kube, namespace, pool) if e["reason"] == reason]


def annotations(kube: KubeAccess, namespace: str, pool: str) -> dict[str, str]:
    """Every pod of the pool's annotations, merged (the one pod of a one-replica pool)."""
    found: dict[str, str] = {}
    for pod in pool_pods(kube, namespace, pool):
        found.update(pod["metadata"].get("annotations") or {})
    return found


async def test_an_oom_killed_task_is_retried_at_once_with_the_cause(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """`hog` (budget: one lease expiry) is OOMKilled twice and ends a dead letter whose
    error names the pod, its container and memory limit; each kill ends the lease at
    once. An onOOMKilled naming a pool that does not exist changes nothing but says why
    (OOMRouteUnavailable)."""
    log = RunLog.create(kube)
    await ready_pool(kube, namespace, pod_dsn, "oom", 2, memory="160Mi", claimTTL=f"{TTL}s",
                     onOOMKilled={"pool": "missing"})
    [hog] = await backend.enqueue(log.tasks("hog", 1, namespace))
    [dead] = await settled(backend, [hog], 3 * TTL)
    starts = log.events("start")
    assert [e["task"] for e in starts] == [hog, hog] and not log.events("done"), starts
    assert starts[1]["t"] - starts[0]["t"] < TTL / 2, "the retry waited for the lease"
    assert dead.state == "dead", dead
    assert dead.error == (f"worker killed (2 of 2 allowed): OOMKilled on pod "
                          f"{starts[1]['host']} (container worker, memory limit 160Mi)"), dead
    events = await eventually(lambda: len(found := messages(
        kube, namespace, "oom", "TaskOOMKilled")) >= 2 and found, within=30,
        what="two TaskOOMKilled Events")
    assert any(starts[0]["host"] in m and f"retried now: {hog}" in m for m in events), events
    assert any(starts[1]["host"] in m and f"(lease-expiry budget used up): {hog}" in m
               for m in events), events
    [unavailable, *_] = messages(kube, namespace, "oom", "OOMRouteUnavailable")
    assert "WorkerPool missing: WorkerPool " in unavailable and "does not exist" in unavailable
    assert counter(shoal_operator, "shoal_workerpool_oom_kills_total", namespace=namespace,
                   pool="oom") == 2
    for outcome in ("retried", "dead"):
        assert counter(shoal_operator, "shoal_workerpool_oom_killed_tasks_total",
                       namespace=namespace, pool="oom", outcome=outcome) == 1, outcome
    handled = annotations(kube, namespace, "oom").get("shoal.dev/oom-handled", "")
    assert handled.startswith("worker@"), handled


async def test_on_oom_killed_sends_the_retry_to_a_pool_with_more_memory(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """A task too big for `small` (160Mi) is OOMKilled there, retried at once with the tags
    of `big` (512Mi), which alone can claim it now, and succeeds there."""
    log = RunLog.create(kube)
    tasks: dict[str, Any] = {"namespace": namespace}
    await ready_pool(kube, namespace, pod_dsn, "big", 1, memory="512Mi", claimTTL=f"{TTL}s",
                     tasks=tasks | {"tags": ["highmem"]})
    await ready_pool(kube, namespace, pod_dsn, "small", 1, memory="160Mi", claimTTL=f"{TTL}s",
                     tasks=tasks | {"tags": ["std"]}, onOOMKilled={"pool": "big"})
    [small_pod] = [p["metadata"]["name"] for p in pool_pods(kube, namespace, "small")]
    [big_pod] = [p["metadata"]["name"] for p in pool_pods(kube, namespace, "big")]
    [task_id] = await backend.enqueue([NewTask("allocate", {"log": log.pod_path, "mib": 300},
                                               namespace=namespace, tags=("std",))])
    [done] = await settled(backend, [task_id], 2 * TTL)
    runs = [(e["event"], e["host"]) for e in log.events()]
    assert runs == [("start", small_pod), ("start", big_pod), ("done", big_pod)], (runs, done)
    assert (done.state, done.result, done.tags, done.expiries) == (
        "succeeded", {"mib": 300}, ["highmem"], 1), (done.error, done)
    starts = log.events("start")
    assert starts[1]["t"] - starts[0]["t"] < TTL / 2, "the retry waited for the lease"
    [event] = await eventually(lambda: messages(kube, namespace, "small", "TaskOOMKilled"),
                               within=30, what="the TaskOOMKilled Event")
    assert event.startswith(f"OOMKilled on pod {small_pod} (container worker, memory limit "
                            f"160Mi) at "), event
    assert event.endswith(f"retried on WorkerPool big: {task_id}"), event
    assert counter(shoal_operator, "shoal_workerpool_oom_killed_tasks_total",
                   namespace=namespace, pool="small", outcome="rerouted") == 1
    assert not messages(kube, namespace, "small", "OOMRouteUnavailable")
