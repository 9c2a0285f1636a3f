"""The local control plane is a real Kubernetes API server: version, CEL, RBAC, helm."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.access import KubeAccess
from tests.cluster.build import HELM_VERSION, K8S_VERSION
from tests.cluster.local import REPO_ROOT

pytestmark = pytest.mark.kube

CHART = Path(__file__).parent / "charts" / "smoke"

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.shoal.dev
spec:
  group: test.shoal.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: {type: integer, minimum: 0}
                minReplicas: {type: integer, minimum: 0}
              x-kubernetes-validations:
                - rule: "!has(self.minReplicas) || self.minReplicas <= self.replicas"
                  message: minReplicas must not exceed replicas
"""


def widget(name: str, namespace: str, spec: dict[str, object]) -> str:
    """A Widget manifest as JSON (valid YAML for kubectl)."""
    return json.dumps(
        {
            "apiVersion": "test.shoal.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


@pytest.fixture
def namespace(kube: KubeAccess) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name, check=True)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.mark.local_control_plane
def test_server_is_the_pinned_release(kube: KubeAccess) -> None:
    server = json.loads(kube.kubectl("get", "--raw", "/version", check=True).stdout)
    assert server["gitVersion"] == K8S_VERSION
    assert (server["major"], server["minor"]) == ("1", K8S_VERSION.split(".")[1])
    assert server["gitTreeState"] == "clean"


def test_kubectl_and_helm_are_the_pinned_release(kube: KubeAccess) -> None:
    client = json.loads(kube.kubectl("version", "--client", "-o", "json", check=True).stdout)
    assert client["clientVersion"]["gitVersion"] == K8S_VERSION

    helm = kube.helm("version", "--template", "{{.Version}}", check=True)
    assert helm.stdout.strip() == HELM_VERSION


def test_crd_schema_and_cel_rule_enforced_by_api_server(kube: KubeAccess, namespace: str) -> None:
    kube.kubectl("apply", "-f", "-", input=WIDGET_CRD, check=True)
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/widgets.test.shoal.dev",
        "--timeout=60s",
        check=True,
    )

    ok = kube.kubectl(
        "apply", "-f", "-", input=widget("ok", namespace, {"replicas": 3, "minReplicas": 1})
    )
    assert ok.returncode == 0, ok.stderr

    cel = kube.kubectl(
        "apply", "-f", "-", input=widget("bad", namespace, {"replicas": 1, "minReplicas": 2})
    )
    assert cel.returncode != 0
    assert (
        'The Widget "bad" is invalid: spec: Invalid value: minReplicas must not exceed replicas'
        in cel.stderr
    )

    typed = kube.kubectl(
        "apply", "-f", "-", input=widget("typed", namespace, {"replicas": "three"})
    )
    assert typed.returncode != 0
    assert (
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer'
        in typed.stderr
    )

    names = kube.kubectl("get", "widgets", "-n", namespace, "-o", "name", check=True).stdout
    assert names.split() == ["widget.test.shoal.dev/ok"]
    kube.kubectl("delete", "-f", "-", "--wait=false", input=WIDGET_CRD, check=True)


def test_rbac_denies_unprivileged_service_account(
    kube: KubeAccess, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace, check=True)
    token = kube.kubectl("create", "token", "nobody", "-n", namespace, check=True).stdout.strip()
    as_sa = kube.token_kubeconfig(token, tmp_path / "sa.kubeconfig")
    user = f"system:serviceaccount:{namespace}:nobody"

    whoami = json.loads(
        kube.kubectl("--kubeconfig", str(as_sa), "auth", "whoami", "-o", "json", check=True).stdout
    )
    assert whoami["status"]["userInfo"]["username"] == user

    denied = kube.kubectl("--kubeconfig", str(as_sa), "get", "secrets", "-n", namespace)
    assert denied.returncode != 0
    assert (
        f'secrets is forbidden: User "{user}" cannot list resource "secrets" '
        f'in API group "" in the namespace "{namespace}"'
    ) in denied.stderr

    # RBAC grants, not a blanket deny: a Role makes the same request succeed.
    kube.kubectl(
        "create",
        "role",
        "read-secrets",
        "-n",
        namespace,
        "--verb=list",
        "--resource=secrets",
        check=True,
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "read-secrets",
        "-n",
        namespace,
        "--role=read-secrets",
        f"--serviceaccount={namespace}:nobody",
        check=True,
    )
    allowed = kube.kubectl("--kubeconfig", str(as_sa), "get", "secrets", "-n", namespace)
    assert allowed.returncode == 0, allowed.stderr
    still_denied = kube.kubectl("--kubeconfig", str(as_sa), "get", "configmaps", "-n", namespace)
    assert "forbidden" in still_denied.stderr


def test_controller_manager_publishes_root_ca(kube: KubeAccess, namespace: str) -> None:
    # The publisher runs asynchronously; wait for it through the API, not a sleep.
    kube.kubectl(
        "wait",
        "--for=create",
        "configmap/kube-root-ca.crt",
        "-n",
        namespace,
        "--timeout=30s",
        check=True,
    )
    got = kube.kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace, "-o", "json")
    current = json.loads(
        kube.kubectl(
            "config", "view", "--minify", "--flatten", "--raw", "-o", "json", check=True
        ).stdout
    )
    expected = base64.b64decode(current["clusters"][0]["cluster"]["certificate-authority-data"])
    assert json.loads(got.stdout)["data"]["ca.crt"].strip() == expected.decode().strip()


def test_helm_install_and_uninstall(kube: KubeAccess, namespace: str) -> None:
    install = kube.helm(
        "install",
        "smoke",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "greeting=hi from helm",
        "--wait",
        "--timeout",
        "60s",
    )
    assert install.returncode == 0, install.stderr

    releases = json.loads(kube.helm("list", "-n", namespace, "-o", "json", check=True).stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("smoke", "deployed")]
    data = json.loads(
        kube.kubectl(
            "get", "configmap", "smoke-greeting", "-n", namespace, "-o", "json", check=True
        ).stdout
    )["data"]
    assert data == {"greeting": "hi from helm"}

    uninstall = kube.helm("uninstall", "smoke", "-n", namespace, "--wait")
    assert uninstall.returncode == 0, uninstall.stderr
    gone = kube.kubectl("get", "configmap", "smoke-greeting", "-n", namespace)
    assert gone.returncode != 0
    assert 'configmaps "smoke-greeting" not found' in gone.stderr
    assert json.loads(kube.helm("list", "-n", namespace, "-o", "json", check=True).stdout) == []


def _pids_mentioning(text: str) -> set[int]:
    """PIDs of live processes whose command line contains ``text``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.add(int(proc.name))
    return pids


@pytest.mark.local_control_plane  # starts a local cluster of its own
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_tears_down_everything_on_signal(sig: signal.Signals) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "up"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        kubeconfig = None
        for line in up.stdout:
            if line.startswith("export KUBECONFIG="):
                kubeconfig = Path(line.removeprefix("export KUBECONFIG=").strip())
                break
        assert kubeconfig is not None, "`up` ended without printing KUBECONFIG"
        workdir = kubeconfig.parent
        components = _pids_mentioning(str(workdir))
        # etcd, kube-apiserver, controller manager, scheduler (and the node agent).
        assert len(components) >= 4

        up.send_signal(sig)
        # Ctrl-C is the normal way to stop `up`; SIGTERM exits like a killed process would.
        assert up.wait(timeout=60) == (0 if sig == signal.SIGINT else 128 + sig)
        assert not workdir.exists()
        assert _pids_mentioning(str(workdir)) == set()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
