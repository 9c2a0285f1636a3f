"""What operator end-to-end tests share: the operator as a process, kubectl JSON, waiting.

`OperatorProcess` runs `shoal operator --all-namespaces` against a cluster
(in the tests, as the chart's ServiceAccount: see conftest.py), exactly as the
chart's Deployment would (minus the image), and keeps its log in a file so a
failing test can show it and a denied request can fail the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shoal.backend import Backend
from tests.cluster.access import KubeAccess
from tests.cluster.images import SHOAL_IMAGE
from tests.cluster.postgres import ExternalPostgres, PostgresServer, free_port
from tests.support import wait_for

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# What kopf and the operator log when RBAC denies a request: the API's 403
# answer ('pods "x" is forbidden: User "..." cannot patch resource "pods" ...')
# or kopf's fallback warnings ("Not enough permissions to ..."). Other 403s,
# such as a write into a terminating namespace, are not RBAC's.
DENIED = re.compile(r'is forbidden: User ".*" cannot |not enough permissions', re.IGNORECASE)


class OperatorProcess:
    """`shoal operator` as a subprocess; `start()` returns once /readyz answers 200.

    It authenticates only as `kubeconfig` says (default: `kube`'s own
    kubeconfig); no other credentials are in its environment.
    """

    def __init__(self, kube: KubeAccess, log_path: Path, *extra: str,
                 kubeconfig: Path | None = None) -> None:
        self.kubeconfig = kubeconfig or kube.kubeconfig
        self.log_path = log_path
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = os.environ | {"KUBECONFIG": str(self.kubeconfig),
                            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        argv = [str(VENV_BIN / "shoal"), "operator", "--all-namespaces",
                "--liveness-port", str(self.liveness_port),
                "--metrics-port", str(self.metrics_port), *self.extra]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, "the operator's /readyz")
        return self

    def ready(self) -> bool:
        """/readyz answers 200 (raises if the process exited)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
        return self.probe("/readyz")[0] == 200

    def probe(self, path: str) -> tuple[int, str]:
        """(status, body) of GET `path` on the liveness port; (0, error) if it does not answer."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.liveness_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def log_size(self) -> int:
        """Bytes logged so far: an offset for `denied(since=...)`."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def denied(self, since: int = 0) -> list[str]:
        """Log lines after byte `since` that report a request RBAC refused."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return [line for line in text.splitlines() if DENIED.search(line)]

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def apply(kube: KubeAccess, manifest: dict[str, Any] | str) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    result = kube.kubectl("apply", "-f", "-", input=text)
    assert result.returncode == 0, result.stderr


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def refusals(denied: list[str], shown: int = 5) -> str:
    """An assertion message for what RBAC refused: the first lines, then how many more."""
    more = f"\n... and {len(denied) - shown} more" if len(denied) > shown else ""
    return "RBAC refused the operator:\n" + "\n".join(denied[:shown]) + more


def denied_events(kube: KubeAccess, since: str) -> list[str]:
    """Events kopf posted at or after `since` (RFC 3339) whose message reports an RBAC refusal.

    The operator turns some API answers into an Event and a condition without
    a log line (a refused Deployment apply is "DeploymentRejected").
    """
    found = kube.get_json("events", "-A", "--field-selector", "source=kopf") or {"items": []}
    return [f"{e['metadata']['namespace']}/{e['involvedObject'].get('name')}: "
            f"{e.get('reason')}: {e.get('message')}"
            for e in found["items"]
            if (e.get("lastTimestamp") or e.get("eventTime") or "") >= since
            and DENIED.search(e.get("message") or "")]


def events_for(kube: KubeAccess, namespace: str, name: str) -> list[dict[str, Any]]:
    """Events whose involved object is `name` in `namespace`, oldest first."""
    found = kube.get_json("events", "-n", namespace,
                     "--field-selector", f"involvedObject.name={name}") or {"items": []}
    return sorted(found["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime")
                  or "")


def install_crds(kube: KubeAccess) -> None:
    """Every CRD in crds/, applied and Established."""
    kube.kubectl("apply", "-f", str(REPO / "crds"), check=True)
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f",
                 str(REPO / "crds"), check=True)


def migrated_database(server: PostgresServer | ExternalPostgres, name: str) -> str:
    """DSN of a new database `name` on `server` with Shoal's schema in it."""
    dsn = server.create_database(name)

    async def migrate() -> None:
        backend = await Backend.connect(dsn)
        try:
            await backend.migrate()
        finally:
            await backend.close()

    asyncio.run(migrate())
    return dsn


def pool_pods(kube: KubeAccess, namespace: str, pool: str) -> list[dict[str, Any]]:
    """The pool's pods that are not being deleted."""
    found = kube.get_json("pods", "-n", namespace, "-l", f"shoal.dev/pool={pool}")
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def create_secret(kube: KubeAccess, namespace: str, dsn: str, name: str = "pg") -> None:
    """A Secret holding `dsn` under key `dsn`, replacing one of that name."""
    kube.kubectl("delete", "secret", name, "-n", namespace, "--ignore-not-found")
    kube.kubectl("create", "secret", "generic", name, "-n", namespace,
                 f"--from-literal=dsn={dsn}", check=True)


# The Dockerfile's image carries the demo app in its working directory.
APP = "examples/tasks.py:app"
IMAGE = os.environ.get("SHOAL_TEST_IMAGE", SHOAL_IMAGE)


def pool(name: str, namespace: str, secret: str = "pg", replicas: int | None = None,
         **scaling: Any) -> dict[str, Any]:
    """A WorkerPool of the demo app in the Dockerfile's image; `scaling` overrides."""
    spec: dict[str, Any] = {
        "app": APP, "template": {"image": IMAGE, "imagePullPolicy": "IfNotPresent"},
        "database": {"secretRef": {"name": secret}},
        "tasks": {"namespace": namespace}, "concurrency": 2, "claimTTL": "4s",
        "drainTimeout": "20s",
        "scaling": {"minReplicas": 1, "maxReplicas": 5, "scaleDownStabilization": "6s"}
        | scaling,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
