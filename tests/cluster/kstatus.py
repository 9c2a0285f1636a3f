"""The kstatus rules of sigs.k8s.io/cli-utils, as a function tests can call.

kstatus is how Flux, Config Sync and kapply read a resource's status:
Current, InProgress, Failed... `kstatus(objects)` runs tests/cluster/cmd/kstatus
(a tiny Go main) on the objects. The binary is built once, like the cluster's
own, into ``$SHOAL_CACHE_DIR/kstatus-<cli-utils version>/bin``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.cluster.tools import pinned_build

CLI_UTILS_VERSION = "v0.37.2"


@functools.cache
def binary() -> Path:
    """The kstatus binary (cmd/kstatus against sigs.k8s.io/cli-utils), built if missing."""
    return pinned_build("kstatus", "sigs.k8s.io/cli-utils", CLI_UTILS_VERSION)


def kstatus(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """{status, message} of each object, as kstatus computes it."""
    text = "\n".join(json.dumps(o) for o in objects)
    done = subprocess.run([str(binary())], input=text, capture_output=True, text=True,
                          check=True, timeout=60)
    return [json.loads(line) for line in done.stdout.splitlines()]
