"""Scaling ahead of the work: a pool at zero has a Ready Pod when a delayed task comes due.

On kind, with real worker Pods: the task is delayed beyond the pool's lead
(`scaling.podStartupTime`), so nothing may start at the enqueue; the operator
must start a Pod once the task enters the lead, and the task must start
within a second of its run_at (the start as the task row records it, on the
database's clock, like run_at).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.operator.harness import (
    OperatorProcess,
    apply,
    create_secret,
    events_for,
    pod_ready,
    pool,
    pool_pods,
)
from tests.support import eventually, wait_for

pytestmark = pytest.mark.kube

LEAD = 20.0  # the pool's podStartupTime
DELAY = 45.0  # the task's delay: beyond the lead at the enqueue


def replicas(kube: KubeAccess, namespace: str, name: str) -> int:
    dep = kube.get_json("deployment", name, "-n", namespace)
    return int(dep["spec"]["replicas"]) if dep else -1


def first_ready(kube: KubeAccess, namespace: str, name: str) -> datetime | None:
    """When the pool's first Pod turned Ready (its Ready condition's transition)."""
    times = [c["lastTransitionTime"] for p in pool_pods(kube, namespace, name) if pod_ready(p)
             for c in p["status"]["conditions"] if c["type"] == "Ready"]
    return datetime.fromisoformat(min(times)) if times else None


async def test_a_pool_at_zero_is_ready_before_a_delayed_task_comes_due(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("soon", namespace, minReplicas=0, podStartupTime=f"{LEAD:g}s"))
    await asyncio.to_thread(
        wait_for, lambda: replicas(kube, namespace, "soon") == 0
        and not pool_pods(kube, namespace, "soon"), 90, "the pool at zero, no Pods left")

    [task_id] = await backend.enqueue([NewTask("sleep", {"seconds": 0}, namespace=namespace,
                                               delay_seconds=DELAY)])
    enqueued = time.monotonic()
    task = await backend.get_task(task_id)
    # Not yet: the task is due beyond the lead.
    await asyncio.sleep(DELAY - LEAD - 8)
    assert replicas(kube, namespace, "soon") == 0
    await asyncio.to_thread(wait_for, lambda: replicas(kube, namespace, "soon") == 1,
                            DELAY - (time.monotonic() - enqueued), "a scale-up before due")
    scaled_after = time.monotonic() - enqueued
    assert DELAY - LEAD - 3 < scaled_after < DELAY - LEAD + 3, scaled_after
    ready_at = await asyncio.to_thread(
        wait_for, lambda: first_ready(kube, namespace, "soon"), DELAY, "a Ready Pod")
    assert ready_at < task.run_at, (ready_at, task.run_at)

    async def started() -> datetime | None:
        return (await backend.get_task(task_id)).started_at

    started_at = await eventually(started, within=DELAY, interval=0.2, what="the task's start")
    late = (started_at - task.run_at).total_seconds()
    assert 0 <= late < 1.0, late
    events = [e["message"] for e in events_for(kube, namespace, "soon")
              if e["reason"] == "ScaledUp"]
    assert any("due within" in m for m in events), events
