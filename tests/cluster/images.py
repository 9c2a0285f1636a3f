"""Steps 4 and 5: the Python base image, Shoal's image and the test app image.

- The Python base is the Dockerfile's own default (`ARG PYTHON_IMAGE`) when the
  engine has it or can pull it; else a local stand-in with the same Debian
  release and Python minor: the debootstrap rootfs plus Debian's python3,
  python3-venv and python3-pip, trusting the host's CA bundle (package
  downloads may go through the host's TLS proxy).
- Shoal's image is `docker build` of the repository's Dockerfile, unchanged,
  with the base as a build argument; the test app image is built FROM it and
  adds tests/apps (the recorder and other test handlers) under /app/tests/apps.

Images that take minutes to make are also kept as `docker save` archives in the
cache, so an engine that lost them (a new CI machine with the cache restored)
loads them in seconds instead of building them again.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.cluster import rootfs
from tests.cluster.engine import docker
from tests.cluster.shell import REPO, building, cache_root, run, say, step

SHOAL_IMAGE = "shoal:dev"
APP_IMAGE = "shoal-test-app:dev"
BUILT_BY = "dev.shoal.harness=images"  # the label of the images the harness builds
LOCAL_PYTHON = "shoal-local/python:3.11-bookworm"
PULL_TIMEOUT = 300


def upstream_python() -> str:
    """The Dockerfile's default base image (its `ARG PYTHON_IMAGE=`): one source of truth."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    if not found:
        raise RuntimeError("Dockerfile: no `ARG PYTHON_IMAGE=<default>` line")
    return found.group(1)


def has_image(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def pulled(tag: str) -> bool:
    """True if the engine has `tag` or could pull it now (with a time limit)."""
    if has_image(tag):
        return True
    with step(f"docker pull {tag}"):
        try:
            result = docker("pull", tag, check=False, timeout=PULL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return False
        ok = result.returncode == 0
    if not ok:
        say(f"cannot pull {tag}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return ok


def cached_image(tag: str, build: Callable[[], None]) -> str:
    """`tag` in the engine: already there, loaded from the cache's archive, or built
    by `build()` and then archived (one file per tag, named after it)."""
    archive = cache_root() / "images" / (re.sub(r"[^\w.-]+", "_", tag) + ".tar")
    if has_image(tag):
        return tag
    if archive.exists():
        with step(f"docker load {archive.name}"):
            docker("load", "-i", archive)
        if has_image(tag):
            return tag
    build()
    with step(f"docker save {tag} to the cache"), building(archive) as scratch:
        docker("save", "-o", scratch, tag)
    return tag


def upstream_or_local(what: str, upstream: str, local: str, build: Callable[[], None],
                      how: str) -> str:
    """`upstream` if the engine has it or can pull it, else `local` (see `cached_image`);
    says which path it took."""
    if pulled(upstream):
        say(f"{what}: upstream {upstream}")
        return upstream
    say(f"{what}: offline {local} ({how})")
    return cached_image(local, build)


def python_base() -> str:
    """The base image tag to build Shoal's image on."""
    return upstream_or_local("python base", upstream_python(), LOCAL_PYTHON,
                             _build_local_python, "debootstrap + Debian's python3")


def _build_local_python() -> None:
    with step(f"building {LOCAL_PYTHON}"), building(cache_root() / "python-rootfs") as root:
        rootfs.copy(root)
        rootfs.chroot_install(root, "python3", "python3-venv", "python3-pip",
                              "python-is-python3", "ca-certificates")
        if rootfs.HOST_CA_BUNDLE.exists():
            target = root / "etc/ssl/certs/ca-certificates.crt"
            target.unlink(missing_ok=True)
            target.write_bytes(rootfs.HOST_CA_BUNDLE.read_bytes())
        rootfs.import_image(root, LOCAL_PYTHON, "ENV LANG=C.UTF-8", 'CMD ["python3"]')
    run(["rm", "-rf", cache_root() / "python-rootfs"])


def build_shoal(base: str) -> str:
    """`docker build` of the repository's Dockerfile on `base`; returns the image tag."""
    with step(f"docker build {SHOAL_IMAGE} (FROM {base})"):
        _build("--network", "host", "--build-arg", f"PYTHON_IMAGE={base}",
               "-t", SHOAL_IMAGE, REPO, timeout=1800)
    return SHOAL_IMAGE


def build_app(shoal: str = SHOAL_IMAGE) -> str:
    """The test app image: Shoal's image plus tests/apps; returns its tag."""
    with step(f"docker build {APP_IMAGE} (FROM {shoal})"):
        _build("--build-arg", f"SHOAL_IMAGE={shoal}", "-t", APP_IMAGE,
               "-f", REPO / "tests/apps/Dockerfile", REPO / "tests/apps", timeout=600)
    return APP_IMAGE


def _build(*args: str | Path, timeout: float) -> None:
    """`docker build` under the harness's label; then the builds it replaced, untagged
    now, are removed (only those under this label: no image of anyone else's)."""
    docker("build", "--label", BUILT_BY, *args, timeout=timeout)
    docker("image", "prune", "--force", "--filter", f"label={BUILT_BY}")


def image_size(tag: str) -> int:
    """Bytes of `tag` as the engine reports them."""
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())


def image_ids(*tags: str) -> dict[str, str]:
    return {t: docker("image", "inspect", "-f", "{{.Id}}", t).stdout.strip() for t in tags}


