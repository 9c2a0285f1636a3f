"""Step 2: the pinned Go-built tools, each cached under ``$SHOAL_CACHE_DIR/<name>-<version>/bin``.

- `kind`, `crictl`, `local-path-provisioner`: ``go install``-style builds of a pinned
  upstream version; `helm` and `promtool` built through a go.mod of our own that pins
  each as a Go tool, so its go.sum records every dependency.
- The Kubernetes components of :data:`K8S_VERSION` (kube-apiserver,
  kube-controller-manager, kube-scheduler, kubectl, kubelet, kubeadm, kube-proxy), etcd
  and CoreDNS: tiny Go mains under ``tests/cluster/cmd/<name>``, each its own module. The
  Kubernetes ones require ``k8s.io/kubernetes`` at the release and replace its staging
  modules by their published ``v0.Y.Z`` versions, derived from the release's own go.mod
  (never written by hand); etcd and CoreDNS are pinned at the versions the release's
  kubeadm deploys (read from its constants). They are only needed to build a kind node
  image offline.

Every build lands atomically; a binary found in the cache is not rebuilt.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.shell import building, cache_root, run, step

K8S_VERSION = "v1.35.4"
K8S_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                  "kubelet", "kubeadm", "kube-proxy")
CMD_DIR = Path(__file__).resolve().parent / "cmd"

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/src/\1\s*$", re.MULTILINE)
_GO_DIRECTIVE = re.compile(r"^(go|godebug)\s+(.+)$", re.MULTILINE)
_GO_ENV = {"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}


def go(*args: str, cwd: Path = CMD_DIR, mod_edit: bool = False, gobin: Path | None = None
       ) -> str:
    """Run ``go``; ``mod_edit`` lets it update go.mod/go.sum."""
    env = dict(_GO_ENV, GOFLAGS="-mod=mod") if mod_edit else dict(_GO_ENV)
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return run(["go", *args], cwd=cwd, env=env).stdout


@dataclass(frozen=True)
class GoInstall:
    """A command built by ``go install PACKAGE@VERSION`` into the cache."""

    name: str
    package: str
    version: str
    ldflags: str = "-s -w"

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}" / "bin" / self.name

    def ensure(self) -> Path:
        """The binary, built now if the cache lacks it."""
        if not self.path.exists():
            with step(f"go install {self.package}@{self.version}"), \
                    building(self.path.parent) as scratch:
                go("install", "-trimpath", "-ldflags", self.ldflags,
                   f"{self.package}@{self.version}", gobin=scratch)
        return self.path


KIND = GoInstall("kind", "sigs.k8s.io/kind", "v0.33.0")
CRICTL = GoInstall("crictl", "sigs.k8s.io/cri-tools/cmd/crictl", "v1.34.0",
                   "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v1.34.0")
# kind v0.33.0 packages v0.0.34, which the module proxy reachable here does not serve.
LOCAL_PATH_PROVISIONER = GoInstall("local-path-provisioner",
                                   "github.com/rancher/local-path-provisioner", "v0.0.33")


def module_dir(module: str, version: str) -> Path:
    """Where ``go mod download`` put ``module@version`` (read-only files)."""
    return Path(_download(module, version)["Dir"])


@functools.cache
def _download(module: str, version: str) -> dict[str, str]:
    info: dict[str, str] = json.loads(go("mod", "download", "-json", f"{module}@{version}"))
    return info


# -- Kubernetes components ---------------------------------------------------------------

def k8s_bin_dir(version: str = K8S_VERSION) -> Path:
    return cache_root() / f"k8s-{version}" / "bin"


def k8s_binary(name: str, version: str = K8S_VERSION) -> Path:
    """One Kubernetes component of `version`, built now if the cache lacks it."""
    path = k8s_bin_dir(version) / name
    if not path.exists():
        with step(f"go build {name} {version}"):
            ensure_k8s_module(name, version)
            _build(CMD_DIR / name, ".", path, _k8s_ldflags(version))
    return path


def ensure_k8s_module(name: str, version: str = K8S_VERSION) -> bool:
    """Make ``cmd/<name>/go.mod`` require ``k8s.io/kubernetes@version``; True if rewritten.

    Requiring the release (not just the packages imported) makes Go's version
    selection honour every pin of the release, e.g. the etcd server version.
    """
    mod_dir = CMD_DIR / name
    gomod, gosum = mod_dir / "go.mod", mod_dir / "go.sum"
    if gosum.exists() and re.search(rf"^\s*k8s\.io/kubernetes {re.escape(version)}\b",
                                    gomod.read_text(), re.M):
        return False
    release = Path(_download("k8s.io/kubernetes", version)["GoMod"]).read_text()
    published = "v0." + version.removeprefix("v1.")
    replaces = sorted(_STAGING_REPLACE.findall(release))
    if not replaces:
        raise RuntimeError(f"no staging replace lines in k8s.io/kubernetes {version}'s go.mod")
    gomod.write_text("\n".join([
        "// Generated by tests/cluster/tools.py; rerun it instead of editing.",
        f"module shoal/tests/cluster/cmd/{name}", "",
        *(f"{m.group(1)} {m.group(2).strip()}" for m in _GO_DIRECTIVE.finditer(release)), "",
        f"require k8s.io/kubernetes {version}", "",
        f"// Staging modules of k8s.io/kubernetes {version}, as published.",
        "replace (", *(f"\t{path} => {path} {published}" for path in replaces), ")", ""]))
    gosum.unlink(missing_ok=True)
    # `go get .` resolves main.go's imports from the build list (keeping the
    # k8s.io/kubernetes requirement); `go mod tidy` would drop it for etcd.
    go("get", ".", cwd=mod_dir, mod_edit=True)
    return True


def _k8s_ldflags(version: str) -> str:
    info = json.loads(Path(_download("k8s.io/kubernetes", version)["Info"]).read_text())
    _, minor, _ = version.removeprefix("v").split(".", 2)
    values = {"gitVersion": version, "gitMajor": "1", "gitMinor": minor,
              # The module proxy does not record the release's commit: empty, not "$Format:%H$".
              "gitCommit": "", "gitTreeState": "clean", "buildDate": info["Time"]}
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X '{pkg}.{key}={val}'" for key, val in values.items()]
    return " ".join(flags)


def _build(mod_dir: Path, target: str, out: Path, ldflags: str) -> None:
    """``go build`` `target` into `out` atomically (no half-written binary)."""
    with building(out) as scratch:
        go("build", "-trimpath", "-ldflags", ldflags, "-o", str(scratch), target, cwd=mod_dir)


# -- etcd, CoreDNS and helm: modules of our own that pin upstream --------------------------

def kubeadm_constant(name: str, version: str = K8S_VERSION) -> str:
    """A string constant of the release's kubeadm (e.g. DefaultEtcdVersion, PauseVersion)."""
    source = (module_dir("k8s.io/kubernetes", version)
              / "cmd/kubeadm/app/constants/constants.go").read_text()
    found = re.search(rf'^\s*{name}\s*=\s*"([^"]+)"', source, re.M)
    if not found:
        raise RuntimeError(f"kubeadm {version} has no constant {name}")
    return found.group(1)


def etcd() -> tuple[Path, str]:
    """etcd at the version kubeadm deploys, and that image tag (e.g. ``3.6.6-0``)."""
    tag = kubeadm_constant("DefaultEtcdVersion")
    return pinned_build("etcd", "go.etcd.io/etcd/server/v3", "v" + tag.split("-")[0]), tag


def coredns() -> tuple[Path, str]:
    """CoreDNS, with the plugins kubeadm's Corefile needs, at the version kubeadm deploys."""
    version = kubeadm_constant("CoreDNSVersion")
    return pinned_build("coredns", "github.com/coredns/coredns", version), version


def pinned_build(name: str, module: str, version: str) -> Path:
    """Build ``cmd/<name>`` with its go.mod requiring `module` at `version`."""
    path = cache_root() / f"{name}-{version}" / "bin" / name
    if not path.exists():
        mod_dir = CMD_DIR / name
        with step(f"go build {name} {version}"):
            if not re.search(rf"^\s*{re.escape(module)} {re.escape(version)}\b",
                             (mod_dir / "go.mod").read_text(), re.M):
                (mod_dir / "go.mod").write_text(
                    f"// Generated by tests/cluster/tools.py; rerun it instead of editing.\n"
                    f"module shoal/tests/cluster/cmd/{name}\n\ngo 1.26.0\n")
                (mod_dir / "go.sum").unlink(missing_ok=True)
                go("get", f"{module}@{version}", cwd=mod_dir, mod_edit=True)
                go("mod", "tidy", cwd=mod_dir, mod_edit=True)
            _build(mod_dir, ".", path, "-s -w")
    return path


@dataclass(frozen=True)
class GoTool:
    """A main package built from ``cmd/<name>``, whose go.mod pins it with a ``tool``
    directive (for mains that cannot be wrapped by a main of our own)."""

    name: str
    package: str
    version: str  # of the module that holds `package`
    tags: str = ""

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}" / "bin" / self.name

    def ensure(self) -> Path:
        """The binary, built now if the cache lacks it."""
        if self.path.exists():
            return self.path
        mod_dir = CMD_DIR / self.name
        module = self.package.split("/cmd/")[0]
        with step(f"go build {self.name} {self.version}"):
            if not re.search(rf"^\s*{re.escape(module)} {re.escape(self.version)}\b",
                             (mod_dir / "go.mod").read_text(), re.M):
                (mod_dir / "go.mod").write_text(
                    "// Generated by tests/cluster/tools.py; rerun it instead of editing.\n"
                    f"module shoal/tests/cluster/cmd/{self.name}\n\ngo 1.26.0\n")
                (mod_dir / "go.sum").unlink(missing_ok=True)
                go("get", "-tool", f"{self.package}@{self.version}", cwd=mod_dir,
                   mod_edit=True)
            with building(self.path) as scratch:
                go("build", "-trimpath", "-tags", self.tags, "-ldflags", self.ldflags(mod_dir),
                   "-o", str(scratch), self.package, cwd=mod_dir)
        return self.path

    def ldflags(self, mod_dir: Path) -> str:
        if self.name != "helm":
            return "-s -w"
        # helm reports its version and the Kubernetes version it was built against.
        client_go = go("list", "-m", "-f", "{{.Version}}", "k8s.io/client-go", cwd=mod_dir)
        k8s_minor = client_go.strip().removeprefix("v").split(".")[1]
        flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={self.version}",
                 "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={k8s_minor}"]
        return " ".join(flags)


HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.22.0")
# Prometheus 3.x's Go module version; service discovery left out (checking rules needs none).
PROMTOOL = GoTool("promtool", "github.com/prometheus/prometheus/cmd/promtool", "v0.316.0",
                  tags="remove_all_sd")


def helm() -> Path:
    """helm, pinned (HELM)."""
    return HELM.ensure()
