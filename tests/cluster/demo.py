"""`python -m tests.cluster demo`: Shoal's main job on a machine with nothing running.

Starts a throwaway PostgreSQL on this host and a one-node kind cluster
(`shoal-demo`, see setup.py) with Shoal's image built from the Dockerfile and
loaded on the node, installs the operator with `helm install` (a container
under the chart's own RBAC), applies the examples with the DSN pointed at the
host's Postgres as pods reach it, and walks through what a platform engineer
would do: the workflow runs, is paused around its long step and resumed, a
burst of tasks scales the pool up, and the pool scales back once the burst is
done. `kubectl get wp,workflows` is printed whenever it changes. Keeps it all
running until Ctrl-C (`--once`: tear down after the tour, for CI); the cluster
is deleted either way.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shoal import Client, Job
from tests.cluster.access import KubeAccess
from tests.cluster.images import SHOAL_IMAGE
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import PostgresServer
from tests.cluster.setup import prepare

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BURST = 240  # two-second tasks: 30 s of work for the first replica alone
STABILIZATION = "30s"  # the demo's scale-down window (the example says 5m)
CLUSTER = "shoal-demo"


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _manifests(pod_dsn: str, *files: str) -> str:
    """Example manifests: the Secret points at this host's database, the image is the
    one built here, and the scale-down window is short enough to watch."""
    docs = [d for f in files for d in yaml.safe_load_all((EXAMPLES / f).read_text())]
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"]["dsn"] = pod_dsn
        if doc["kind"] == "WorkerPool":
            doc["spec"]["template"]["image"] = SHOAL_IMAGE
            doc["spec"]["template"]["imagePullPolicy"] = "Never"
            doc["spec"]["scaling"]["scaleDownStabilization"] = STABILIZATION
    return yaml.safe_dump_all(docs)


class Tour:
    """Drives the demo; `until` polls a condition and prints the table as it changes."""

    def __init__(self, kube: KubeAccess, dsn: str, pod_dsn: str) -> None:
        self.kube = kube
        self.dsn = dsn
        self.pod_dsn = pod_dsn
        self.shown = ""
        self.started = time.monotonic()

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.kube.kubectl(*args, input=input, check=True).stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-o", "json"))

    def show(self) -> None:
        """Print `kubectl get wp,workflows` if anything but the ages changed."""
        table = self.kubectl("get", "wp,workflows")
        ageless = re.sub(r"\s+\S+$", "", table, flags=re.MULTILINE)
        if ageless != self.shown:
            self.shown = ageless
            print(f"[{time.monotonic() - self.started:5.1f} s]\n{table}", end="", flush=True)

    def until(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.show()
            if done():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def pool(self) -> dict[str, Any]:
        return self.get("wp", "demo").get("status", {})

    def workflow(self) -> dict[str, Any]:
        return self.get("workflow", "nightly-etl").get("status", {})

    def step(self, name: str) -> str | None:
        steps = {s["name"]: s["state"] for s in self.workflow().get("steps", [])}
        return steps.get(name)

    def run(self) -> None:
        _say("helm install shoal charts/shoal -n shoal-system -f examples/values-local.yaml")
        self.kube.helm("install", "shoal", str(REPO / "charts" / "shoal"),
                       "-n", "shoal-system", "--create-namespace",
                       "-f", str(EXAMPLES / "values-local.yaml"),
                       "--wait", "--timeout", "120s", check=True)
        print(self.kubectl("get", "deployment,pods", "-n", "shoal-system"), end="")

        _say("kubectl apply -f examples/workerpool.yaml (DSN: this host's Postgres)")
        self.kubectl("apply", "-f", "-", input=_manifests(self.pod_dsn, "workerpool.yaml"))
        self.until("the pool's first Ready replica",
                   lambda: bool(self.pool().get("readyReplicas")), 180)

        _say("kubectl apply -f examples/workflow.yaml")
        self.kubectl("apply", "-f", "-", input=_manifests(self.pod_dsn, "workflow.yaml"))
        self.until("step `wait` to run", lambda: self.step("wait") == "running", 120)

        _say("kubectl annotate workflow nightly-etl pause=true  (`wait` finishes, "
             "`report` must not start)")
        self.kubectl("annotate", "workflow", "nightly-etl", "pause=true")
        self.until("step `wait` to finish while paused",
                   lambda: self.step("wait") == "succeeded", 60)
        time.sleep(3)
        status = self.workflow()
        if not status.get("paused") or self.step("report") not in ("blocked", "ready"):
            raise RuntimeError(f"the paused workflow went on: {status}")
        self.show()
        print(f"paused: `report` is still {self.step('report')}")

        _say("kubectl annotate workflow nightly-etl pause=false --overwrite")
        self.kubectl("annotate", "workflow", "nightly-etl", "pause=false", "--overwrite")
        self.until("the workflow to succeed",
                   lambda: self.workflow().get("phase") == "Succeeded", 60)

        _say(f"a burst of {BURST} two-second tasks: the pool scales up")
        asyncio.run(_burst(self.dsn, BURST))
        peak = 1

        def drained() -> bool:
            nonlocal peak
            status = self.pool()
            peak = max(peak, status.get("readyReplicas") or 0)
            backlog = status.get("backlog", {})
            return peak > 1 and not backlog.get("ready") and not backlog.get("running")

        self.until("the burst to be done on more than one replica", drained, 240)
        print(self.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=demo"), end="")

        _say(f"the burst is done: after the {STABILIZATION} stabilization window "
             "the pool scales back")
        self.until("the pool back at one replica", lambda: self.pool().get(
            "desiredReplicas") == 1 and self.pool().get("readyReplicas") == 1, 180)
        print(f"peak: {peak} Ready replicas")


async def _burst(dsn: str, count: int) -> None:
    async with await Client.connect(dsn) as client:
        await client.enqueue_many([Job("sleep", {"seconds": 2}) for _ in range(count)])


def main(argv: list[str]) -> int:
    once = "--once" in argv
    with PostgresServer() as postgres, tempfile.TemporaryDirectory() as helm_home:
        dsn = postgres.create_database("shoal")  # empty: the operator migrates it
        kube, _ = prepare(CLUSTER, 1, Path(helm_home))
        assert kube.kind is not None
        try:
            pod_dsn = postgres.dsn_for("shoal", host=network_gateway())
            Tour(kube, dsn, pod_dsn).run()
            _say("done" if once else "running; try:")
            if once:
                return 0
            print(f"  export KUBECONFIG={kube.kubeconfig}\n  alias kubectl={kube.kubectl_bin}")
            print("  kubectl get wp,workflows -o wide")
            print("  kubectl annotate workflow nightly-etl cancel=true")
            print(f"  SHOAL_DSN={dsn} shoal dead-letters count")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                print("\ntearing down", flush=True)
        finally:
            kube.kind.delete()
    return 0
