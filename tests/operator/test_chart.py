"""The Helm chart: renders least-privilege RBAC and a non-root operator; installs for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.access import KubeAccess

pytestmark = pytest.mark.kube

CHART = str(Path(__file__).resolve().parents[2] / "charts" / "shoal")


def render(kube: KubeAccess, *values: str) -> list[dict[str, Any]]:
    args = [a for v in values for a in ("--set", v)]
    result = kube.helm("template", "shoal", CHART, "-n", "shoal-system", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == kind for r in d["rules"]]


def test_cluster_wide_rbac_is_least_privilege(kube: KubeAccess) -> None:
    docs = render(kube)
    all_rules = rules(docs, "ClusterRole")
    for rule in all_rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "delete" not in rule["verbs"], rule
    secrets = [r for r in all_rules if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["args"][:2] == ["operator", "--all-namespaces"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_namespaced_install_uses_roles(kube: KubeAccess) -> None:
    docs = render(kube, "watchNamespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster = rules(docs, "ClusterRole")
    assert all(r["resources"] == ["customresourcedefinitions"] for r in cluster)
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_helm_install_creates_crds_and_operator(kube: KubeAccess) -> None:
    result = kube.helm("install", "shoal", CHART, "-n", "shoal-system", "--create-namespace",
                       "--set", "image.tag=test")
    assert result.returncode == 0, result.stderr
    try:
        crds = kube.kubectl("get", "crd", "workerpools.shoal.dev", "-o", "name")
        assert crds.returncode == 0, crds.stderr
        dep = kube.kubectl("get", "deployment", "shoal", "-n", "shoal-system", "-o", "name")
        assert dep.returncode == 0, dep.stderr
        can = kube.kubectl("auth", "can-i", "get", "secrets", "-n", "default",
                           "--as=system:serviceaccount:shoal-system:shoal")
        assert can.stdout.strip() == "yes"
        cannot = kube.kubectl("auth", "can-i", "list", "secrets", "-n", "default",
                              "--as=system:serviceaccount:shoal-system:shoal")
        assert cannot.stdout.strip() == "no"
    finally:
        kube.helm("uninstall", "shoal", "-n", "shoal-system")
