"""Scale latency on real containers: from enqueues to replicas, Ready pods and started tasks.

Brings up a kind cluster (tests/cluster, or uses $SHOAL_TEST_KUBECONFIG), a Postgres
server on this host that pods reach at the kind network's gateway, and `shoal operator`;
then measures, polling every 20 ms:

- burst rounds (a pool at 1 replica, concurrency 2, a burst of `sleep` tasks):
  enqueue -> the Deployment's replica count changed; enqueue -> that many Ready pods
  (containers of the image built from the Dockerfile). Target for the replica change:
  under 2 s (KEDA's default polling interval alone is 30 s).
- scale-from-zero rounds (a pool at 0 replicas): one enqueue -> the task started
  (claimed by a worker in a new pod). Target: under 3 s.

Between rounds the backlog drains and the pools scale back.

    .venv/bin/python -m bench.scale_latency [--rounds 5] [--burst 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from typing import Any

from kubernetes_asyncio import client, config

from bench.kind_operator import demo_pool, operator_on_kind
from shoal.backend import Backend, NewTask
from shoal_operator.kube import Kube, KubeError, deployment_path, pods_path
from tests.cluster.access import KubeAccess
from tests.operator.harness import apply
from tests.support import wait_for

NAMESPACE = "bench-scale"
POLL = 0.02


def pool(name: str, min_replicas: int) -> dict[str, Any]:
    return demo_pool(
        name, NAMESPACE, concurrency=2, claimTTL="4s", drainTimeout="10s",
        scaling={"minReplicas": min_replicas, "maxReplicas": 20, "scaleDownStabilization": "2s",
                 "scaleUp": {"pods": 20, "period": "1s"}})


async def replicas_and_ready(k: Kube, name: str) -> tuple[int, int]:
    try:
        dep = await k.get(deployment_path(NAMESPACE, name))
    except KubeError:
        return -1, 0
    return int(dep["spec"]["replicas"]), int((dep.get("status") or {}).get("readyReplicas") or 0)


async def settled(k: Kube, name: str, replicas: int) -> None:
    """Wait until the pool is back to `replicas` pods and the drained ones have exited."""
    async with asyncio.timeout(180):
        while True:
            pods = await k.get(pods_path(NAMESPACE), {"labelSelector": f"shoal.dev/pool={name}"})
            if len(pods["items"]) == replicas and \
                    await replicas_and_ready(k, name) == (replicas, replicas):
                return
            await asyncio.sleep(0.2)


async def until(k: Kube, name: str, want_replicas: int, want_ready: int | None,
                within: float) -> float:
    """Poll until the Deployment wants `want_replicas` (and has `want_ready` Ready pods)."""
    async with asyncio.timeout(within):
        while True:
            replicas, ready = await replicas_and_ready(k, name)
            if replicas == want_replicas and (want_ready is None or ready >= want_ready):
                return time.monotonic()
            await asyncio.sleep(POLL)


async def bursts(k: Kube, backend: Backend, rounds: int, burst: int) -> list[tuple[float, float]]:
    results = []
    target = math.ceil(burst / 2)
    for i in range(rounds):
        await settled(k, "burst", 1)
        start = time.monotonic()
        await backend.enqueue([NewTask("sleep", {"seconds": 4}, namespace=f"{NAMESPACE}-burst")
                               for _ in range(burst)])
        scaled = await until(k, "burst", target, None, 30)
        ready = await until(k, "burst", target, target, 120)
        results.append((scaled - start, ready - start))
        print(f"burst round {i + 1}: replicas 1 -> {target} after {scaled - start:.3f}s, "
              f"{target} Ready pods after {ready - start:.3f}s", flush=True)
    return results


async def from_zero(k: Kube, backend: Backend, rounds: int) -> list[float]:
    results = []
    for i in range(rounds):
        await settled(k, "zero", 0)
        start = time.monotonic()
        [task_id] = await backend.enqueue([NewTask("noop", None, namespace=f"{NAMESPACE}-zero")])
        async with asyncio.timeout(120):
            while True:
                if (await backend.get_task(task_id)).state != "ready":
                    break
                await asyncio.sleep(POLL)
        started = time.monotonic() - start
        results.append(started)
        print(f"zero round {i + 1}: enqueue -> task started after {started:.3f}s", flush=True)
    return results


async def measure(kube: KubeAccess, dsn: str, rounds: int, burst: int
                  ) -> tuple[list[tuple[float, float]], list[float]]:
    await config.load_kube_config(config_file=str(kube.kubeconfig))
    k = Kube(client.ApiClient())
    backend = await Backend.connect(dsn)
    try:
        return await bursts(k, backend, rounds, burst), await from_zero(k, backend, rounds)
    finally:
        await backend.close()
        await k.api.close()


def summary(label: str, values: list[float], target: float | None = None) -> str:
    goal = f" (target < {target:g} s)" if target else ""
    return (f"{label}: median {statistics.median(values):.3f}s, max {max(values):.3f}s{goal}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8, help="tasks per burst (concurrency 2)")
    args = parser.parse_args()
    with operator_on_kind(NAMESPACE, "bench") as (kube, dsn):
        apply(kube, pool("burst", 1))
        apply(kube, pool("zero", 0))
        wait_for(lambda: kube.kubectl("get", "deploy", "burst", "zero", "-n", NAMESPACE
                                      ).returncode == 0, 30, "the Deployments")
        burst_results, zero_results = asyncio.run(measure(kube, dsn, args.rounds, args.burst))
    print(summary("enqueue -> new replica count", [r for r, _ in burst_results], 2))
    print(summary("enqueue -> Ready pods       ", [r for _, r in burst_results]))
    print(summary("pool at 0: enqueue -> task started", zero_results, 3))
    met = max(r for r, _ in burst_results) < 2 and max(zero_results) < 3
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
