"""Session fixtures of the Kubernetes end-to-end tests (tests/operator, tests/e2e): CRDs,
a database, the operator. A plugin of the root conftest, so that every test shares one
operator process for the session.

The operator runs as the Helm chart's ServiceAccount with exactly the chart's
RBAC (rendered from charts/shoal, applied, and a token minted for it), so a
handler that needs a verb the chart does not grant fails here. The tests
themselves act as the cluster admin: they are the platform engineer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shoal.backend import Backend
from tests.cluster.access import KubeAccess
from tests.cluster.postgres import ExternalPostgres, PostgresServer
from tests.operator.harness import (
    OperatorProcess,
    denied_events,
    install_crds,
    migrated_database,
    refusals,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "shoal"
CHART_NAMESPACE = "shoal-system"
# Not "shoal": tests/operator/test_chart.py installs and uninstalls that
# release, which must neither collide with nor delete the operator's RBAC.
RELEASE = "shoal-e2e"
TOKEN_DURATION = "12h"


@pytest.fixture(scope="session")
def operator_db(postgres: PostgresServer | ExternalPostgres) -> str:
    """DSN of a migrated database of its own for the operator tests."""
    return migrated_database(postgres, f"shoal_operator_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def pod_dsn(operator_db: str, pod_dsn_of: Callable[[str], str]) -> str:
    """The operator database's DSN as worker pods (and the operator) reach it."""
    return pod_dsn_of(operator_db)


@pytest.fixture(scope="session")
def crds(kube: KubeAccess) -> None:
    """Every CRD in crds/, applied and established."""
    install_crds(kube)


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: KubeAccess, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Path]:
    """A kubeconfig of the chart's ServiceAccount, bound to the chart's RBAC and nothing else.

    Only the chart's serviceaccount.yaml and rbac.yaml are rendered and applied
    (as admin); the token comes from the TokenRequest API. Removed at the end.
    """
    rendered = kube.helm("template", RELEASE, str(CHART), "-n", CHART_NAMESPACE,
                         "--show-only", "templates/serviceaccount.yaml",
                         "--show-only", "templates/rbac.yaml")
    assert rendered.returncode == 0, rendered.stderr
    [account] = [d for d in yaml.safe_load_all(rendered.stdout)
                 if d and d["kind"] == "ServiceAccount"]
    # A kept cluster's previous session may still be deleting the namespace it made.
    existing = kube.get_json("namespace", CHART_NAMESPACE)
    if existing and existing["status"].get("phase") == "Terminating":
        kube.kubectl("wait", "--for=delete", f"namespace/{CHART_NAMESPACE}", "--timeout=120s",
                     check=True)
    created_namespace = kube.kubectl("get", "namespace", CHART_NAMESPACE).returncode != 0
    if created_namespace:
        kube.kubectl("create", "namespace", CHART_NAMESPACE, check=True)
    applied = kube.kubectl("apply", "-f", "-", input=rendered.stdout)
    assert applied.returncode == 0, applied.stderr
    name = account["metadata"]["name"]
    token = kube.kubectl("create", "token", name, "-n", CHART_NAMESPACE,
                         f"--duration={TOKEN_DURATION}", check=True).stdout.strip()
    path = kube.token_kubeconfig(token, tmp_path_factory.mktemp("operator-sa") / "kubeconfig")
    whoami = kube.kubectl("--kubeconfig", str(path), "auth", "whoami", "-o",
                          "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{CHART_NAMESPACE}:{name}", whoami
    yield path
    kube.kubectl("delete", "-f", "-", "--ignore-not-found", input=rendered.stdout)
    if created_namespace:
        kube.kubectl("delete", "namespace", CHART_NAMESPACE, "--wait=false")


@pytest.fixture(scope="session")
def shoal_operator(kube: KubeAccess, crds: None, operator_kubeconfig: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """`shoal operator --all-namespaces` as the chart's ServiceAccount, re-checking every second.

    At the end of the session, any request RBAC refused in its whole log is an error.
    """
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(kube, log, "--recheck-interval", "1",
                           kubeconfig=operator_kubeconfig).start()
    yield proc
    proc.stop()
    denied = proc.denied()
    assert not denied, refusals(denied)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A test that runs the operator fails if RBAC refused the operator a request meanwhile.

    Checked right after the test body, before its namespace is torn down with its
    Events: new lines of the operator's log and the Events kopf posted.
    """
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    proc = funcargs.get("shoal_operator")
    kube = funcargs.get("kube")
    if not isinstance(proc, OperatorProcess) or not isinstance(kube, KubeAccess):
        return (yield)
    since_bytes = proc.log_size()
    since = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        return (yield)
    finally:  # also after a failure, which a refused request may explain
        denied = proc.denied(since_bytes) + denied_events(kube, since)
        assert not denied, refusals(denied)


@pytest.fixture
def namespace(kube: KubeAccess) -> Iterator[str]:
    """A namespace of its own for one test, deleted after it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert kube.kubectl("create", "namespace", name).returncode == 0
    yield name
    # Pools first, while the operator runs to release their finalizers; the
    # namespace (and the pods draining in it) then goes in the background.
    kube.kubectl("delete", "workerpools", "--all", "-n", name, "--timeout=30s")
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
async def backend(operator_db: str) -> AsyncIterator[Backend]:
    """A Backend on the operator tests' database, as a producer would use it."""
    b = await Backend.connect(operator_db, max_size=2)
    yield b
    await b.close()
