"""The whole set-up, in order, each step cached and idempotent.

`prepare()` is what the test session, the demo and the benchmarks call: it
brings up (or finds) a kind cluster with Shoal's images on its nodes and says,
step by step, what it did and which path (upstream or offline) it took:

1. a Docker engine (engine.py);
2. kind and helm, pinned (tools.py);
3. the node image: upstream, or built offline (nodeimage.py);
4. the Python base image: upstream, or a local stand-in (images.py);
5. Shoal's image from the Dockerfile and the test app image FROM it (images.py);
6. the kind cluster, with those images loaded on its nodes (kind.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.cluster import images, tools
from tests.cluster.access import EXTERNAL_KUBECONFIG, KubeAccess
from tests.cluster.engine import ensure_engine
from tests.cluster.kind import KindCluster, kubectl_for
from tests.cluster.nodeimage import node_image
from tests.cluster.shell import cache_lock, cache_root, say


def build_images() -> list[str]:
    """Steps 4 and 5 (on a running engine): Shoal's image and the test app image."""
    with cache_lock():
        ensure_engine()
        return _images()


def build() -> tuple[str, list[str], Path]:
    """Steps 1 to 5: the node image, Shoal's and the test app's images, and helm."""
    with cache_lock():
        say("[1/6] docker engine")
        ensure_engine()
        say(f"[2/6] kind {tools.KIND.version} and helm {tools.HELM.version}")
        tools.KIND.ensure()
        helm = tools.helm()
        say("[3/6] node image")
        return node_image(), _images(), helm


def _images() -> list[str]:
    say("[4/6] python base image")
    base = images.python_base()
    say("[5/6] Shoal's image and the test app image")
    return [images.build_shoal(base), images.build_app()]


def prepare(name: str, nodes: int, helm_home: Path) -> tuple[KubeAccess, bool]:
    """Kind cluster `name` with `nodes` nodes and Shoal's images loaded; True if created now.

    An existing cluster of that name is reused (the images are loaded again); the
    images are rebuilt from the working tree every time (docker's layer cache makes
    an unchanged tree cost seconds).
    """
    with cache_lock():
        image, built, helm = build()
        say(f"[6/6] kind cluster {name}")
        cluster = KindCluster(name)
        shared = cache_root() / "clusters" / name / "shared"
        created = not cluster.exists()
        if created:
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o1777)  # pods run as uid 10001
            cluster.create(image, nodes, shared)
        else:
            say(f"kind cluster {name}: exists, reused ({len(cluster.nodes())} node(s))")
        cluster.load(*built)
    access = KubeAccess(cluster.kubeconfig, kubectl_for(cluster.node_image()), helm,
                        helm_home, kind=cluster, shared=shared if shared.exists() else None)
    return access, created


@contextlib.contextmanager
def open_cluster(helm_home: Path, name: str = "shoal-test", nodes: int = 2
                 ) -> Iterator[KubeAccess]:
    """The cluster of ``$SHOAL_TEST_KUBECONFIG``, or kind cluster `name` (see `prepare`).

    A kind cluster this call created is deleted on exit unless ``$SHOAL_KEEP_CLUSTER``
    is set; one that already existed is reused and kept.
    """
    external = os.environ.get(EXTERNAL_KUBECONFIG)
    if external:
        yield KubeAccess(Path(external), tools.k8s_binary("kubectl"), tools.helm(), helm_home)
        return
    access, created = prepare(name, nodes, helm_home)
    try:
        yield access
    finally:
        if created and access.kind is not None and not os.environ.get("SHOAL_KEEP_CLUSTER"):
            access.kind.delete()
