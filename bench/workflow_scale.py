"""Workflow CRs at scale: N created at once → Running → Succeeded, and annotate→paused latency.

Starts a kind cluster (or uses $SHOAL_TEST_KUBECONFIG), a Postgres server,
`shoal operator` and W `shoal worker` processes of the demo app, then:

1. creates N three-step Workflow CRs (noop → echo → noop) as fast as the API
   server takes them (20 concurrent creates) and measures, by counting the CRs
   per `shoal.dev/phase` label every 0.5 s, the time until every one has an
   instance (Running or later) and until every one is Succeeded;
2. counts every write to the Workflow objects (watch events) during the run:
   writes per CR shows whether status patches were coalesced;
3. samples the operator's RSS and CPU time from /proc during the run;
4. `kubectl annotate workflow x pause=true` on R workflows with a long step:
   annotate → backend state `paused` and annotate → CR phase `Paused`;
5. restarts the operator with the N finished CRs in place: writes and CPU in
   the first 20 s (the catch-up reads every instance once and should patch nothing).

    .venv/bin/python -m bench.workflow_scale [--workflows 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

from kubernetes_asyncio import client, config, watch

from bench.harness import cpu_seconds
from shoal.backend import Backend
from shoal_operator.kube import Kube
from shoal_operator.workflows.sync import workflow_path
from tests.cluster.access import KubeAccess
from tests.cluster.postgres import PostgresServer
from tests.cluster.setup import open_cluster
from tests.operator.harness import VENV_BIN, OperatorProcess, apply, install_crds, migrated_database

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-wf"
TASK_NS = "bench-wf-tasks"
LIST = f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/workflows"


class ProcSampler:
    """Peak RSS and CPU seconds of one process, sampled from /proc every `interval`."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.cpu_start = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.pid])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def run(self) -> None:
        while True:
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
            await asyncio.sleep(self.interval)


def manifest(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"poolRef": "bench", "steps": steps, "input": {"n": 1}},
    }


CHAIN = [
    {"name": "a", "task": "noop"},
    {"name": "b", "task": "echo", "dependsOn": ["a"], "input": {"n": "${workflow.input.n}"}},
    {"name": "c", "task": "noop", "dependsOn": ["b"]},
]


async def phases(k: Kube) -> Counter[str]:
    items = (await k.get(LIST))["items"]
    return Counter(
        ((i.get("metadata") or {}).get("labels") or {}).get("shoal.dev/phase", "-") for i in items
    )


async def count_writes(api: client.ApiClient, counter: Counter[str]) -> None:
    """Count ADDED/MODIFIED events of every Workflow in the namespace."""
    objects = client.CustomObjectsApi(api)
    while True:
        async with watch.Watch().stream(
            objects.list_namespaced_custom_object,
            "shoal.dev",
            "v1alpha1",
            NAMESPACE,
            "workflows",
            timeout_seconds=3600,
        ) as stream:
            async for event in stream:
                counter[event["type"]] += 1


async def scale(k: Kube, api: client.ApiClient, n: int, operator_pid: int) -> dict[str, float]:
    sampler = ProcSampler(operator_pid)
    writes: Counter[str] = Counter()
    background = [
        asyncio.create_task(sampler.run()),
        asyncio.create_task(count_writes(api, writes)),
    ]
    await asyncio.sleep(1.0)  # the watch is open
    limit = asyncio.Semaphore(20)

    async def create(i: int) -> None:
        async with limit:
            await k.request("POST", LIST, body=manifest(f"wf-{i:05d}", CHAIN))

    t0 = time.monotonic()
    await asyncio.gather(*(create(i) for i in range(n)))
    created = time.monotonic() - t0
    running_at = succeeded_at = None
    while succeeded_at is None:
        counts = await phases(k)
        started = n - counts.get("-", 0) - counts.get("Pending", 0)
        if running_at is None and started >= n:
            running_at = time.monotonic() - t0
        if counts.get("Succeeded", 0) >= n:
            succeeded_at = time.monotonic() - t0
        if time.monotonic() - t0 > 900:
            raise TimeoutError(f"not done after 900 s: {dict(counts)}")
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)  # late writes still count
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    return {
        "created_s": created,
        "all_running_s": running_at or 0.0,
        "all_succeeded_s": succeeded_at,
        "operator_peak_rss_mb": sampler.peak_rss_mb,
        "operator_cpu_s": sampler.cpu_seconds() - sampler.cpu_start,
        "writes_per_cr": (writes["ADDED"] + writes["MODIFIED"]) / n,
    }


async def instance_id(k: Kube, name: str) -> UUID:
    """The backend instance id once the operator has written it into the CR's status."""
    async with asyncio.timeout(60):
        while True:
            status = (await k.get(workflow_path(NAMESPACE, name))).get("status") or {}
            if status.get("workflowId"):
                return UUID(status["workflowId"])
            await asyncio.sleep(0.05)


async def pause_latency(
    kube: KubeAccess, k: Kube, backend: Backend, rounds: int
) -> list[tuple[float, float]]:
    """(annotate → backend paused, annotate → CR phase Paused) for `rounds` workflows."""
    results = []
    for i in range(rounds):
        name = f"pause-{i}"
        await k.request(
            "POST",
            LIST,
            body=manifest(
                name,
                [
                    {"name": "long", "task": "sleep", "input": {"seconds": 30}},
                    {"name": "after", "task": "noop", "dependsOn": ["long"]},
                ],
            ),
        )
        wid = await instance_id(k, name)
        t0 = time.monotonic()
        await asyncio.to_thread(
            kube.kubectl, "annotate", "workflow", name, "-n", NAMESPACE, "pause=true"
        )
        backend_at = cr_at = None
        while backend_at is None or cr_at is None:
            now = time.monotonic() - t0
            if backend_at is None and (await backend.workflow_status(wid)).state == "paused":
                backend_at = now
            if (
                cr_at is None
                and ((await k.get(workflow_path(NAMESPACE, name))).get("status") or {}).get("phase")
                == "Paused"
            ):
                cr_at = now
            await asyncio.sleep(0.01)
        results.append((backend_at, cr_at))
        await asyncio.to_thread(
            kube.kubectl, "annotate", "workflow", name, "-n", NAMESPACE, "cancel=true"
        )
    return results


async def restart(api: client.ApiClient, operator: OperatorProcess) -> tuple[float, int, float]:
    """(seconds to healthy, writes to Workflows, operator CPU s) in the 20 s after a restart."""
    writes: Counter[str] = Counter()
    watcher = asyncio.create_task(count_writes(api, writes))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(operator.stop)
    t0 = time.monotonic()
    await asyncio.to_thread(operator.start)
    healthy = time.monotonic() - t0
    assert operator.proc is not None
    sampler = ProcSampler(operator.proc.pid)
    await asyncio.sleep(20.0)
    cpu = sampler.cpu_seconds()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return healthy, writes["MODIFIED"], cpu


async def measure(
    kube: KubeAccess, dsn: str, operator: OperatorProcess, n: int, rounds: int
) -> None:
    await config.load_kube_config(config_file=str(kube.kubeconfig))
    api = client.ApiClient()
    k = Kube(api)
    backend = await Backend.connect(dsn, max_size=2)
    try:
        assert operator.proc is not None
        result = await scale(k, api, n, operator.proc.pid)
        print(f"{n} Workflow CRs (3 steps each), created in {result['created_s']:.1f} s")
        print(f"  all Running (instance submitted) after {result['all_running_s']:.1f} s")
        print(f"  all Succeeded after                   {result['all_succeeded_s']:.1f} s")
        print(f"  writes per CR (all clients)           {result['writes_per_cr']:.1f}")
        print(f"  operator peak RSS                     {result['operator_peak_rss_mb']:.0f} MiB")
        print(f"  operator CPU                          {result['operator_cpu_s']:.1f} s")
        lat = await pause_latency(kube, k, backend, rounds)
        b = [x[0] for x in lat]
        c = [x[1] for x in lat]
        print(
            f"annotate pause=true → backend paused: median {statistics.median(b) * 1000:.0f} "
            f"ms, max {max(b) * 1000:.0f} ms ({rounds} rounds)"
        )
        print(
            f"annotate pause=true → CR Paused:      median {statistics.median(c) * 1000:.0f} "
            f"ms, max {max(c) * 1000:.0f} ms"
        )
        healthy, modified, cpu = await restart(api, operator)
        print(f"operator restart with {n + rounds} CRs: healthy after {healthy:.1f} s; in the "
              f"next 20 s {modified} writes to Workflows, {cpu:.1f} s CPU since start")
    finally:
        await backend.close()
        await api.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pause-rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="shoal-wf-bench-") as tmp,
        open_cluster(Path(tmp) / "helm") as kube,
        PostgresServer() as pg,
    ):
        dsn = migrated_database(pg, "bench_wf")
        install_crds(kube)
        kube.kubectl("create", "namespace", NAMESPACE, check=True)
        apply(
            kube,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db", "namespace": NAMESPACE},
                "stringData": {"dsn": dsn},
            },
        )
        apply(
            kube,
            {
                "apiVersion": "shoal.dev/v1alpha1",
                "kind": "WorkerPool",
                "metadata": {"name": "bench", "namespace": NAMESPACE},
                "spec": {
                    "app": "examples/tasks.py:app",
                    "template": {"image": "shoal"},
                    "database": {"secretRef": {"name": "db"}},
                    "tasks": {"namespace": TASK_NS},
                    "replicas": 0,
                    "scaling": {"mode": "manual"},
                },
            },
        )
        workers = [
            subprocess.Popen(
                [
                    str(VENV_BIN / "shoal"),
                    "worker",
                    "--app",
                    "examples/tasks.py:app",
                    "--dsn",
                    dsn,
                    "--namespace",
                    TASK_NS,
                    "--concurrency",
                    "20",
                    "--batch-size",
                    "20",
                    "--metrics-port",
                    "0",
                    "--worker-id",
                    f"bench-{i}",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(args.workers)
        ]
        operator = OperatorProcess(kube, Path(tmp) / "operator.log").start()
        try:
            asyncio.run(measure(kube, dsn, operator, args.workflows, args.pause_rounds))
            # With the operator still running, so that every finalizer is honoured.
            kube.kubectl("delete", "namespace", NAMESPACE, "--timeout=600s", check=True)
        finally:
            operator.stop()
            for w in workers:
                w.terminate()
            for w in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
