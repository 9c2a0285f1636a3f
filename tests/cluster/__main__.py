"""``python -m tests.cluster COMMAND``: the harness from the command line.

- ``build``: steps 1-5 (engine, tools, node image, base and Shoal images), no cluster;
- ``up [--name N] [--nodes K]``: a kind cluster with Shoal's images loaded; prints
  how to reach it and leaves it running;
- ``down [--name N]``: deletes it;
- ``demo [--once]``: Shoal's main job (see demo.py).
"""

from __future__ import annotations

import argparse
import signal
import sys

from tests.cluster.kind import KindCluster
from tests.cluster.setup import build, prepare
from tests.cluster.shell import cache_root


def up(name: str, nodes: int) -> int:
    kube, created = prepare(name, nodes, cache_root() / "clusters" / name / "helm")
    print(f"kind cluster {name}: {'created' if created else 'already there'}")
    print(f"export KUBECONFIG={kube.kubeconfig}")
    print(f"kubectl: {kube.kubectl_bin}\nhelm:    {kube.helm_bin}")
    if kube.shared is not None:
        print(f"shared with pods (hostPath /shoal-shared): {kube.shared}")
    print(f"delete it with: python -m tests.cluster down --name {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "up", "down", "demo"])
    parser.add_argument("--name", default="shoal-dev", help="kind cluster name (up, down)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of a new cluster (up)")
    parser.add_argument("--once", action="store_true", help="demo: tear down after the tour")
    args = parser.parse_args(argv)
    # A process started in the background by a non-interactive shell inherits
    # SIGINT as ignored; Ctrl-C (or `kill -INT`) must still tear down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "build":
        build()
        return 0
    if args.command == "up":
        return up(args.name, args.nodes)
    if args.command == "down":
        KindCluster(args.name).delete()
        return 0
    from tests.cluster.demo import main as demo_main

    return demo_main(["--once"] if args.once else [])


if __name__ == "__main__":
    sys.exit(main())
