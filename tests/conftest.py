"""Shared fixtures: real components, never mocks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.access import KubeAccess
from tests.cluster.build import build_all, helm_bin_dir, k8s_bin_dir
from tests.cluster.local import LocalCluster


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAccess]:
    """A real Kubernetes cluster for the whole session, torn down at the end.

    ``SHOAL_TEST_KUBECONFIG`` selects an existing cluster instead of starting a
    LocalCluster (control plane + node agent). Either way kubectl and helm are the
    pinned builds from tests/cluster/build.py.
    """
    helm_home = tmp_path_factory.mktemp("helm")
    external = os.environ.get("SHOAL_TEST_KUBECONFIG")
    if external:
        build_all()
        yield KubeAccess.from_kubeconfig(
            Path(external), k8s_bin_dir() / "kubectl", helm_bin_dir() / "helm", helm_home
        )
        return
    with LocalCluster() as cluster:
        yield KubeAccess(
            cluster.kubeconfig, cluster.server, cluster.kubectl, cluster.helm, helm_home
        )
