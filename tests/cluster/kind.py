"""Step 6: kind clusters, with the fixes this host needs applied only when detected.

- cgroup v1 host: kubelet's ``failCgroupV1: false`` (kubelet >= 1.35 refuses v1 by
  default) and a kubelet drop-in that creates its cgroups in every v1 hierarchy
  (node/12-cgroupv1.conf);
- no CAP_SYS_RESOURCE in the host's bounding set: the node's containerd clamps
  ``oom_score_adj`` instead of failing every sandbox (``restrict_oom_score_adj``).

Clusters with more than one node also run workloads on the control plane, so that
draining one node leaves another for its pods. A host folder may be shared with
every node (and so with pods, through a hostPath volume) at :data:`SHARED_PATH`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.cluster import tools
from tests.cluster.engine import docker
from tests.cluster.shell import cache_root, run, say, step

SHARED_PATH = "/shoal-shared"
NODE_FILES = Path(__file__).resolve().parent / "node"
CAP_SYS_RESOURCE = 24


def host_cgroup_v1() -> bool:
    return not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def host_lacks_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    bounding = int(status.split("CapBnd:")[1].split()[0], 16)
    return not bounding & (1 << CAP_SYS_RESOURCE)


def host_fixes() -> list[str]:
    """Names of the fixes this host needs (printed, and applied by `cluster_config`)."""
    return (["cgroup v1"] if host_cgroup_v1() else []) + (
        ["oom_score_adj (no CAP_SYS_RESOURCE)"] if host_lacks_sys_resource() else [])


def cluster_config(nodes: int, shared: Path | None) -> dict[str, object]:
    """kind's Cluster config: `nodes` nodes (the first the control plane) and host fixes."""
    mounts = []
    if shared is not None:
        mounts.append({"hostPath": str(shared), "containerPath": SHARED_PATH})
    if host_cgroup_v1():
        mounts.append({"hostPath": str(NODE_FILES / "12-cgroupv1.conf"), "readOnly": True,
                       "containerPath": "/etc/systemd/system/kubelet.service.d/12-cgroupv1.conf"})
    config: dict[str, object] = {
        "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [{"role": "control-plane" if i == 0 else "worker", "extraMounts": mounts}
                  for i in range(nodes)]}
    if host_cgroup_v1():
        config["kubeadmConfigPatches"] = ["kind: KubeletConfiguration\nfailCgroupV1: false\n"]
    if host_lacks_sys_resource():
        config["containerdConfigPatches"] = [
            '[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n']
    return config


@dataclass(frozen=True)
class KindCluster:
    """One kind cluster by name; its kubeconfig is kept in the cache."""

    name: str

    @property
    def kubeconfig(self) -> Path:
        return cache_root() / "clusters" / self.name / "kubeconfig"

    def kind(self, *args: str | Path, timeout: float = 900) -> str:
        return run([tools.KIND.ensure(), *args], timeout=timeout).stdout

    def exists(self) -> bool:
        return self.name in self.kind("get", "clusters").split()

    def create(self, image: str, nodes: int = 1, shared: Path | None = None) -> None:
        """Create the cluster (replacing one of the same name) and wait for Ready nodes."""
        if self.exists():
            self.delete()
        config = self.kubeconfig.with_name("kind-config.yaml")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cluster_config(nodes, shared)))
        fixes = ", ".join(host_fixes()) or "none needed"
        with step(f"kind create cluster {self.name} ({nodes} node(s); host fixes: {fixes})"):
            self.kind("create", "cluster", "--name", self.name, "--image", image,
                      "--config", config, "--kubeconfig", self.kubeconfig, "--wait", "0s")
            self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s")
            if nodes > 1:
                self.kubectl("taint", "nodes", "-l", "node-role.kubernetes.io/control-plane",
                             "node-role.kubernetes.io/control-plane:NoSchedule-")
            self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                         "--timeout=300s")

    def delete(self) -> None:
        with step(f"kind delete cluster {self.name}"):
            self.kind("delete", "cluster", "--name", self.name, "--kubeconfig", self.kubeconfig)

    def load(self, *images: str) -> None:
        """Put local images on every node (`kind load docker-image`)."""
        with step(f"kind load docker-image {' '.join(images)}"):
            self.kind("load", "docker-image", "--name", self.name, *images)

    def nodes(self) -> list[str]:
        return self.kind("get", "nodes", "--name", self.name).split()

    def kubectl(self, *args: str) -> str:
        return run([kubectl_for(self.node_image()), "--kubeconfig", self.kubeconfig, *args],
                   timeout=600).stdout

    def node_image(self) -> str:
        return docker("inspect", "-f", "{{.Config.Image}}", f"{self.name}-control-plane"
                      ).stdout.strip()


def network_gateway(network: str = "kind") -> str:
    """The host's IPv4 address on a docker network (how pods reach host services)."""
    info = json.loads(docker("network", "inspect", network).stdout)[0]
    for config in info["IPAM"]["Config"]:
        gateway = config.get("Gateway", "")
        if gateway and ":" not in gateway:
            return str(gateway)
    raise RuntimeError(f"docker network {network} has no IPv4 gateway")


def kubectl_for(node_image: str) -> Path:
    """The kubectl shipped in a node image: the same version as the cluster's API server."""
    image_id = docker("image", "inspect", "-f", "{{.Id}}", node_image).stdout.strip()
    path = cache_root() / f"kubectl-{image_id.removeprefix('sha256:')[:12]}" / "kubectl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        container = docker("create", node_image).stdout.strip()
        try:
            scratch = path.with_name(".kubectl.partial")
            docker("cp", f"{container}:/usr/bin/kubectl", scratch)
            scratch.rename(path)
        finally:
            docker("rm", container)
        say(f"kubectl: the one in {node_image}")
    return path

