"""A node agent that plays the kubelet on the local test cluster.

Run as `python -m tests.cluster.node_agent --kubeconfig PATH --node-name NAME`.

What it guarantees, kubelet-like:

- The Node is registered Ready with generous capacity, nodeInfo versions equal
  to the API server's, address 127.0.0.1; its Lease in `kube-node-lease` is
  renewed every 10 s and its conditions refreshed every minute, so the node
  lifecycle controller never marks it NotReady or taints it.
- Every Pod bound to the node (spec.nodeName) gets its own loopback address
  as podIP (127/8 all routes to `lo` on Linux), from a 127.0.X.0/24 that no
  other agent on this machine holds (concurrent clusters never share a podIP).
  Each container's command + args runs as a local process in its own process
  group: no image, the project's environment (the venv's bin folder first on
  PATH), the Pod's env resolved as the kubelet does (see `node_env`). Programs
  must bind to their podIP (`fieldRef: status.podIP`): pods share the host's
  network.
- Status goes through pods/status: phase, conditions, container states, exit
  codes, restart counts; readiness, liveness and startup probes (httpGet,
  tcpSocket, exec); restarts per restartPolicy with the kubelet's back-off.
- Deletion: SIGTERM to each container's process group, up to the deletion
  grace period, then SIGKILL, a terminal status and the final delete with
  grace 0. When a container's main process exits, the rest of its process
  group is killed (as a container's PID namespace would be). On SIGTERM/SIGINT
  the agent stops every container and exits; children also get SIGKILL if the
  agent itself dies.

Volumes (emptyDir, secret, configMap, downwardAPI, projected with the
ServiceAccount token, hostPath) are bind-mounted in a private mount namespace
per container (see `node_volumes`), so in-cluster clients work. Container
output goes to `<log dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`;
the agent logs each path and serves it to `kubectl logs` (see `node_logs`).
Images, persistent volumes and `kubectl exec/attach/port-forward` are not
supported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import logging
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from tests.cluster.node_api import MERGE_PATCH, ApiException, Json, KubeApi
from tests.cluster.node_env import ConfigError, build_env, expand
from tests.cluster.node_logs import LogServer
from tests.cluster.node_volumes import mount_command, write_volumes

log = logging.getLogger("shoal.node_agent")

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
NODE_STATUS_SECONDS = 60
CONFIG_RETRY_SECONDS = 3
SHUTDOWN_GRACE_SECONDS = 2
# Waiting reasons that the kubelet announces with an Event, and that Event's reason.
WAITING_EVENTS = {"CreateContainerConfigError": "Failed", "CreateContainerError": "Failed",
                  "CrashLoopBackOff": "BackOff", "ContainerCreating": "FailedMount"}
KUBELET_CONDITIONS = {"PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"}

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:
    """In the child before exec: get SIGKILL when the agent dies, however it dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def timestamp(micro: bool = False) -> str:
    """Now as the API's Time (seconds) or MicroTime."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.now(UTC).strftime(fmt)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@functools.cache
def _os_image() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "Linux"


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class NoCommandError(Exception):
    """The container names no command (this node has no images to take one from)."""


def claim_pod_network() -> tuple[ipaddress.IPv4Network, TextIO]:
    """Claim a 127.0.X.0/24 no other agent on this machine holds (X >= 1).

    The claim is an flock on a file in the temp dir, held as long as the
    returned file stays open (so, for the agent's life), so concurrent
    clusters never hand the same podIP to two pods.
    """
    folder = Path(tempfile.gettempdir()) / "shoal-pod-networks"
    folder.mkdir(exist_ok=True)
    start = random.randrange(1, 256)
    for block in [*range(start, 256), *range(1, start)]:
        lock = (folder / f"127.0.{block}.0").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return ipaddress.IPv4Network(f"127.0.{block}.0/24"), lock
    raise RuntimeError("every 127.0.X.0/24 pod network is taken by another node agent")


class PodIPs:
    """Hands out loopback addresses from a network, round-robin, one per pod."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self.network = network
        self.free = list(network.hosts())
        self.used: set[str] = set()

    def allocate(self, preferred: str | None = None) -> str:
        """Return a free address, `preferred` if it is one (a pod we ran before)."""
        if preferred:
            with contextlib.suppress(ValueError):
                self.free.remove(ipaddress.IPv4Address(preferred))
                self.used.add(preferred)
                return preferred
        if not self.free:
            raise RuntimeError("pod network exhausted")
        address = str(self.free.pop(0))
        self.used.add(address)
        return address

    def release(self, address: str) -> None:
        """Return an address to the end of the queue (not reused soon)."""
        if address in self.used:
            self.used.remove(address)
            self.free.append(ipaddress.IPv4Address(address))


class Container:
    """One container of a pod: its process, restarts, probes and reported status."""

    def __init__(self, pod: PodWorker, spec: Json, *, init: bool) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.proc: asyncio.subprocess.Process | None = None
        self.env: dict[str, str] = {}
        self.state: Json = {"waiting": {"reason": "PodInitializing" if not init
                                        and pod.init_containers else "ContainerCreating"}}
        self.last_state: Json = {}
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.container_id: str | None = None
        self.current_log: Path | None = None
        self.done = False
        self.stop_event = asyncio.Event()
        self.backoff = 0.0

    def status(self) -> Json:
        """This container's entry in containerStatuses / initContainerStatuses."""
        status: Json = {
            "name": self.name, "image": self.spec.get("image", ""), "imageID": "",
            "ready": self.ready, "restartCount": self.restart_count, "started": self.started,
            "state": self.state, "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    def log_file(self, previous: bool) -> Path | None:
        """Output of the current (or previous) run; the log server reads it."""
        run = self.restart_count - 1 if previous else self.restart_count
        return self.pod.log_dir / self.name / f"{run}.log" if run >= 0 else None

    def writing(self, path: Path) -> bool:
        return self.proc is not None and path == self.current_log

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self.pod.changed()

    def _retire_state(self) -> None:
        """Keep the last termination as lastState when the container moves on."""
        if "terminated" in self.state:
            self.last_state = self.state

    def waiting(self, reason: str, message: str) -> None:
        """Report the container as not started, for `reason` (an Event when it changes)."""
        if self.state.get("waiting") != {"reason": reason, "message": message}:
            event = WAITING_EVENTS.get(reason)
            if event:
                self.pod.event(event, f"{self.name}: {message}", "Warning")
        self._retire_state()
        self._set(state={"waiting": {"reason": reason, "message": message}},
                  ready=False, started=False)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but return at once when the container is being stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def run(self) -> int | None:
        """Run, restarting per policy, until done or stopped; return the last exit code."""
        code: int | None = None
        while not self.stop_event.is_set():
            try:
                argv, env = await self._prepare()
            except (ConfigError, NoCommandError) as error:
                reason = ("CreateContainerError" if isinstance(error, NoCommandError)
                          else "CreateContainerConfigError")
                self.waiting(reason, str(error))
                await self._sleep(CONFIG_RETRY_SECONDS)
                continue
            if self.stop_event.is_set():
                break
            started = time.monotonic()
            code = await self._execute(argv, env)
            if self.stop_event.is_set() or not self._restarts(code):
                break
            if time.monotonic() - started > 2 * self.pod.agent.backoff_max:
                self.backoff = 0.0
            delay, self.backoff = self.backoff, min(
                max(self.backoff * 2, self.pod.agent.backoff_base), self.pod.agent.backoff_max)
            if delay:
                self.waiting("CrashLoopBackOff",
                              f"back-off {delay:g}s restarting failed container={self.name} "
                              f"pod={self.pod.name}_{self.pod.namespace}({self.pod.uid})")
                await self._sleep(delay)
            if not self.stop_event.is_set():
                self.restart_count += 1
        self._set(done=True)
        return code

    def _restarts(self, code: int) -> bool:
        policy = self.pod.pod["spec"].get("restartPolicy", "Always")
        if policy == "Never":
            return False
        if self.init or policy == "OnFailure":
            return code != 0
        return True

    async def _prepare(self) -> tuple[list[str], dict[str, str]]:
        agent = self.pod.agent
        pod = self.pod.pod_with_addresses()
        spec_env = await build_env(pod, self.spec, self.pod.fetch, agent.allocatable)
        argv = [expand(part, spec_env) for part in
                [*(self.spec.get("command") or []), *(self.spec.get("args") or [])]]
        if not argv:
            raise NoCommandError("container has no command: this node runs commands, not images")
        if agent.unshare:
            argv = mount_command(argv, self.spec, self.pod.volumes, agent.unshare)
        env = {key: os.environ[key] for key in ("HOME", "LANG", "LC_ALL", "TZ", "USER")
               if key in os.environ}
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        env["HOSTNAME"] = self.pod.name
        env.update(agent.service_env)
        env.update(spec_env)
        return argv, env

    async def _execute(self, argv: list[str], env: dict[str, str]) -> int:
        """Start the process, probe it while it runs, record how it ended."""
        log_path = self.pod.log_dir / self.name / f"{self.restart_count}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._retire_state()
        with log_path.open("ab") as output:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=self.spec.get("workingDir") or None,
                    stdin=asyncio.subprocess.DEVNULL, stdout=output,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_agent)
            except (OSError, ValueError) as error:
                self.pod.event("Failed", f"{self.name}: {error}", "Warning")
                self._set(state={"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": str(error),
                    "startedAt": timestamp(), "finishedAt": timestamp()}}, ready=False)
                return 128
        self.proc, self.env, self.current_log = proc, env, log_path
        if self.stop_event.is_set():  # stopped while the process was starting
            signal_group(proc.pid, signal.SIGKILL)
        started_at = timestamp()
        self.pod.event("Started", f"Started container {self.name}")
        log.info("pod %s/%s container %s: pid %d, output in %s",
                 self.pod.namespace, self.pod.name, self.name, proc.pid, log_path)
        self._set(container_id=f"shoal://{uuid.uuid4().hex}",
                  state={"running": {"startedAt": started_at}},
                  started="startupProbe" not in self.spec,
                  ready="readinessProbe" not in self.spec and not self.init)
        probes = asyncio.create_task(self._probe_all())
        try:
            returncode = await proc.wait()
        finally:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            signal_group(proc.pid, signal.SIGKILL)
            self.proc = None
        code = 128 - returncode if returncode < 0 else returncode
        self._set(state={"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at, "finishedAt": timestamp(),
            "containerID": self.container_id}}, ready=self.init and code == 0, started=False)
        log.info("pod %s/%s container %s exited with %d",
                 self.pod.namespace, self.pod.name, self.name, code)
        return code

    async def terminate(self, deadline: Callable[[], float]) -> None:
        """SIGTERM the process group; SIGKILL it once `deadline()` (monotonic) passes."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        signal_group(proc.pid, signal.SIGTERM)
        waiter = asyncio.ensure_future(proc.wait())
        while not waiter.done():
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                signal_group(proc.pid, signal.SIGKILL)
                break
            await asyncio.wait({waiter}, timeout=min(remaining, 0.2))
        await waiter

    async def stop(self, deadline: Callable[[], float]) -> None:
        """Never start again; terminate the running process by `deadline()`."""
        self.stop_event.set()
        if self.proc is not None:
            self.pod.event("Killing", f"Stopping container {self.name}")
        await self.terminate(deadline)

    # Probes -----------------------------------------------------------------

    async def _probe_all(self) -> None:
        startup = self.spec.get("startupProbe")
        if startup and not await self._probe_loop(startup, "startup"):
            return
        if startup:
            self._set(started=True)
        loops = [self._probe_loop(self.spec[kind], kind.removesuffix("Probe"))
                 for kind in ("readinessProbe", "livenessProbe") if kind in self.spec]
        await asyncio.gather(*loops)

    async def _probe_loop(self, probe: Json, kind: str) -> bool:
        """Probe every period; return True once a startup probe passes.

        Readiness flips `ready` after successThreshold / failureThreshold
        results in a row; a failing liveness or startup probe kills the
        container (which then restarts per policy).
        """
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        successes = failures = 0
        while True:
            ok = await self._probe_once(probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readiness":
                if ok and successes >= probe.get("successThreshold", 1) and not self.ready:
                    self._set(ready=True)
                elif not ok and failures >= probe.get("failureThreshold", 3) and self.ready:
                    self.pod.event("Unhealthy", f"{self.name}: readiness probe failed", "Warning")
                    self._set(ready=False)
            elif kind == "startup" and ok:
                return True
            elif ok is False and failures >= probe.get("failureThreshold", 3):
                log.info("pod %s/%s container %s failed its %s probe; killing it",
                         self.pod.namespace, self.pod.name, self.name, kind)
                self.pod.event("Unhealthy", f"{self.name}: {kind} probe failed "
                               f"{failures} times; the container will be restarted", "Warning")
                await self._kill_for_probe(probe)
                return False
            await asyncio.sleep(probe.get("periodSeconds", 10))

    async def _kill_for_probe(self, probe: Json) -> None:
        grace = probe.get("terminationGracePeriodSeconds") or self.pod.grace_seconds()
        end = time.monotonic() + grace
        await self.terminate(lambda: end)

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or port.isdigit():
            return int(port)
        for declared in self.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"no port named {port!r}")

    async def _probe_once(self, probe: Json) -> bool:
        host = self.pod.pod_ip or "127.0.0.1"
        try:
            async with asyncio.timeout(probe.get("timeoutSeconds", 1)):
                if "httpGet" in probe:
                    get = probe["httpGet"]
                    scheme = get.get("scheme", "HTTP").lower()
                    url = (f"{scheme}://{get.get('host') or host}:{self._port(get['port'])}"
                           f"{get.get('path', '/')}")
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    async with self.pod.agent.http.get(url, headers=headers, ssl=False,
                                                       allow_redirects=False) as response:
                        return 200 <= response.status < 400
                if "tcpSocket" in probe:
                    sock = probe["tcpSocket"]
                    _, writer = await asyncio.open_connection(
                        sock.get("host") or host, self._port(sock["port"]))
                    writer.close()
                    return True
                if "exec" in probe:
                    return await self._exec_probe(probe["exec"].get("command") or [])
        except (OSError, TimeoutError, ValueError, aiohttp.ClientError):
            return False
        return False

    async def _exec_probe(self, command: list[str]) -> bool:
        """Run `command` with the container's env, inside its mount namespace if it has one."""
        nsenter = self.pod.agent.nsenter
        if nsenter and self.proc and self.spec.get("volumeMounts"):
            command = [nsenter, f"--mount=/proc/{self.proc.pid}/ns/mnt", "--", *command]
        proc = await asyncio.create_subprocess_exec(
            *command, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_agent)
        try:
            return await proc.wait() == 0
        finally:
            signal_group(proc.pid, signal.SIGKILL)


class PodWorker:
    """Runs one Pod bound to this node from first sight to its final delete."""

    def __init__(self, agent: Agent, pod: Json) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        spec = pod["spec"]
        self.init_containers = [Container(self, c, init=True)
                                for c in spec.get("initContainers") or []]
        self.containers = [Container(self, c, init=False) for c in spec["containers"]]
        self.log_dir = agent.log_dir / f"{self.namespace}_{self.name}_{self.uid}"
        status = pod.get("status") or {}
        self.seen_terminal = status.get("phase") in ("Succeeded", "Failed")
        self.pod_ip: str | None = None
        self.holds_ip = False
        self.volumes: dict[str, Path] = {}
        self.start_time: str = status.get("startTime") or timestamp()
        self.initialized = not self.init_containers
        self.init_failed = False
        self.transitions: dict[str, tuple[str, str]] = {
            c["type"]: (c["status"], c.get("lastTransitionTime") or timestamp())
            for c in status.get("conditions") or []}
        self.dirty = asyncio.Event()
        self.deleting = asyncio.Event()
        self.deadline = float("inf")
        self.gone = False
        self.deletion_noticed: float | None = None
        self.writer = asyncio.create_task(self._status_writer())
        self.task = asyncio.create_task(self._run())
        self.update(pod)

    # Inputs -----------------------------------------------------------------

    def update(self, pod: Json) -> None:
        """Take a newer version of the Pod; notice (and shorten) its deletion."""
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            now = time.monotonic()
            self.deletion_noticed = self.deletion_noticed or now
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.grace_seconds()
            self.deadline = min(self.deadline, self.deletion_noticed + grace)
            self.deleting.set()

    def removed(self) -> None:
        """The Pod vanished from the API (force delete): stop within a short grace."""
        self.gone = True
        self.deadline = min(self.deadline, time.monotonic() + SHUTDOWN_GRACE_SECONDS)
        self.deleting.set()

    def grace_seconds(self) -> int:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        return 30 if grace is None else int(grace)

    def changed(self) -> None:
        self.dirty.set()

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        """Record an Event about this Pod (in the background, best effort)."""
        self.agent.record(self.pod, reason, message, kind)

    async def fetch(self, resource: str, name: str) -> Json | None:
        """Read a Secret or ConfigMap of the pod's namespace; None if missing."""
        try:
            return await self.agent.api.get(
                f"/api/v1/namespaces/{self.namespace}/{resource}/{name}")
        except ApiException as error:
            if error.status == 404:
                return None
            raise ConfigError(f"cannot read {resource} {name}: {error.reason}") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ConfigError(f"cannot read {resource} {name}: {error}") from error

    def pod_with_addresses(self) -> Json:
        """The Pod with this node's view of its addresses (for fieldRef)."""
        status = {**(self.pod.get("status") or {}), **self._addresses()}
        return {**self.pod, "status": status}

    def _addresses(self) -> Json:
        if not self.pod_ip:
            return {}
        return {"hostIP": self.agent.host_ip, "hostIPs": [{"ip": self.agent.host_ip}],
                "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}]}

    # Lifecycle --------------------------------------------------------------

    async def _run(self) -> None:
        if self.seen_terminal:
            log.info("pod %s/%s is already finished; not running it", self.namespace, self.name)
        else:
            self._allocate_ip()
        life = asyncio.create_task(self._lifecycle())
        await self.deleting.wait()
        await asyncio.gather(*(c.stop(lambda: self.deadline)
                               for c in [*self.init_containers, *self.containers]))
        await life
        self._release_ip()
        shutil.rmtree(self.log_dir / "volumes", ignore_errors=True)
        if self.gone or self.agent.stopping:
            self.writer.cancel()
            return
        self.changed()
        await self._flush()
        self.writer.cancel()
        await self._final_delete()

    def _allocate_ip(self) -> None:
        if self.pod["spec"].get("hostNetwork"):
            self.pod_ip = self.agent.host_ip
            return
        previous = (self.pod.get("status") or {}).get("podIP")
        self.pod_ip = self.agent.pod_ips.allocate(previous)
        self.holds_ip = True
        self.changed()

    def _release_ip(self) -> None:
        """Give the address back once (the pod keeps reporting it)."""
        if self.pod_ip and self.holds_ip:
            self.agent.pod_ips.release(self.pod_ip)
            self.holds_ip = False

    async def _lifecycle(self) -> None:
        """Init containers one by one, then all containers, until they are done."""
        if self.seen_terminal or not await self._write_volumes():
            return
        for container in self.init_containers:
            code = await container.run()
            if self.deleting.is_set():
                return
            if code != 0:
                self.init_failed = True
                self.changed()
                return
        self.initialized = True
        self.changed()
        await asyncio.gather(*(c.run() for c in self.containers))
        self._release_ip()

    async def _write_volumes(self) -> bool:
        """Write the pod's volumes, retrying while a source is missing; False if deleted."""
        while not self.deleting.is_set():
            try:
                self.volumes = await write_volumes(self.pod, self.log_dir / "volumes",
                                                   self.fetch, self.request_token)
                return True
            except ConfigError as error:
                for container in [*self.init_containers, *self.containers]:
                    container.waiting("ContainerCreating", f"MountVolume.SetUp failed: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deleting.wait(), CONFIG_RETRY_SECONDS)
        return False

    async def request_token(self, projection: Json) -> str:
        """A ServiceAccount token bound to this Pod (the TokenRequest API)."""
        account = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Json = {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                         "name": self.name, "uid": self.uid},
                      "expirationSeconds": projection.get("expirationSeconds", 3607)}
        if projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        try:
            review = await self.agent.api.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                      "spec": spec})
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            raise ConfigError(f"no token for serviceaccount {account}: {error}") from error
        return str(review["status"]["token"])

    async def _final_delete(self) -> None:
        """The kubelet's last word: delete the Pod with grace 0 so it vanishes."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        try:
            await self.agent.api.request(
                "DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body=body)
            log.info("pod %s/%s deleted", self.namespace, self.name)
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("final delete of %s/%s failed: %s", self.namespace, self.name, error)

    # Status -----------------------------------------------------------------

    def phase(self) -> str:
        if self.seen_terminal:
            return str(self.pod["status"]["phase"])
        if self.init_failed:
            return "Failed"
        if not self.initialized:
            return "Pending"
        if all(c.done for c in self.containers):
            codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.containers]
            return "Succeeded" if not any(codes) else "Failed"
        if any("running" in c.state or c.restart_count or c.done for c in self.containers):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Json:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, timestamp())
        condition: Json = {"type": kind, "status": status, "lastProbeTime": None,
                           "lastTransitionTime": self.transitions[kind][1],
                           "observedGeneration": self.pod["metadata"].get("generation", 1)}
        if not ok and reason:
            condition.update(reason=reason, message=message)
        return condition

    def _conditions(self, phase: str, others: list[Json]) -> list[Json]:
        terminal = phase in ("Succeeded", "Failed")
        unready = [c.name for c in self.containers if not c.ready]
        unready_msg = f"containers with unready status: [{' '.join(unready)}]"
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        true_types = {c["type"] for c in others if c.get("status") == "True"}
        missing = [g for g in gates if g not in true_types]
        incomplete = [c.name for c in self.init_containers if not (c.done and not self.init_failed)]
        ready_reason, ready_msg = reason, unready_msg
        if not unready and missing:
            ready_reason = "ReadinessGatesNotReady"
            ready_msg = (f'corresponding condition of pod readiness gate "{missing[0]}" '
                         "does not exist.")
        return [
            self._condition("PodReadyToStartContainers", bool(self.pod_ip) and not terminal),
            self._condition("Initialized", self.initialized, "ContainersNotInitialized",
                            f"containers with incomplete status: [{' '.join(incomplete)}]"),
            self._condition("ContainersReady", not unready and not terminal, reason, unready_msg),
            self._condition("Ready", not unready and not missing and not terminal,
                            ready_reason, ready_msg),
        ]

    def status(self, current: Json) -> Json:
        """The Pod's status: `current` with the kubelet-owned fields replaced."""
        phase = self.phase()
        if self.seen_terminal:
            return current
        others = [c for c in current.get("conditions") or []
                  if c["type"] not in KUBELET_CONDITIONS]
        status: Json = {**current, **self._addresses(), "phase": phase,
                        "startTime": self.start_time,
                        "observedGeneration": self.pod["metadata"].get("generation", 1),
                        "conditions": [*others, *self._conditions(phase, others)],
                        "containerStatuses": [c.status() for c in self.containers]}
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    async def _status_writer(self) -> None:
        """Write the status after every change (coalesced), retrying until it lands."""
        while True:
            await self.dirty.wait()
            await asyncio.sleep(0.05)
            await self._flush()

    async def _flush(self) -> None:
        while self.dirty.is_set() and not self.gone:
            self.dirty.clear()
            try:
                await self._write_status()
            except (ApiException, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, ApiException) and error.status == 404:
                    self.gone = True
                    return
                if isinstance(error, ApiException) and error.status == 422:
                    log.error("status of %s/%s rejected: %s", self.namespace, self.name, error)
                    return
                log.warning("status of %s/%s not written: %s", self.namespace, self.name, error)
                self.dirty.set()
                await asyncio.sleep(1)

    async def _write_status(self) -> None:
        """PUT pods/status; on a conflict re-read the Pod and try again."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
        for _ in range(10):
            pod = self.pod
            body = {**pod, "status": self.status(pod.get("status") or {})}
            if body["status"] == pod.get("status"):
                return
            try:
                self.update(await self.agent.api.request("PUT", f"{path}/status", body=body))
                return
            except ApiException as error:
                if error.status != 409:
                    raise
                fresh = await self.agent.api.get(path)
                if fresh["metadata"]["uid"] != self.uid:
                    self.gone = True
                    return
                self.update(fresh)
        raise ApiException(status=409, reason="too many conflicts")


class Agent:
    """The node: registration, lease and status heartbeat, and the pod workers."""

    def __init__(self, api: KubeApi, args: argparse.Namespace, version: str,
                 server: str) -> None:
        self.api = api
        self.node_name: str = args.node_name
        self.version = version
        self.host_ip = "127.0.0.1"
        # Holding the claim (an open, locked file) is what reserves the network.
        self.network_claim: TextIO | None = None
        if args.pod_network:
            network = ipaddress.IPv4Network(args.pod_network)
        else:
            network, self.network_claim = claim_pod_network()
        self.pod_ips = PodIPs(network)
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix=f"{self.node_name}-pods-"))
        self.backoff_base: float = args.backoff_base
        self.backoff_max: float = args.backoff_max
        self.allocatable = {"cpu": args.cpu, "memory": args.memory, "pods": args.pods,
                            "ephemeral-storage": "100Gi"}
        url = urlsplit(server)
        self.service_env = {"KUBERNETES_SERVICE_HOST": url.hostname or "127.0.0.1",
                            "KUBERNETES_SERVICE_PORT": str(url.port or 443)}
        self.workers: dict[str, PodWorker] = {}
        self.running: set[PodWorker] = set()
        self.events: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.registered_at = timestamp()
        self.node_uid = ""
        self.lease: Json | None = None
        self.http = aiohttp.ClientSession()
        self.unshare: str | None = None
        self.nsenter = shutil.which("nsenter")
        self.logs = LogServer(self._find_container, self.log_dir / "pki")
        self.kubelet_port = 0
        # One boot per agent: a bootID that changes tells the cluster the node rebooted.
        self.boot_id = str(uuid.uuid4())

    # Node -------------------------------------------------------------------

    def _node_status(self) -> Json:
        now = timestamp()

        def condition(kind: str, status: str, reason: str, message: str) -> Json:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": self.registered_at}

        return {
            "capacity": self.allocatable, "allocatable": self.allocatable,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                          "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID",
                          "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            # No Hostname address: the API server would prefer it, and it does not resolve.
            "addresses": [{"type": "InternalIP", "address": self.host_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name)),
                "bootID": self.boot_id, "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "shoal-node-agent://0.1.0",
                "kubeletVersion": self.version, "kubeProxyVersion": self.version,
                "operatingSystem": "linux", "architecture": _arch(),
            },
        }

    async def register(self) -> None:
        """Create the Node (or adopt an existing one) and report it Ready."""
        arch = _arch()
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": {
                    "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch}},
                "spec": {}, "status": self._node_status()}
        try:
            created = await self.api.request("POST", "/api/v1/nodes", body=node)
            log.info("registered node %s", self.node_name)
        except ApiException as error:
            if error.status != 409:
                raise
            created = await self.api.get(f"/api/v1/nodes/{self.node_name}")
            log.info("adopted existing node %s", self.node_name)
        self.node_uid = created["metadata"]["uid"]
        await self._post_node_status()

    async def _post_node_status(self) -> None:
        await self.api.request("PATCH", f"/api/v1/nodes/{self.node_name}/status",
                               body={"status": self._node_status()}, content_type=MERGE_PATCH)

    async def _renew_lease(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": timestamp(micro=True)}
        if self.lease is None:
            try:
                self.lease = await self.api.get(f"{path}/{self.node_name}")
            except ApiException as error:
                if error.status != 404:
                    raise
                owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                         "uid": self.node_uid}
                self.lease = await self.api.request("POST", path, body={
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.node_name, "namespace": "kube-node-lease",
                                 "ownerReferences": [owner]},
                    "spec": spec})
                return
        lease = {**self.lease, "spec": {**self.lease.get("spec", {}), **spec}}
        try:
            self.lease = await self.api.request("PUT", f"{path}/{self.node_name}", body=lease)
        except ApiException as error:
            self.lease = None
            if error.status not in (404, 409):
                raise

    async def heartbeat(self) -> None:
        """Renew the Lease every 10 s; refresh Node status every minute (re-register if gone)."""
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            try:
                await self._renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_SECONDS:
                    try:
                        await self._post_node_status()
                    except ApiException as error:
                        if error.status != 404:
                            raise
                        await self.register()
                        self.lease = None
                    last_status = time.monotonic()
            except (ApiException, aiohttp.ClientError, TimeoutError) as error:
                log.warning("node heartbeat failed: %s", error)

    # Pods -------------------------------------------------------------------

    def _observe(self, pod: Json) -> None:
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is None:
            log.info("pod %s/%s bound to this node", pod["metadata"]["namespace"],
                     pod["metadata"]["name"])
            worker = self.workers[pod["metadata"]["uid"]] = PodWorker(self, pod)
            self.running.add(worker)
            worker.task.add_done_callback(self._worker_done)
        else:
            worker.update(pod)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        """Drop a finished worker; a crash is a bug in this agent: log it loudly."""
        self.running = {w for w in self.running if w.task is not task}
        if not task.cancelled() and task.exception() is not None:
            log.error("pod worker crashed", exc_info=task.exception())

    def record(self, pod: Json, reason: str, message: str, kind: str) -> None:
        """Post a core/v1 Event from "kubelet" about `pod` without waiting for it."""
        meta, now = pod["metadata"], timestamp()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": kind, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        task = asyncio.create_task(self._post_event(body))
        self.events.add(task)
        task.add_done_callback(self.events.discard)

    async def _post_event(self, body: Json) -> None:
        try:
            await self.api.request("POST", f"/api/v1/namespaces/{body['metadata']['namespace']}"
                                   "/events", body=body)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.debug("event not recorded: %s", error)

    def _find_container(self, namespace: str, pod: str, name: str) -> Container | None:
        for worker in self.workers.values():
            if (worker.namespace, worker.name) == (namespace, pod):
                return next((c for c in [*worker.init_containers, *worker.containers]
                             if c.name == name), None)
        return None

    def _forget(self, uid: str) -> None:
        worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.removed()

    async def watch_pods(self) -> None:
        """List then watch this node's Pods; relist when the resourceVersion expired."""
        selector = f"spec.nodeName={self.node_name}"
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.api.get("/api/v1/pods", fieldSelector=selector)
                    version = listing["metadata"]["resourceVersion"]
                    present = {pod["metadata"]["uid"] for pod in listing["items"]}
                    for uid in set(self.workers) - present:
                        self._forget(uid)
                    for pod in listing["items"]:
                        self._observe(pod)
                async for event in self.api.watch(
                        "/api/v1/pods", fieldSelector=selector, resourceVersion=version,
                        allowWatchBookmarks="true", timeoutSeconds=300):
                    pod = event["object"]
                    version = pod["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._forget(pod["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(pod)
            except ApiException as error:
                if error.status == 410:
                    log.info("pod watch expired; relisting")
                    version = None
                    continue
                log.warning("pod watch failed: %s", error)
                await asyncio.sleep(1)
            except (aiohttp.ClientError, TimeoutError) as error:
                log.warning("pod watch interrupted: %s", error)
                await asyncio.sleep(1)

    async def _detect_mount_namespaces(self) -> None:
        """Use `unshare --mount` for volumes if this machine allows it (else no volumes)."""
        unshare = shutil.which("unshare")
        if unshare:
            proc = await asyncio.create_subprocess_exec(
                unshare, "--mount", "--propagation", "private", "true",
                stderr=asyncio.subprocess.DEVNULL)
            if await proc.wait() == 0:
                self.unshare = unshare
                return
        log.warning("no private mount namespaces here: pod volumes are not mounted")

    async def run(self) -> None:
        """Register, then keep the node alive and its pods running until cancelled."""
        await self._detect_mount_namespaces()
        self.kubelet_port = await self.logs.start()
        await self.register()
        await self._renew_lease()
        log.info("node %s ready; pod IPs from %s; container output under %s",
                 self.node_name, self.pod_ips.network, self.log_dir)
        await asyncio.gather(self.heartbeat(), self.watch_pods())

    async def shutdown(self) -> None:
        """Stop every container (short grace, then SIGKILL) and close connections."""
        self.stopping = True
        workers = list(self.running)
        for worker in workers:
            worker.removed()
        if workers:
            await asyncio.wait([w.task for w in workers], timeout=SHUTDOWN_GRACE_SECONDS + 5)
        await self.http.close()
        await self.logs.stop()
        shutil.rmtree(self.log_dir / "pki", ignore_errors=True)


async def _server_version(api: KubeApi, stop: asyncio.Event) -> str | None:
    """The API server's gitVersion, waiting for it to answer; None if stopped first."""
    while True:
        try:
            return str((await api.get("/version"))["gitVersion"])
        except (ApiException, aiohttp.ClientError, OSError) as error:
            log.info("waiting for the API server: %s", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1)
        if stop.is_set():
            return None


async def amain(args: argparse.Namespace) -> None:
    """Run the agent until SIGTERM/SIGINT; leave no container process behind."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await KubeApi.from_kubeconfig(args.kubeconfig) as api:
        version = await _server_version(api, stop)
        if version is None:
            return
        agent = Agent(api, args, version, api.client.configuration.host or "")
        runner = asyncio.create_task(agent.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        log.info("node agent stopping")
        await agent.shutdown()
        runner.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="shoal-local")
    parser.add_argument("--pod-network",
                        help="loopback network pod IPs come from (default: a free 127.0.X.0/24)")
    parser.add_argument("--log-dir", help="container output folder (default: a new temp dir)")
    parser.add_argument("--cpu", default="32")
    parser.add_argument("--memory", default="64Gi")
    parser.add_argument("--pods", default="250")
    parser.add_argument("--backoff-base", type=float, default=10.0,
                        help="first crash-loop back-off in seconds (the kubelet's 10)")
    parser.add_argument("--backoff-max", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s node-agent %(levelname)s %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
