"""LocalCluster: the control plane plus the node agent that plays the kubelet."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.controlplane import ControlPlane

NODE_NAME = "shoal-local"
NODE_AGENT_MODULE = "tests.cluster.node_agent"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(eq=False)
class LocalCluster(ControlPlane):
    """A :class:`ControlPlane` with one Node, ``shoal-local``, run by the node agent.

    After :meth:`start` returns, the Node is also registered and Ready, so Pods
    get scheduled and run.
    """

    node_name: str = NODE_NAME

    def _start_extras(self) -> list[tuple[str, Callable[[], bool]]]:
        """Start the node agent alongside the controllers; ready once its Node is Ready."""
        self.spawn(
            "node-agent",
            [
                sys.executable,
                "-m",
                NODE_AGENT_MODULE,
                "--kubeconfig",
                str(self.kubeconfig),
                "--node-name",
                self.node_name,
            ],
            cwd=REPO_ROOT,
        )
        return [(f"Node {self.node_name} Ready", self._node_ready)]

    def _node_ready(self) -> bool:
        node = self.api_get(f"/api/v1/nodes/{self.node_name}")
        if not isinstance(node, dict):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
