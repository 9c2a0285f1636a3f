"""`python -m tests.cluster demo`: Shoal's main job on a machine with nothing running.

Starts a throwaway PostgreSQL and the local Kubernetes (control plane + node
agent), installs the operator with `helm install shoal charts/shoal` (it runs
as a pod under the chart's own RBAC), applies the sample WorkerPool and
Workflow from examples/, waits for the workflow to succeed, enqueues a burst
to show the pool scaling, prints what `kubectl get` shows, and keeps it all
running until Ctrl-C (`--once`: tear down after the tour, for CI).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from shoal import Client, Job
from tests.cluster.access import KubeAccess
from tests.cluster.local import LocalCluster
from tests.cluster.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _check(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, result.args))} failed:\n{result.stderr}")
    return result.stdout


def _wait(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def _manifests(dsn: str) -> str:
    """The example pool and workflow, pointed at this machine's database and app file."""
    docs = list(yaml.safe_load_all((EXAMPLES / "workerpool.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"]["dsn"] = dsn
        if doc["kind"] == "WorkerPool":
            doc["spec"]["app"] = f"{EXAMPLES / 'tasks.py'}:app"
            doc["spec"]["scaling"]["scaleDownStabilization"] = "30s"
    docs.append(yaml.safe_load((EXAMPLES / "workflow.yaml").read_text()))
    return yaml.safe_dump_all(docs)


def _get(kube: KubeAccess, *args: str) -> dict[str, Any]:
    return json.loads(_check(kube.kubectl("get", *args, "-o", "json")))


def tour(kube: KubeAccess, dsn: str) -> None:
    _say("helm install shoal charts/shoal")
    _check(kube.helm("install", "shoal", str(REPO / "charts" / "shoal"), "--wait",
                     "--timeout", "110s"))
    _say("kubectl apply: Secret, WorkerPool demo, Workflow nightly-etl")
    _check(kube.kubectl("apply", "-f", "-", input=_manifests(dsn)))
    _wait("the WorkerPool's Ready pods", lambda: _get(kube, "wp", "demo").get(
        "status", {}).get("readyReplicas"), 180)
    _wait("workflow nightly-etl to succeed", lambda: _get(kube, "workflow", "nightly-etl").get(
        "status", {}).get("phase") == "Succeeded", 180)
    print(_check(kube.kubectl("get", "wp,workflows", "-o", "wide")))
    _say("a burst of 400 two-second tasks: the pool scales up")
    asyncio.run(_burst(dsn, 400))
    _wait("a scale-up", lambda: _get(kube, "wp", "demo")["status"].get(
        "desiredReplicas", 0) > 1, 60)
    print(_check(kube.kubectl("get", "wp", "demo", "-o", "wide")))
    print(_check(kube.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=demo")))


async def _burst(dsn: str, count: int) -> None:
    async with await Client.connect(dsn) as client:
        await client.enqueue_many([Job("sleep", {"seconds": 2}) for _ in range(count)])


def main(argv: list[str]) -> int:
    once = "--once" in argv
    with PostgresServer() as postgres:
        dsn = postgres.create_database("shoal")
        _check(subprocess.run([str(Path(sys.executable).parent / "shoal"), "migrate",
                               "--dsn", dsn], capture_output=True, text=True))
        with LocalCluster() as cluster:
            kube = KubeAccess(cluster.kubeconfig, cluster.server, cluster.kubectl,
                              cluster.helm, cluster.workdir / "helm")
            tour(kube, dsn)
            _say("running; try:")
            print(f"  export KUBECONFIG={cluster.kubeconfig}\n  alias kubectl={cluster.kubectl}")
            print("  kubectl get wp,workflows -o wide")
            print("  kubectl annotate workflow nightly-etl pause=true")
            print(f"  SHOAL_DSN={dsn} shoal dead-letters count")
            if once:
                return 0
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                print("\ntearing down", flush=True)
    return 0
