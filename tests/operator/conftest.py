"""Session fixtures of the operator end-to-end tests: CRDs, a database, the operator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.backend import Backend
from tests.cluster.access import KubeAccess
from tests.cluster.postgres import ExternalPostgres, PostgresServer
from tests.operator.harness import OperatorProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def operator_db(postgres: PostgresServer | ExternalPostgres) -> str:
    """DSN of a migrated database of its own for the operator tests."""
    dsn = postgres.create_database(f"shoal_operator_{uuid.uuid4().hex[:8]}")

    async def migrate() -> None:
        backend = await Backend.connect(dsn)
        try:
            await backend.migrate()
        finally:
            await backend.close()

    asyncio.run(migrate())
    return dsn


@pytest.fixture(scope="session")
def crds(kube: KubeAccess) -> None:
    """Every CRD in crds/, applied and established."""
    result = kube.kubectl("apply", "-f", str(REPO / "crds"))
    assert result.returncode == 0, result.stderr
    result = kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd", "--all")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def shoal_operator(kube: KubeAccess, crds: None,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """`shoal operator --all-namespaces` for the session, re-checking every second."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(kube, log, "--recheck-interval", "1").start()
    yield proc
    proc.stop()
