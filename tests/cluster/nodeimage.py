"""Step 3: the kind node image.

Upstream first: kind's own default node image for the pinned kind (read from
kind's source, digest included), when the engine has it or can pull it.
Offline otherwise, with kind's own ``kind build node-image`` fed only with
what was built here:

- a base image mirroring kind's images/base: the debootstrap rootfs, kind's base
  files (from its Go module), kind's package list plus Debian's containerd 1.6,
  runc and CNI plugins, crictl from its Go module, and a ``ctr`` shim for the
  two calls kind v0.33 makes that containerd 1.6's ctr lacks;
- the component images a node must hold, made with ``docker import``: the
  control plane and kube-proxy of :data:`tools.K8S_VERSION`, etcd, CoreDNS and
  pause at the versions its kubeadm asks for, local-path-provisioner, and a
  stand-in for kindnetd (its module is not obtainable: see node/kindnetd);
- a ``kubernetes-server-linux-amd64.tar.gz`` made locally, whose image tars also
  carry the extra images (kind fetches any image not found there).

The offline image is cached as a docker archive (see images.cached_image). The
fixes a host may need (cgroup v1, no CAP_SYS_RESOURCE) are not baked in: the
cluster config applies them when it detects the need (see kind.py), so both
paths get the same treatment.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

from tests.cluster import rootfs, tools
from tests.cluster.engine import busybox, docker
from tests.cluster.images import has_image, upstream_or_local
from tests.cluster.shell import building, cache_root, run, step

NODE_FILES = Path(__file__).resolve().parent / "node"
OFFLINE_TAG = f"shoal-local/kind-node:{tools.K8S_VERSION}-kind-{tools.KIND.version}"
BASE_TAG = f"shoal-local/kind-base:bookworm-kind-{tools.KIND.version}"
# kind's package list (images/base/Dockerfile), plus Debian's container runtime.
BASE_PACKAGES = (
    "systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux",
    "mount", "kmod", "libseccomp2", "pigz", "fuse-overlayfs", "nfs-common", "open-iscsi",
    "e2fsprogs", "bash", "ca-certificates", "curl", "jq", "procps",
    "containerd", "runc", "containernetworking-plugins", "socat")
PATH_ENV = "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def kind_source() -> Path:
    return tools.module_dir("sigs.k8s.io/kind", tools.KIND.version)


def upstream_node_image() -> str:
    """kind's default node image (``pkg/apis/config/defaults/image.go``), digest included."""
    source = (kind_source() / "pkg/apis/config/defaults/image.go").read_text()
    found = re.search(r'^const Image = "([^"]+)"', source, re.M)
    if not found:
        raise RuntimeError("kind's default node image not found in its source")
    return found.group(1)


def node_image() -> str:
    """The node image to create clusters with."""
    return upstream_or_local("node image", upstream_node_image(), OFFLINE_TAG, _build_offline,
                             f"Kubernetes {tools.K8S_VERSION}, built with kind build node-image")


def _build_offline() -> None:
    work = cache_root() / "node-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if not has_image(BASE_TAG):
            _build_base(work / "base")
        release = _release_tarball(work)
        with step(f"kind build node-image {OFFLINE_TAG}"):
            run([tools.KIND.ensure(), "build", "node-image", "--type", "file", release,
                 "--base-image", BASE_TAG, "--image", OFFLINE_TAG], timeout=1800)
    finally:
        run(["rm", "-rf", work])


# -- the base image -------------------------------------------------------------------

def _build_base(root: Path) -> None:
    files = kind_source() / "images/base/files"
    with step(f"building {BASE_TAG}"):
        rootfs.copy(root)
        # kind's files first: its containerd config must survive the package install.
        run(["cp", "-r", f"{files}/.", root])
        run(["chmod", "-R", "u+w,go+rX", root / "kind", root / "etc", root / "usr/local/bin"])
        for exe in (*(root / "usr/local/bin").iterdir(), *(root / "kind/bin").iterdir()):
            exe.chmod(0o755)
        rootfs.chroot_install(root, *BASE_PACKAGES)
        with rootfs.mounted_proc(root):
            shutil.copy(NODE_FILES / "base-setup.sh", root / "tmp/base-setup.sh")
            run(["chroot", root, "/bin/sh", "/tmp/base-setup.sh"])
            (root / "tmp/base-setup.sh").unlink()
        shutil.copy(NODE_FILES / "ctr", root / "usr/local/bin/ctr")
        shutil.copy(tools.CRICTL.ensure(), root / "usr/local/bin/crictl")
        rootfs.import_image(root, BASE_TAG, "ENV container=docker", "STOPSIGNAL SIGRTMIN+3",
                            'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]')


# -- component images -----------------------------------------------------------------

def _skeleton(root: Path) -> Path:
    """A minimal image tree: static busybox, /etc/passwd and group, /tmp."""
    for sub in ("bin", "etc", "tmp", "usr/local/bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy(busybox(), root / "bin/busybox")
    for applet in run([root / "bin/busybox", "--list"]).stdout.split():
        if not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnobody:x:65534:\n")
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    return root


def _image(work: Path, tags: list[str], files: dict[str, Path], *changes: str,
           base: Path | None = None) -> list[str]:
    """Import a skeleton (or a copy of `base`) plus `files` (image path -> host file)."""
    root = work / "images" / re.sub(r"\W+", "_", tags[0])
    if base is None:
        _skeleton(root)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", base, root])
    for inside, source in files.items():
        target = root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        target.chmod(0o755)
    docker("rmi", *tags, check=False)
    rootfs.import_image(root, tags[0], *changes)
    for tag in tags[1:]:
        docker("tag", tags[0], tag)
    run(["rm", "-rf", root])
    return tags


def _kind_constant(file: str, name: str) -> str:
    source = (kind_source() / "pkg/build/nodeimage" / file).read_text()
    found = re.search(rf'^const {name} = "([^"]+)"', source, re.M)
    if not found:
        raise RuntimeError(f"kind {tools.KIND.version}: no {name} in {file}")
    return found.group(1)


def _sandbox_image() -> str:
    """The pause image kind's containerd config names (it may differ from kubeadm's)."""
    config = (kind_source() / "images/base/files/etc/containerd/config.toml").read_text()
    found = re.search(r'^\s*sandbox_image\s*=\s*"([^"]+)"', config, re.M)
    if not found:
        raise RuntimeError("kind's containerd config names no sandbox_image")
    return found.group(1)


def _pause(work: Path) -> Path:
    """kubernetes' own pause.c, compiled statically."""
    out = work / "pause"
    source = tools.module_dir("k8s.io/kubernetes", tools.K8S_VERSION) / "build/pause/linux/pause.c"
    run(["gcc", "-Os", "-static", "-Wall", f"-DVERSION={tools.kubeadm_constant('PauseVersion')}",
         "-o", out, source])
    return out


def _component_images(work: Path) -> dict[str, list[str]]:
    """Every image the node must hold, grouped by the release tar that carries it."""
    k8s, registry = tools.K8S_VERSION, "registry.k8s.io"
    entry = lambda path: f'ENTRYPOINT ["{path}"]'  # noqa: E731
    control = {name: _image(work, [f"{registry}/{name}:{k8s}"],
                            {f"/usr/local/bin/{name}": tools.k8s_binary(name)},
                            entry(f"/usr/local/bin/{name}"), PATH_ENV)
               for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    etcd, etcd_tag = tools.etcd()
    coredns, coredns_tag = tools.coredns()
    pause = tools.kubeadm_constant("PauseVersion")
    with step("kube-proxy image (Debian's iptables, nftables, conntrack)"), \
            building(work / "proxy-rootfs") as proxy_root:
        rootfs.copy(proxy_root)
        rootfs.chroot_install(proxy_root, "iptables", "nftables", "conntrack")
        proxy = _image(work, [f"{registry}/kube-proxy:{k8s}"],
                       {"/usr/local/bin/kube-proxy": tools.k8s_binary("kube-proxy")},
                       entry("/usr/local/bin/kube-proxy"), PATH_ENV, base=proxy_root)
    kindnetd = _image(work, [_kind_constant("const_cni.go", "kindnetdImage")],
                      {"/usr/local/bin/kindnetd": NODE_FILES / "kindnetd",
                       "/usr/local/bin/kubectl": tools.k8s_binary("kubectl")},
                      entry("/usr/local/bin/kindnetd"), PATH_ENV)
    provisioner = _image(
        work, [_kind_constant("const_storage.go", "storageProvisionerImage")],
        {"/usr/local/bin/local-path-provisioner": tools.LOCAL_PATH_PROVISIONER.ensure()},
        entry("/usr/local/bin/local-path-provisioner"), PATH_ENV)
    helper = _image(work, [_kind_constant("const_storage.go", "storageHelperImage")], {},
                    'CMD ["/bin/sh"]')
    return {
        "kube-apiserver": [*control["kube-apiserver"],
                           *_image(work, [f"{registry}/etcd:{etcd_tag}"],
                                   {"/usr/local/bin/etcd": etcd},
                                   entry("/usr/local/bin/etcd"), PATH_ENV),
                           *_image(work, list(dict.fromkeys([f"{registry}/pause:{pause}",
                                                             _sandbox_image()])),
                                   {"/pause": _pause(work)}, entry("/pause"),
                                   "USER 65535:65535")],
        "kube-controller-manager": [*control["kube-controller-manager"],
                                    *_image(work, [f"{registry}/coredns/coredns:{coredns_tag}"],
                                            {"/coredns": coredns}, entry("/coredns"))],
        "kube-scheduler": control["kube-scheduler"],
        "kube-proxy": [*proxy, *kindnetd, *provisioner, *helper],
    }


# -- the release tarball --------------------------------------------------------------

def _release_tarball(work: Path) -> Path:
    """``kubernetes/server/bin/`` with kubeadm, kubelet, kubectl and the four image tars.

    kind reads the first manifest entry of each tar as the component and every tag
    of its ``repositories`` as already present, comparing fully qualified names
    (``docker.io/...``): so the extra images ride along under such names.
    """
    bin_dir = work / "release/kubernetes/server/bin"
    bin_dir.mkdir(parents=True)
    (work / "release/kubernetes/version").write_text(tools.K8S_VERSION + "\n")
    for name in ("kubeadm", "kubelet", "kubectl"):
        shutil.copy(tools.k8s_binary(name), bin_dir / name)
    with step("component images for the node"):
        for component, tags in _component_images(work).items():
            _save_qualified(tags, bin_dir / f"{component}.tar")
    tarball = work / "kubernetes-server-linux-amd64.tar.gz"
    run(["tar", "-C", work / "release", "-czf", tarball, "kubernetes"])
    return tarball


def qualified(ref: str) -> str:
    """A docker reference written out in full: ``docker.io/library/x:t`` for ``x:t``."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def _save_qualified(tags: list[str], out: Path) -> None:
    """`docker save` of `tags` into `out`, every name fully qualified, manifest written last."""
    saved = out.with_suffix(".raw.tar")
    docker("save", "-o", saved, *tags)
    with tarfile.open(saved) as src, tarfile.open(out, "w") as dst:
        manifest = None
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "manifest.json":
                entries = json.loads(data or b"[]")
                for e in entries:
                    e["RepoTags"] = [qualified(t) for t in e.get("RepoTags") or []]
                manifest = (member, json.dumps(entries).encode())
                continue
            if member.name == "repositories":
                repos = json.loads(data or b"{}")
                data = json.dumps({qualified(r + ":x").rsplit(":", 1)[0]: t
                                   for r, t in repos.items()}).encode()
            _add(dst, member, data)
        if manifest is None:
            raise RuntimeError(f"docker save of {tags} wrote no manifest.json")
        _add(dst, *manifest)
    saved.unlink()


def _add(dst: tarfile.TarFile, member: tarfile.TarInfo, data: bytes | None) -> None:
    if data is None:
        dst.addfile(member)
    else:
        member.size = len(data)
        dst.addfile(member, io.BytesIO(data))
