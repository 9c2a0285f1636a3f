"""Worker pods on real kubelets: Pod Security, readiness probes, deletions, hard kills,
OOM kills, node drains and scale from zero. Each scenario counts the recorder's runs
(see support.py) and fails on any lost task or any task run to completion twice."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.cluster.engine import docker
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import PostgresServer
from tests.e2e.support import RunLog, assert_each_done_once, ready_pool, recorder_pool, settled
from tests.operator.harness import (
    OperatorProcess,
    apply,
    create_secret,
    pod_ready,
    pool_pods,
)
from tests.support import eventually, wait_for

pytestmark = pytest.mark.kube


def running_on(log: RunLog, pod: str) -> set[int]:
    """Tasks whose latest event is a start on `pod`."""
    latest: dict[int, dict[str, Any]] = {}
    for event in log.events():
        latest[event["task"]] = event
    return {t for t, e in latest.items() if e["event"] == "start" and e["host"] == pod}


async def test_workers_run_in_a_restricted_namespace(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """The worker Deployment passes Pod Security admission at `restricted`, and runs."""
    kube.kubectl("label", "namespace", namespace,
                 "pod-security.kubernetes.io/enforce=restricted", check=True)
    create_secret(kube, namespace, pod_dsn)
    pool = recorder_pool("strict", namespace, replicas=2)
    pool["spec"]["template"] = {"image": pool["spec"]["template"]["image"],
                                "imagePullPolicy": "IfNotPresent"}  # no hostPath here
    apply(kube, pool)
    ids = await backend.enqueue([NewTask("add", {"a": i, "b": 1}, namespace=namespace)
                                 for i in range(20)])
    tasks = await settled(backend, ids, 120)
    assert [t.result for t in tasks] == [{"sum": i + 1} for i in range(20)]
    await asyncio.to_thread(wait_for, lambda: sum(map(pod_ready, pool_pods(
        kube, namespace, "strict"))) == 2, 90, "both worker pods Ready")
    warnings = kube.get_json("events", "-n", namespace, "--field-selector",
                             "reason=FailedCreate")["items"]
    assert not warnings, [e["message"] for e in warnings]


@pytest.mark.kind  # pods reach a second Postgres on this host
async def test_readiness_follows_the_database(
        kube: KubeAccess, shoal_operator: OperatorProcess, namespace: str) -> None:
    """A worker that cannot reach Postgres goes NotReady through its readiness probe,
    and Ready again once the database is back."""
    with PostgresServer() as own:
        database = own.create_database("ready")
        migrated = await Backend.connect(database)
        await migrated.migrate()
        await migrated.close()
        create_secret(kube, namespace, own.dsn_for("ready", host=network_gateway()))
        apply(kube, recorder_pool("probe", namespace, replicas=1))
        ready = lambda: (p := pool_pods(kube, namespace, "probe")) and pod_ready(p[0])  # noqa: E731
        await asyncio.to_thread(wait_for, ready, 90, "the worker pod Ready")
        own.stop()
        stopped = time.monotonic()
        await asyncio.to_thread(wait_for, lambda: not ready(), 30, "the pod to go NotReady")
        print(f"NotReady {time.monotonic() - stopped:.1f} s after the database stopped")
        own.start()
        started = time.monotonic()
        await asyncio.to_thread(wait_for, ready, 60, "the pod Ready again")
        print(f"Ready {time.monotonic() - started:.1f} s after the database came back")
        [pod] = pool_pods(kube, namespace, "probe")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


@pytest.mark.kind  # records runs in the folder shared with the nodes
async def test_deleting_a_busy_pod_drains_and_loses_nothing(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """`kubectl delete pod` → SIGTERM: short runs finish within the drain, a run longer
    than the grace period is released and finishes on the other pod."""
    log = RunLog.create(kube)
    await ready_pool(kube, namespace, pod_dsn, "drain", 2)
    long_ids = await backend.enqueue(log.tasks("record", 2, namespace, sleep=20))
    pod = await eventually(lambda: next((p["metadata"]["name"] for p in pool_pods(
        kube, namespace, "drain") if running_on(log, p["metadata"]["name"])), None),
        within=30, what="a pod running a long task")
    short_ids = await backend.enqueue(log.tasks("record", 6, namespace, sleep=1))
    grace = kube.get_json("pod", pod, "-n", namespace)["spec"]["terminationGracePeriodSeconds"]
    deleting = time.monotonic()
    kube.kubectl("delete", "pod", pod, "-n", namespace, "--wait=true", "--timeout=60s",
                 check=True)
    took = time.monotonic() - deleting
    assert took < grace + 3, f"pod deletion took {took:.1f} s, grace {grace} s"
    await settled(backend, long_ids + short_ids, 120)
    assert_each_done_once(log, long_ids + short_ids)
    released = [e for e in log.events("cancelled") if e["host"] == pod]
    assert released, "no long run was released by the drain"
    for event in released:
        finish = [e for e in log.events("done") if e["task"] == event["task"]]
        assert finish[0]["host"] != pod


@pytest.mark.kind
async def test_hard_killed_worker_loses_its_leases_to_another_pod(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """`kill -9` of a worker's process on its node: its leases expire and the tasks
    finish elsewhere (or in the restarted container); none completes twice."""
    log = RunLog.create(kube)
    await ready_pool(kube, namespace, pod_dsn, "kill", 2)
    ids = await backend.enqueue(log.tasks("record", 8, namespace, sleep=6))
    victim = await eventually(lambda: next((p for p in pool_pods(kube, namespace, "kill")
                                            if running_on(log, p["metadata"]["name"])), None),
                              within=30, what="a pod running tasks")
    held = running_on(log, victim["metadata"]["name"])
    _kill_worker_process(victim)
    await settled(backend, ids, 120)
    assert_each_done_once(log, ids)
    for task in held:  # each killed run started again after the kill
        assert log.count("start")[task] >= 2, task
    pod = kube.get_json("pod", victim["metadata"]["name"], "-n", namespace)
    assert pod["status"]["containerStatuses"][0]["restartCount"] >= 1


def _kill_worker_process(pod: dict[str, Any]) -> None:
    """SIGKILL the worker container's main process from inside its kind node."""
    node = pod["spec"]["nodeName"]
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix(
        "containerd://")
    info = json.loads(docker("exec", node, "crictl", "inspect", container).stdout)
    docker("exec", node, "kill", "-9", str(info["info"]["pid"]))


@pytest.mark.kind  # records runs in the folder shared with the nodes
async def test_oom_killed_worker_is_reclaimed_and_the_task_ends_dead(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """A task that allocates past the pod's memory limit: the kernel kills the worker
    (OOMKilled), the lease ends with that cause, the task runs again (its budget: one
    lease expiry) and ends a dead letter; the other pod's work is unharmed."""
    log = RunLog.create(kube)
    await ready_pool(kube, namespace, pod_dsn, "oom", 2, memory="160Mi")
    [hog] = await backend.enqueue(log.tasks("hog", 1, namespace))  # budget: the worker's
    others = await backend.enqueue(log.tasks("record", 20, namespace, sleep=0.5))
    [dead] = await settled(backend, [hog], 180)
    assert dead.state == "dead", dead
    assert log.count("start")[hog] == 2, "the hog did not run exactly twice"
    # the operator ends the lease at once, or adds the cause to the reaper's error
    assert "(2 of 2 allowed)" in (dead.error or "") and "OOMKilled on pod" in dead.error, dead
    await settled(backend, others, 60)
    assert_each_done_once(log, others)
    killed = [s for p in pool_pods(kube, namespace, "oom") for s in p["status"][
        "containerStatuses"] if (s.get("lastState", {}).get("terminated") or {}).get(
        "reason") == "OOMKilled"]
    assert killed, "no worker container was OOMKilled"


@pytest.mark.kind
async def test_scale_down_and_a_node_drain_under_load_lose_nothing(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """A pool spread over both nodes scales up under load; one node is drained while the
    tasks run, then the load ends and the pool scales down: every task done once."""
    assert kube.kind is not None
    nodes = kube.kind.nodes()
    assert len(nodes) >= 2, "needs a 2-node cluster"
    log = RunLog.create(kube)
    create_secret(kube, namespace, pod_dsn)
    pool = recorder_pool("spread", namespace)
    pool["spec"]["template"]["affinity"] = {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"shoal.dev/pool": "spread"}},
            "topologyKey": "kubernetes.io/hostname"}}]}}
    apply(kube, pool)
    ids = await backend.enqueue(log.tasks("record", 120, namespace, sleep=1))
    await asyncio.to_thread(wait_for, lambda: len({p["spec"].get("nodeName") for p in pool_pods(
        kube, namespace, "spread") if pod_ready(p)}) >= 2, 120, "Ready pods on both nodes")
    drained = next(n for n in nodes if not n.endswith("control-plane"))
    try:
        await asyncio.to_thread(kube.kubectl, "drain", drained, "--ignore-daemonsets",
                                "--delete-emptydir-data", "--timeout=120s", check=True)
        await settled(backend, ids, 240)
    finally:
        kube.kubectl("uncordon", drained)
    assert_each_done_once(log, ids)
    await asyncio.to_thread(wait_for, lambda: len(pool_pods(kube, namespace, "spread")) == 1,
                            90, "the scale-down to one pod")


async def test_scale_from_zero_starts_a_pod_for_one_task(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """A pool at zero replicas: one enqueue starts a pod, which runs the task."""
    create_secret(kube, namespace, pod_dsn)
    pool = recorder_pool("zero", namespace)
    pool["spec"]["scaling"]["minReplicas"] = 0
    apply(kube, pool)
    await asyncio.to_thread(wait_for, lambda: (d := kube.get_json(
        "deployment", "zero", "-n", namespace)) and d["spec"]["replicas"] == 0, 60,
        "the pool at zero replicas")
    enqueued = time.monotonic()
    [task] = await backend.enqueue([NewTask("add", {"a": 1, "b": 2}, namespace=namespace)])
    [done] = await settled(backend, [task], 120)
    assert done.state == "succeeded" and done.result == {"sum": 3}
    print(f"enqueue into a pool at zero -> task done: {time.monotonic() - enqueued:.1f} s")
