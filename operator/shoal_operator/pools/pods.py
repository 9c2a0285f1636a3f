"""kopf handlers of a pool's Pods: their OOM kills (oom_watch.py).

The watch is of the pods the pool Deployments' template labels (POD_SELECTOR, asked
of the API server in main.py's settings), so the operator holds no other pod.
"""

from __future__ import annotations

from typing import Any, cast

import kopf

from shoal_operator import context
from shoal_operator.pools.deployment import MANAGED_BY, POOL_LABEL
from shoal_operator.pools.oom_watch import POD_RESOURCE, Obj


@kopf.on.event(*POD_RESOURCE, labels={**MANAGED_BY, POOL_LABEL: kopf.PRESENT})
async def watch_pool_pod(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Act on the pod's OOM kills; forget the pod once it is deleted."""
    pod = cast(Obj, event["object"])
    watch = context.of(memo).oom
    if event.get("type") == "DELETED":
        watch.forget(str(pod["metadata"]["uid"]))
    else:
        await watch.observe(pod)
