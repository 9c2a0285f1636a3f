"""Set-up times of the test cluster, warm: every artefact cached, no cluster running.

For 1 and 2 nodes: the whole `tests.cluster.setup.prepare` (engine check, tools,
node image, image builds from an unchanged tree, `kind create cluster`, `kind load`),
and within it the cluster creation alone. The cold set-up (nothing cached) is what
`.ci/run` measures on a fresh machine; its step lines say where the time went.

    .venv/bin/python -m bench.cluster_setup
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.cluster.kind import KindCluster
from tests.cluster.nodeimage import node_image
from tests.cluster.setup import prepare

NAME = "shoal-bench-setup"


def main() -> int:
    image = node_image()
    for nodes in (1, 2):
        cluster = KindCluster(NAME)
        if cluster.exists():
            cluster.delete()
        started = time.monotonic()
        cluster.create(image, nodes)
        created = time.monotonic() - started
        cluster.delete()
        with tempfile.TemporaryDirectory() as helm_home:
            started = time.monotonic()
            kube, _ = prepare(NAME, nodes, Path(helm_home))
            whole = time.monotonic() - started
            assert kube.kind is not None
            kube.kind.delete()
        print(f"{nodes} node(s): kind create cluster (nodes Ready, CoreDNS rolled out) "
              f"{created:.0f} s; warm set-up with images built and loaded {whole:.0f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
