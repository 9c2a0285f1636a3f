"""Fixtures of the end-to-end tests that only real containers make meaningful.

The operator's session fixtures (its database, CRDs, the operator process as the
chart's ServiceAccount, a namespace per test, and the RBAC check after each test)
are the operator tests' own, imported here.
"""

from __future__ import annotations

import pytest

from tests.cluster.setup import build_images
from tests.operator.conftest import (  # noqa: F401  (fixtures and a hook, used by name)
    backend,
    crds,
    namespace,
    operator_db,
    operator_kubeconfig,
    pod_dsn,
    pytest_runtest_call,
    shoal_operator,
)


@pytest.fixture(scope="session")
def images() -> list[str]:
    """Shoal's image and the test app image, built from the working tree (cached layers)."""
    return build_images()
