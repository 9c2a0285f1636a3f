"""KubeAccess: what a test needs to talk to a cluster with the pinned kubectl and helm."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.build import build_all, helm_bin_dir, k8s_bin_dir
from tests.cluster.local import LocalCluster

EXTERNAL_KUBECONFIG = "SHOAL_TEST_KUBECONFIG"


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl/helm command that failed; its message says what the command printed."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}:\n{self.stderr}"


@dataclass(frozen=True)
class KubeAccess:
    """A cluster's kubeconfig, plus runners for kubectl and helm.

    ``helm_home`` isolates helm's cache/config/data from the user's own.
    """

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    helm_home: Path

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm: this cluster's kubeconfig, isolated helm dirs."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(self.helm_home / var.removeprefix("HELM_").removesuffix("_HOME").lower())
        return env

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """Write to ``path`` a kubeconfig for this cluster that authenticates with ``token`` only.

        The server and CA are the current context's, embedded (never a client certificate).
        """
        minified = json.loads(
            self.kubectl(
                "config", "view", "--minify", "--flatten", "--raw", "-o", "json", check=True
            ).stdout
        )
        cluster = minified["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token", "context": {"cluster": "cluster", "user": "token"}}],
            "current-context": "token",
        }
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config))
        return path

    def run(
        self, binary: Path, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``binary`` against this cluster; text output captured, 120 s timeout.

        With ``check``, a failure raises CommandFailed, whose message has the stderr.
        """
        result = subprocess.run(
            [str(binary), *args],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl <args>`` against this cluster (the pinned release's kubectl)."""
        return self.run(self.kubectl_bin, *args, input=input, check=check)

    def helm(
        self, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``helm <args>`` against this cluster."""
        return self.run(self.helm_bin, *args, input=input, check=check)

    def get_json(self, *args: str) -> Any:
        """``kubectl get <args> -o json``, decoded; None when the object does not exist."""
        result = self.kubectl("get", *args, "-o", "json")
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr}")
        return json.loads(result.stdout)


@contextlib.contextmanager
def open_cluster(helm_home: Path) -> Iterator[KubeAccess]:
    """The cluster of ``$SHOAL_TEST_KUBECONFIG``, or a LocalCluster (control plane +
    node agent) started now and torn down on exit.

    Either way kubectl and helm are the pinned builds from tests/cluster/build.py.
    """
    external = os.environ.get(EXTERNAL_KUBECONFIG)
    if external:
        build_all()
        yield KubeAccess(
            Path(external), k8s_bin_dir() / "kubectl", helm_bin_dir() / "helm", helm_home)
        return
    with LocalCluster() as cluster:
        yield KubeAccess(cluster.kubeconfig, cluster.kubectl, cluster.helm, helm_home)
