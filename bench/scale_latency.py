"""Scale latency: from a burst of enqueues to the Deployment's new replica count.

Starts a local cluster (or uses $SHOAL_TEST_KUBECONFIG), a Postgres server and
`shoal operator`, creates a WorkerPool (minReplicas 1, concurrency 2), then for
each round enqueues a burst of `sleep` tasks and measures, by polling the API
every 20 ms:

- enqueue -> Deployment spec.replicas changed to the computed count;
- enqueue -> that many Ready pods (real `shoal worker` processes).

Between rounds the backlog drains and the pool scales back to 1. Target: the
replica change in under 2 s (KEDA's default polling interval alone is 30 s).

    .venv/bin/python -m bench.scale_latency [--rounds 5] [--burst 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path

from kubernetes_asyncio import client, config

from shoal.backend import Backend, NewTask
from shoal_operator.kube import Kube, KubeError, deployment_path, pods_path
from tests.cluster.access import KubeAccess, open_cluster
from tests.cluster.postgres import PostgresServer
from tests.operator.harness import OperatorProcess, apply, install_crds, migrated_database
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-scale"
POLL = 0.02


async def replicas_and_ready(k: Kube) -> tuple[int, int]:
    try:
        dep = await k.get(deployment_path(NAMESPACE, "bench"))
    except KubeError:
        return 0, 0
    return int(dep["spec"]["replicas"]), int((dep.get("status") or {}).get("readyReplicas") or 0)


async def settled(k: Kube) -> None:
    """Wait until the pool is back to one pod and the drained ones have exited."""
    async with asyncio.timeout(120):
        while True:
            pods = await k.get(pods_path(NAMESPACE), {"labelSelector": "shoal.dev/pool=bench"})
            if len(pods["items"]) == 1 and await replicas_and_ready(k) == (1, 1):
                return
            await asyncio.sleep(0.2)


async def until(k: Kube, want_replicas: int, want_ready: int | None, within: float) -> float:
    """Poll until the Deployment wants `want_replicas` (and has `want_ready` Ready pods)."""
    async with asyncio.timeout(within):
        while True:
            replicas, ready = await replicas_and_ready(k)
            if replicas == want_replicas and (want_ready is None or ready >= want_ready):
                return time.monotonic()
            await asyncio.sleep(POLL)


async def measure(kube: KubeAccess, dsn: str, rounds: int, burst: int) -> list[tuple[float, float]]:
    await config.load_kube_config(config_file=str(kube.kubeconfig))
    k = Kube(client.ApiClient())
    backend = await Backend.connect(dsn)
    results = []
    try:
        target = math.ceil(burst / 2)
        for i in range(rounds):
            await settled(k)
            start = time.monotonic()
            await backend.enqueue(
                [NewTask("sleep", {"seconds": 4}, namespace=NAMESPACE) for _ in range(burst)]
            )
            scaled = await until(k, target, None, 30)
            ready = await until(k, target, target, 60)
            results.append((scaled - start, ready - start))
            print(
                f"round {i + 1}: replicas 1 -> {target} after {scaled - start:.3f}s, "
                f"{target} Ready pods after {ready - start:.3f}s",
                flush=True,
            )
    finally:
        await backend.close()
        await k.api.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8, help="tasks per burst (concurrency 2)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp,
        open_cluster(Path(tmp)) as kube,
        PostgresServer() as pg,
    ):
        dsn = migrated_database(pg, "bench")
        install_crds(kube)
        operator = OperatorProcess(kube, Path(tmp) / "operator.log").start()
        try:
            kube.kubectl("create", "namespace", NAMESPACE)
            kube.kubectl(
                "create", "secret", "generic", "pg", "-n", NAMESPACE, f"--from-literal=dsn={dsn}"
            )
            apply(
                kube,
                {
                    "apiVersion": "shoal.dev/v1alpha1",
                    "kind": "WorkerPool",
                    "metadata": {"name": "bench", "namespace": NAMESPACE},
                    "spec": {
                        "app": f"{REPO}/examples/tasks.py:app",
                        "template": {"image": "shoal:dev"},
                        "database": {"secretRef": {"name": "pg"}},
                        "tasks": {"namespace": NAMESPACE},
                        "concurrency": 2,
                        "claimTTL": "4s",
                        "drainTimeout": "10s",
                        "scaling": {
                            "minReplicas": 1,
                            "maxReplicas": 20,
                            "scaleDownStabilization": "2s",
                            "scaleUp": {"pods": 20, "period": "1s"},
                        },
                    },
                },
            )
            wait_for(
                lambda: kube.kubectl("get", "deploy", "bench", "-n", NAMESPACE).returncode == 0,
                30,
                "the Deployment",
            )
            results = asyncio.run(measure(kube, dsn, args.rounds, args.burst))
        finally:
            # The pool's finalizer needs the operator: delete it while the operator runs.
            kube.kubectl("delete", "namespace", NAMESPACE, "--timeout=60s")
            operator.stop()
    to_replicas = [r for r, _ in results]
    to_ready = [r for _, r in results]
    print(
        f"enqueue -> new replica count: median {statistics.median(to_replicas):.3f}s, "
        f"max {max(to_replicas):.3f}s (target < 2 s)"
    )
    print(
        f"enqueue -> Ready pods:        median {statistics.median(to_ready):.3f}s, "
        f"max {max(to_ready):.3f}s"
    )
    return 0 if max(to_replicas) < 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
