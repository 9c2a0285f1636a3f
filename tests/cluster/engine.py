"""Step 1: a Docker engine that runs kind's privileged node containers.

`ensure_engine()` uses the engine `docker info` reaches; else it installs
Debian's `docker.io` (when no `dockerd` is installed) and starts `dockerd` in the
background, logging to the cache. Then it probes: a privileged container from a
tiny local image. Only when the probe fails the way hosts without
CAP_SYS_RESOURCE in their bounding set fail ("unable to apply caps"), it
registers `node/runc-nosysres` as the engine's default runtime (live, by
SIGHUP) and probes again. A configuration that works is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from tests.cluster.shell import (
    REPO,
    CommandFailed,
    apt_install,
    cache_root,
    run,
    say,
    step,
    which,
)

PROBE_IMAGE = "shoal-probe/busybox:1"
DAEMON_JSON = Path("/etc/docker/daemon.json")
RUNC_WRAPPER = Path("/usr/local/bin/shoal-runc-nosysres")
CAPS_FAILURE = "unable to apply caps"
# The legacy builder: it needs nothing but local images (BuildKit may fetch its frontend).
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}


def docker(*args: str | Path, check: bool = True, input: str | None = None,
           timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`docker ARGS` (legacy builder for `build`); CommandFailed when it fails."""
    return run(["docker", *args], env=BUILD_ENV, check=check, input=input, timeout=timeout)


def engine_answers() -> bool:
    return which("docker") is not None and docker("info", check=False, timeout=30).returncode == 0


def ensure_engine() -> None:
    """A Docker engine is running and runs privileged containers; see the module docstring."""
    if engine_answers():
        say("docker engine: using the running one")
    else:
        if which("dockerd") is None:
            apt_install("docker.io")
        _start_dockerd()
    if not _probe_privileged():
        raise RuntimeError("the docker engine cannot run privileged containers; see "
                           f"{cache_root() / 'engine' / 'dockerd.log'}")


def _start_dockerd() -> None:
    log = cache_root() / "engine" / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with step(f"starting dockerd (log: {log})"), log.open("ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while not engine_answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within 90 s; see {log}")
            time.sleep(0.5)


def _probe_image() -> None:
    """A one-file image (static busybox), imported locally: nothing to pull."""
    if docker("image", "inspect", PROBE_IMAGE, check=False).returncode == 0:
        return
    tar = cache_root() / "engine" / "probe.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar, "w") as out:
        out.add(busybox(), arcname="bin/busybox")
    docker("import", "--change", 'ENTRYPOINT ["/bin/busybox"]', tar, PROBE_IMAGE)


def busybox() -> Path:
    """A static busybox (Debian's busybox-static), for tiny local images."""
    path = Path("/bin/busybox")
    if not path.exists() or "statically linked" not in run(["file", "-L", path],
                                                           check=False).stdout:
        apt_install("busybox-static", "file")
    return path


def _probe_privileged() -> bool:
    """True once a privileged container runs; applies the runtime fix if that is what fails."""
    _probe_image()
    probe = docker("run", "--rm", "--privileged", PROBE_IMAGE, "true", check=False)
    if probe.returncode == 0:
        return True
    if CAPS_FAILURE not in probe.stderr:
        raise CommandFailed(probe.returncode, probe.args, probe.stdout, probe.stderr)
    with step("privileged containers fail here (no CAP_SYS_RESOURCE in the bounding set): "
              f"registering {RUNC_WRAPPER.name} as the engine's default runtime"):
        RUNC_WRAPPER.write_bytes((REPO / "tests/cluster/node/runc-nosysres").read_bytes())
        RUNC_WRAPPER.chmod(0o755)
        config = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.exists() else {}
        config.setdefault("runtimes", {})["nosysres"] = {"path": str(RUNC_WRAPPER)}
        config["default-runtime"] = "nosysres"
        DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
        DAEMON_JSON.write_text(json.dumps(config, indent=2) + "\n")
        # `runtimes` and `default-runtime` are reloaded live on SIGHUP.
        os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGHUP)
        time.sleep(1)
    return docker("run", "--rm", "--privileged", PROBE_IMAGE, "true", check=False
                  ).returncode == 0
