"""What the pod-level end-to-end tests share: pools of the test app image whose
handlers record every run in a folder the host reads, and reading those records.

The recorder (tests/apps/recorder.py) appends one JSON line per event to the file
named in each task's payload. Worker pods mount the kind cluster's shared host
folder at ``/shoal-shared`` (hostPath), so a file a pod appends to is a file this
process reads: runs are counted independently of Shoal's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.backend import Backend, NewTask
from tests.apps.recorder import runs
from tests.cluster.access import KubeAccess
from tests.cluster.images import APP_IMAGE
from tests.cluster.kind import SHARED_PATH
from tests.operator.harness import apply, create_secret, pod_ready, pool_pods
from tests.support import eventually, wait_for

RECORDER = "tests/apps/recorder.py:app"
# The partition scenarios' table (test_partition.py), printed at the end of the run.
PARTITION_HEADER = (
    "| scenario | tasks | lost | completed twice | re-runs | max overlap s | stale | "
    "max s expiry -> re-run | max s cut -> re-run | s cut -> NotReady | s heal -> Ready |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|")
PARTITION_ROWS: list[str] = []


@dataclass(frozen=True)
class RunLog:
    """One recorder log file: its path in pods, and on this host."""

    host_path: Path
    pod_path: str

    @classmethod
    def create(cls, kube: KubeAccess) -> RunLog:
        assert kube.shared is not None, "needs the harness's kind cluster (a shared folder)"
        name = uuid.uuid4().hex[:12]
        folder = kube.shared / name
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)  # the workers run as uid 10001
        return cls(folder / "runs.jsonl", f"{SHARED_PATH}/{name}/runs.jsonl")

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in runs(self.host_path) if event is None or e["event"] == event]

    def count(self, event: str) -> Counter[int]:
        """How many times each task id logged `event`."""
        return Counter(e["task"] for e in self.events(event))

    def tasks(self, name: str, count: int, namespace: str, **payload: Any) -> list[NewTask]:
        """`count` recorder tasks `name` logging here."""
        return [NewTask(name, {"log": self.pod_path, **payload}, namespace=namespace)
                for _ in range(count)]


def recorder_pool(name: str, namespace: str, *, secret: str = "pg", replicas: int | None = None,
                  memory: str | None = None, **spec: Any) -> dict[str, Any]:
    """A WorkerPool of the test app image running the recorder, with the shared folder
    mounted; short leases and drains so faults show within seconds."""
    template: dict[str, Any] = {
        "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent",
        "volumes": [{"name": "shared", "hostPath": {"path": SHARED_PATH, "type": "Directory"}}],
        "volumeMounts": [{"name": "shared", "mountPath": SHARED_PATH}]}
    if memory:
        template["resources"] = {"requests": {"memory": memory}, "limits": {"memory": memory}}
    body: dict[str, Any] = {
        "app": RECORDER, "template": template, "database": {"secretRef": {"name": secret}},
        "tasks": {"namespace": namespace}, "concurrency": 2, "claimTTL": "4s",
        "drainTimeout": "3s",
        "scaling": {"minReplicas": 1, "maxReplicas": 4, "scaleDownStabilization": "5s"}}
    if replicas is not None:
        body["replicas"] = replicas
        body["scaling"] = {"mode": "manual"}
    body.update(spec)
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


async def ready_pool(kube: KubeAccess, namespace: str, pod_dsn: str, name: str, replicas: int,
                     **spec: Any) -> None:
    """The recorder pool `name` (see recorder_pool) up with `replicas` Ready pods."""
    create_secret(kube, namespace, pod_dsn)
    apply(kube, recorder_pool(name, namespace, replicas=replicas, **spec))
    await asyncio.to_thread(wait_for, lambda: sum(map(pod_ready, pool_pods(
        kube, namespace, name))) == replicas, 90, f"{replicas} Ready worker pods")


async def settled(backend: Backend, ids: list[int], within: float) -> list[Any]:
    """The tasks once every one is finished (succeeded, dead or cancelled)."""
    async def check() -> list[Any] | None:
        tasks = [await backend.get_task(i) for i in ids]
        return tasks if all(t.state in ("succeeded", "dead", "cancelled") for t in tasks) \
            else None
    return await eventually(check, within=within, interval=0.5, what="every task to finish")


def assert_each_done_once(log: RunLog, ids: list[int]) -> None:
    """Nothing lost (every task ran to completion) and nothing completed twice."""
    done = log.count("done")
    assert sorted(done) == sorted(ids), f"lost: {sorted(set(ids) - set(done))}"
    twice = {task: n for task, n in done.items() if n > 1}
    assert not twice, f"run to completion more than once: {twice}"
