"""A real, local Kubernetes control plane: etcd, kube-apiserver, controller manager, scheduler.

Binaries come from :mod:`tests.cluster.build` (built once, cached by version). Each
component runs in its own process group on free loopback ports, under a temporary
directory that also holds the PKI and kubeconfigs. :meth:`ControlPlane.stop` (also
run at interpreter exit, on SIGTERM/SIGHUP and on Ctrl-C through the context
manager) sends SIGTERM to each group, then SIGKILL, and removes the directory.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import yaml

from tests.cluster.build import build_all, helm_bin_dir, k8s_bin_dir
from tests.cluster.pki import CertFiles, Pki
from tests.cluster.postgres import free_port

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STOP_GRACE_SECONDS = 10.0


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertFiles, user: str) -> None:
    """Write a kubeconfig for ``server`` authenticating with the client cert ``client``."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "shoal-local",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "shoal-local", "context": {"cluster": "shoal-local", "user": user}}],
        "current-context": "shoal-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


@dataclass
class Component:
    """One running process of the cluster, in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the component's log."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def terminate(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``grace`` seconds."""
        pgid = self.proc.pid  # start_new_session=True: the child leads its group
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure nothing it spawned lingers in the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            break
        self.proc.wait(timeout=5.0)


_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


def _stop_all_live() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        plane.stop()


def _raise_system_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _install_exit_handlers() -> None:
    """Stop live clusters at exit, and turn SIGTERM/SIGHUP into a clean exit.

    Signal handlers are only installed from the main thread and only where the
    default action (die without cleanup) is in place, so pytest's or the
    application's own handlers are left alone.
    """
    atexit.register(_stop_all_live)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_system_exit)


_install_exit_handlers()


@dataclass(eq=False)
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback.

    After :meth:`start` returns, ``/readyz`` is green, the controller manager and
    scheduler are healthy, and the ``default`` ServiceAccount exists. ``kubeconfig``
    authenticates as a cluster admin (group ``system:masters``).
    """

    startup_timeout: float = 90.0
    k8s_bin: Path = field(default_factory=k8s_bin_dir)
    helm_bin: Path = field(default_factory=helm_bin_dir)
    workdir: Path | None = field(default=None, init=False)  # set by start(), None after stop()
    kubeconfig: Path = field(init=False)
    server: str = field(init=False)
    pki: Pki = field(init=False)
    components: list[Component] = field(default_factory=list, init=False)
    _ssl: ssl.SSLContext = field(init=False)
    _sa_keys: CertFiles = field(init=False)

    @property
    def kubectl(self) -> Path:
        """The kubectl binary of the pinned release."""
        return self.k8s_bin / "kubectl"

    @property
    def helm(self) -> Path:
        """The helm binary."""
        return self.helm_bin / "helm"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Build missing binaries, start every component and wait until usable."""
        build_all()
        t0 = time.monotonic()
        with _live_lock:
            _live.add(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        elapsed = time.monotonic() - t0
        print(f"{type(self).__name__} ready in {elapsed:.1f}s at {self.server}", flush=True)

    def _start(self) -> None:
        self._start_api_server()
        # Everything after the API server starts at once; then wait for all of it.
        for what, ready in self._start_controllers() + self._start_extras():
            self._wait(what, ready)

    def _start_extras(self) -> list[tuple[str, Callable[[], bool]]]:
        """Hook: start more processes once the API server is ready; return readiness checks."""
        return []

    def _start_api_server(self) -> None:
        """Start etcd and kube-apiserver; return once ``/readyz`` is green."""
        self.workdir = Path(tempfile.mkdtemp(prefix="shoal-k8s-"))
        (self.workdir / "logs").mkdir()
        pki = self.pki = Pki(self.workdir / "pki")
        api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"

        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: durability buys nothing here
                "--log-level=warn",
            ],
        )
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", SERVICE_IP),
        )
        sa = self._sa_keys = pki.signing_key("service-account")
        admin = pki.issue("admin", "shoal-admin", organizations=("system:masters",))
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, admin, "shoal-admin")
        self._ssl = ssl.create_default_context(cafile=str(pki.ca.cert))
        self._ssl.load_cert_chain(str(admin.cert), str(admin.key))

        self._wait("etcd /health", lambda: _etcd_healthy(etcd_url))
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait("kube-apiserver /readyz", lambda: self.api_get("/readyz") is not None)

    def _start_controllers(self) -> list[tuple[str, Callable[[], bool]]]:
        """Start the controller manager and scheduler; return their readiness checks."""
        assert self.workdir is not None
        sa, pki = self._sa_keys, self.pki
        kcm_port, sched_port = free_port(), free_port()
        kcm_kubeconfig = self._component_kubeconfig("kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
        )
        sched_kubeconfig = self._component_kubeconfig("kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        return [
            ("kube-controller-manager /healthz", lambda: _healthz(kcm_port)),
            ("kube-scheduler /healthz", lambda: _healthz(sched_port)),
            (
                "default ServiceAccount",
                lambda: (
                    self.api_get("/api/v1/namespaces/default/serviceaccounts/default") is not None
                ),
            ),
        ]

    def stop(self) -> None:
        """Stop every component (last started first) and remove the work directory.

        Idempotent; safe to call from atexit and signal handlers.
        """
        with _live_lock:
            _live.discard(self)
        while self.components:
            self.components.pop().terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- helpers ---------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> Component:
        """Run ``argv`` as a cluster component: own process group, log file, stopped with us."""
        assert self.workdir is not None, "spawn() needs a started control plane"
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        component = Component(name, proc, log)
        self.components.append(component)
        return component

    def _spawn(self, name: str, args: list[str]) -> Component:
        return self.spawn(name, [str(self.k8s_bin / name), *args])

    def _component_kubeconfig(self, name: str) -> Path:
        """Kubeconfig for ``system:<name>``, the identity its bootstrap RBAC roles expect."""
        assert self.workdir is not None
        user = f"system:{name}"
        cert = self.pki.issue(name, user)
        path = self.workdir / f"{name}.kubeconfig"
        write_kubeconfig(path, self.server, self.pki.ca.cert, cert, user)
        return path

    def api_get(self, path: str) -> Any:
        """GET ``path`` as cluster admin: decoded JSON (or text) on 200, None on any failure."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl, timeout=5) as resp:
                body = resp.read()
        except (urllib.error.URLError, OSError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode()

    def _wait(self, what: str, ready: Callable[[], bool], interval: float = 0.1) -> None:
        """Poll ``ready()`` until true; fail fast if a component died, or on timeout."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for component in self.components:
                component.check_alive()
            if ready():
                return
            time.sleep(interval)
        logs = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in self.components)
        raise TimeoutError(f"{what} not ready after {self.startup_timeout:.0f}s\n{logs}")


def _etcd_healthy(url: str) -> bool:
    """True once etcd at ``url`` reports itself healthy."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _healthz(port: int) -> bool:
    """True if the self-signed HTTPS endpoint on ``port`` answers ``/healthz`` with ok."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # components serve self-signed certs on loopback
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2
        ) as resp:
            return bool(resp.read() == b"ok")
    except (urllib.error.URLError, OSError):
        return False
