"""What the benchmarks on real Pods share: a kind cluster, a Postgres on this host that
its pods reach, and `shoal operator` watching it."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster.access import KubeAccess
from tests.cluster.images import SHOAL_IMAGE
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import PostgresServer
from tests.cluster.setup import open_cluster
from tests.operator.harness import (
    OperatorProcess,
    create_secret,
    install_crds,
    migrated_database,
)


def demo_pool(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A WorkerPool of the demo app (`examples/tasks.py:app`) in the image built here,
    on the Secret `pg`, serving the task namespace `<namespace>-<name>`; `spec`: the
    rest of its spec (concurrency, scaling, ...)."""
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "app": "examples/tasks.py:app",
            "template": {"image": SHOAL_IMAGE, "imagePullPolicy": "Never"},
            "database": {"secretRef": {"name": "pg"}},
            "tasks": {"namespace": f"{namespace}-{name}"},
            **spec,
        },
    }


@contextlib.contextmanager
def operator_on_kind(namespace: str, database: str) -> Iterator[tuple[KubeAccess, str]]:
    """(the cluster, the DSN of `database` from this host): the one-node kind cluster
    `shoal-bench` (tests/cluster, or $SHOAL_TEST_KUBECONFIG), a new Postgres with Shoal's
    schema in `database`, the CRDs, the operator running, and `namespace` with the Secret
    `pg` that its pods reach the database by. On exit the namespace is deleted while the
    operator runs (the pools' finalizers need it), then the rest."""
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp,
        open_cluster(Path(tmp), name="shoal-bench", nodes=1) as kube,
        PostgresServer() as pg,
    ):
        dsn = migrated_database(pg, database)
        install_crds(kube)
        operator = OperatorProcess(kube, Path(tmp) / "operator.log").start()
        try:
            kube.kubectl("create", "namespace", namespace)
            create_secret(kube, namespace, pg.dsn_for(database, host=network_gateway()))
            yield kube, dsn
        finally:
            kube.kubectl("delete", "namespace", namespace, "--timeout=90s")
            operator.stop()
