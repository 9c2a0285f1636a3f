"""A Debian bookworm root filesystem from debootstrap, the seed of every local base image.

Built once (``debootstrap --variant=minbase``) into the cache and copied, never
changed, by the images made from it: the offline kind node's base and the
stand-in for the upstream Python image. Its apt sources name bookworm, its
updates and its security archive on ``$SHOAL_DEBIAN_MIRROR`` (default
deb.debian.org), so packages installed into a copy are current.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.shell import apt_install, building, cache_root, run, step, which

SUITE = "bookworm"
MIRROR = os.environ.get("SHOAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def bookworm() -> Path:
    """The pristine rootfs folder (build it if the cache lacks it). Never modify it."""
    root = cache_root() / f"rootfs-debian-{SUITE}-minbase"
    if root.exists():
        return root
    if which("debootstrap") is None:
        apt_install("debootstrap")
    with step(f"debootstrap {SUITE} (minbase) from {MIRROR}"), building(root) as scratch:
        run(["debootstrap", "--variant=minbase", SUITE, scratch, MIRROR], timeout=1800)
        security = MIRROR.rsplit("/", 1)[0] + "/debian-security"
        (scratch / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {SUITE} main\n"
            f"deb {MIRROR} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n")
    return root


def copy(dest: Path) -> Path:
    """A fresh copy of the rootfs at `dest` (which must not exist)."""
    run(["cp", "-a", bookworm(), dest])
    return dest


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc mounted in `root` for the block (package scripts and bash's <(...) need it)."""
    run(["mount", "-t", "proc", "proc", root / "proc"])
    try:
        yield
    finally:
        run(["umount", root / "proc"], check=False)


def chroot_install(root: Path, *packages: str) -> None:
    """`apt-get install` in a chroot, trusting the host's CA bundle for downloads meanwhile.

    Existing configuration files are kept (``--force-confold``): images lay their own
    down before installing the packages that would ship defaults.
    """
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(Path("/etc/resolv.conf").read_text())
    confold = root / "etc/apt/apt.conf.d/99shoal-confold"
    confold.write_text('Dpkg::Options { "--force-confold"; };\n')
    env = {"DEBIAN_FRONTEND": "noninteractive",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        with mounted_proc(root):
            run(["chroot", root, "apt-get", "update", "-qq"], env=env, timeout=600)
            run(["chroot", root, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 *packages], env=env, timeout=1800)
            run(["chroot", root, "apt-get", "clean"], env=env)
    finally:
        confold.unlink(missing_ok=True)
        resolv.write_text("")
    run(["rm", "-rf", root / "var/lib/apt/lists"])
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def import_image(root: Path, tag: str, *changes: str) -> None:
    """`docker import` the folder `root` as image `tag`, with Dockerfile `changes`.

    `docker import` cannot set every instruction (STOPSIGNAL, for one): the changes
    are applied by a build FROM the imported tree instead, which needs no context
    and nothing from a registry.
    """
    from tests.cluster.engine import docker

    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                           stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        run(["docker", "import", "-", f"{tag}-rootfs"], stdin=tar.stdout)
    except BaseException:
        tar.kill()
        raise
    finally:
        tar.stdout.close()
        tar.wait()
    if tar.returncode != 0:
        raise RuntimeError(f"tar of {root} exited {tar.returncode}")
    docker("build", "-t", tag, "-", input="\n".join([f"FROM {tag}-rootfs", *changes]) + "\n")
    docker("rmi", f"{tag}-rootfs")
