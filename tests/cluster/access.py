"""KubeAccess: what a test needs to talk to a cluster with kubectl and helm."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.kind import KindCluster
from tests.cluster.shell import CommandFailed

EXTERNAL_KUBECONFIG = "SHOAL_TEST_KUBECONFIG"
__all__ = ["EXTERNAL_KUBECONFIG", "CommandFailed", "KubeAccess"]


@dataclass(frozen=True)
class KubeAccess:
    """A cluster's kubeconfig, plus runners for kubectl and helm.

    ``helm_home`` isolates helm's cache/config/data from the user's own. ``kind``
    is the kind cluster when the harness made it (None for ``$SHOAL_TEST_KUBECONFIG``):
    tests that act on nodes (a hard kill inside one) need it. ``shared`` is a host
    folder every pod can mount at ``kind.SHARED_PATH`` (hostPath), if there is one.
    """

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    helm_home: Path
    kind: KindCluster | None = None
    shared: Path | None = None

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
