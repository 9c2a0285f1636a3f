"""``python -m tests.cluster build`` builds the binaries; ``up`` runs a cluster until Ctrl-C;
``demo`` runs Shoal's main job on it (see tests/cluster/demo.py)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tests.cluster.build import main as build_main
from tests.cluster.local import LocalCluster


def up() -> int:
    """Start a LocalCluster, print how to reach it, and keep it until Ctrl-C or a crash."""
    with LocalCluster() as cluster:
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"kubectl: {cluster.kubectl}")
        print(f"helm:    {cluster.helm}")
        print("Ctrl-C tears the cluster down.", flush=True)
        try:
            while True:
                for component in cluster.components:
                    component.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("\ntearing down", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch the ``build`` and ``up`` subcommands."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    parser.add_argument("command", choices=["build", "up", "demo"])
    parser.add_argument("--once", action="store_true", help="demo: tear down after the tour")
    args = parser.parse_args(argv)
    # A process started in the background by a non-interactive shell inherits
    # SIGINT as ignored; Ctrl-C (or `kill -INT`) must still tear down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "demo":
        from tests.cluster.demo import main as demo_main

        return demo_main(["--once"] if args.once else [])
    return build_main() if args.command == "build" else up()


if __name__ == "__main__":
    sys.exit(main())
