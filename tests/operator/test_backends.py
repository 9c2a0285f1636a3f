"""Shared backends, against the real API server and Postgres.

`PoolResolver.resolve` finds a WorkerPool and reads its Secret the way the
operator does (in process, as the chart's ServiceAccount). The NotifyHub has
its own tests in test_notifications.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from shoal.errors import BackendUnavailable
from shoal_operator import kube
from shoal_operator.backends import Backends
from shoal_operator.errors import DatabaseSecretError, PoolNotFound
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.workflows.sync import PoolResolver
from tests.cluster.access import KubeAccess
from tests.operator.harness import OperatorProcess

pytestmark = pytest.mark.kube


@pytest.fixture
async def resolver(shoal_operator: OperatorProcess,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PoolResolver]:
    """The operator's pool resolver, API client and backends, as the chart's ServiceAccount."""
    monkeypatch.setenv("KUBECONFIG", str(shoal_operator.kubeconfig))
    client = await kube.connect()
    backends = Backends(client, "shoal")
    yield PoolResolver(client, PoolRegistry(), backends)
    await backends.close()
    await client.close()


def pool(kube: KubeAccess, namespace: str, name: str, secret: str) -> None:
    manifest = {"apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"app": "examples/tasks.py:app", "template": {"image": "shoal:dev"},
                         "database": {"secretRef": {"name": secret}},
                         "scaling": {"minReplicas": 0}}}
    result = kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def secret(kube: KubeAccess, namespace: str, name: str, dsn: str) -> None:
    result = kube.kubectl("create", "secret", "generic", name, "-n", namespace,
                          f"--from-literal=dsn={dsn}")
    assert result.returncode == 0, result.stderr


async def test_pool_backend_answers_or_says_what_to_fix(
        kube: KubeAccess, namespace: str, operator_db: str, resolver: PoolResolver) -> None:
    with pytest.raises(PoolNotFound, match=f"WorkerPool {namespace}/nope does not exist"):
        await resolver.resolve(namespace, "nope")
    pool(kube, namespace, "a", "db")
    with pytest.raises(DatabaseSecretError, match=f"Secret {namespace}/db does not exist"):
        await resolver.resolve(namespace, "a")
    secret(kube, namespace, "db", "host=localhost dbname=x")
    with pytest.raises(DatabaseSecretError, match="is not a DSN"):
        await resolver.resolve(namespace, "a")
    kube.kubectl("delete", "secret", "db", "-n", namespace)
    secret(kube, namespace, "db", operator_db)
    spec, first = await resolver.resolve(namespace, "a")
    pool(kube, namespace, "b", "db")
    _, second = await resolver.resolve(namespace, "b")
    assert first is second  # one asyncpg pool per (DSN, schema) for the whole operator
    assert spec.database.secret_ref.name == "db"
    assert (await first.backlog("nobody", [])).ready == 0
    secret(kube, namespace, "down", "postgresql://app:s3cret@127.0.0.1:1/x")
    pool(kube, namespace, "c", "down")
    with pytest.raises(BackendUnavailable, match="cannot reach") as exc:
        await resolver.resolve(namespace, "c")
    assert "s3cret" not in str(exc.value)
