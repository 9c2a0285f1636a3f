"""Shared fixtures: real components, never mocks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.cluster.access import EXTERNAL_KUBECONFIG, KubeAccess
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import ExternalPostgres, PostgresServer, dsn_for
from tests.cluster.setup import open_cluster

pytest_plugins = ("tests.operator.fixtures",)

KIND_ONLY = "acts on the nodes of a kind cluster made here; SHOAL_TEST_KUBECONFIG is set"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With ``SHOAL_TEST_KUBECONFIG``, skip what needs the harness's own kind nodes."""
    if not os.environ.get(EXTERNAL_KUBECONFIG):
        return
    for item in items:
        if item.get_closest_marker("kind"):
            item.add_marker(pytest.mark.skip(reason=KIND_ONLY))


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAccess]:
    """A real Kubernetes cluster for the whole session: `$SHOAL_TEST_KUBECONFIG`'s, or a
    2-node kind cluster with Shoal's images loaded (see tests/cluster/setup.py)."""
    with open_cluster(tmp_path_factory.mktemp("helm")) as access:
        yield access


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | ExternalPostgres]:
    """A real PostgreSQL server for the session: `SHOAL_TEST_DSN`, or a throwaway one."""
    external = os.environ.get("SHOAL_TEST_DSN")
    if external:
        yield ExternalPostgres(external)
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture
def dsn(postgres: PostgresServer | ExternalPostgres) -> str:
    """A DSN to a new, empty database of its own for each test."""
    return postgres.create_database(f"test_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def pod_dsn_of(kube: KubeAccess, postgres: PostgresServer | ExternalPostgres
               ) -> Callable[[str], str]:
    """Turns a DSN of the session's server into the DSN pods use to reach the same database.

    `SHOAL_TEST_POD_DSN` (any database on that server as pods reach it) with the
    database name replaced; on the harness's kind cluster, the throwaway server at
    the kind network's gateway.
    """
    pod_server = os.environ.get("SHOAL_TEST_POD_DSN")

    def convert(dsn: str) -> str:
        database = dsn.rpartition("/")[2]
        if pod_server:
            return dsn_for(pod_server, database)
        if isinstance(postgres, PostgresServer) and kube.kind is not None:
            return postgres.dsn_for(database, host=network_gateway())
        return dsn

    return convert
