"""The operator's own API requests, counted by its client (`shoal_operator_api_requests_total`):
a pool's status is written from the pool the handler holds, never read first."""

from __future__ import annotations

import re

import pytest

from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.operator.harness import OperatorProcess, apply, create_secret, pool
from tests.support import eventually

pytestmark = pytest.mark.kube


def requests(operator: OperatorProcess, verb: str, resource: str) -> float:
    pattern = (rf'^shoal_operator_api_requests_total\{{resource="{re.escape(resource)}",'
               rf'verb="{verb}"\}} (\S+)$')
    found = re.search(pattern, operator.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_status_writes_never_read_the_pool_first(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    create_secret(kube, namespace, pod_dsn)
    names = ("a", "b", "c")
    for name in names:  # paused: the backlog moves the status, never the replicas
        manifest = pool(name, namespace, minReplicas=0)
        manifest["metadata"]["annotations"] = {"pause": "true"}
        apply(kube, manifest)

    def backlog(name: str) -> int | None:
        found = kube.get_json("workerpool", name, "-n", namespace) or {}
        ready = ((found.get("status") or {}).get("backlog") or {}).get("ready")
        return None if ready is None else int(ready)

    await eventually(lambda: all(backlog(n) == 0 for n in names), within=60,
                     what="every pool's first backlog in its status")
    gets = requests(shoal_operator, "GET", "workerpools")
    writes = requests(shoal_operator, "PATCH", "workerpools/status")

    await backend.enqueue([NewTask("noop", None, namespace=namespace) for _ in range(3)])
    await eventually(lambda: all(backlog(n) == 3 for n in names), within=30,
                     what="the new backlog in every pool's status")

    assert requests(shoal_operator, "PATCH", "workerpools/status") >= writes + len(names)
    assert requests(shoal_operator, "GET", "workerpools") == gets
