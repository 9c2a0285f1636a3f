"""Shared fixtures: real components, never mocks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.access import EXTERNAL_KUBECONFIG, KubeAccess, open_cluster
from tests.cluster.postgres import ExternalPostgres, PostgresServer

LOCAL_ONLY = {
    "node_agent": "needs the local cluster's node agent (pods run as local processes)",
    "local_control_plane": "checks the local control plane's pinned build",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With ``SHOAL_TEST_KUBECONFIG``, skip what only the local cluster can do, saying why."""
    if not os.environ.get(EXTERNAL_KUBECONFIG):
        return
    for item in items:
        for marker, need in LOCAL_ONLY.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"{need}; SHOAL_TEST_KUBECONFIG is set"))


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAccess]:
    """A real Kubernetes cluster for the whole session (see `open_cluster`)."""
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
