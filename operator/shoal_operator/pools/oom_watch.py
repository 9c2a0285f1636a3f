"""The operator's watch of OOM kills: a killed worker's tasks are retried at once, with
the cause, and where `spec.onOOMKilled` sends them.

`OOMWatch.observe` runs for every watch event of a pool's Pod (pods.py). For each
run of a container that ended OOMKilled (oom.py: `oom_kills`) and was not acted on
yet, it:

1. ends the leases the run's worker held, as lease expiries whose reason is
   `OOMKilled on pod P (container C, memory limit L)` (`Backend.end_killed_leases`:
   fenced and idempotent; each counts against the task's lease-expiry budget, as
   the reaper's expiry would have after the claim TTL); a retry takes the tags
   `spec.onOOMKilled` names, or, where that cannot be honoured, is retried as
   without it and a Warning Event OOMRouteUnavailable on the pool says why;
2. adds the run's key to the pod's HANDLED annotation;
3. posts a Warning Event TaskOOMKilled on the pool naming the pod and what became
   of each task, and counts the kill and the tasks in the pool's metrics.

Guarantees: a run is acted on once per operator process (pod uid and run key are
remembered until the pod is deleted) and, across restarts of the operator, once
its key is in the annotation. An operator that stopped between 1 and 2 acts on
the run again: no lease ends twice (1 changes nothing the second time), but the
kill is counted and posted again, naming no task. A run the operator could not act
on (database unreachable, the pool's spec invalid, the pool gone) is tried again
at the pod's next watch event; until then its leases expire after the claim TTL as
they would without this watch, and a later success adds the cause to those tasks'
errors. The run's leases are told from the restarted container's by the kubelet's
timestamps against the database's clock: a node clock ahead of the database's by
more than the container's restart time could end a lease of the next run, which
its holder then loses as it would to an expiry (its result is refused, the task
retried).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from shoal.backend import TRANSIENT_ERRORS, Backend, Reroute
from shoal.errors import ShoalError
from shoal_operator import metrics
from shoal_operator.backends import Backends
from shoal_operator.kube import Kube, KubeError, pods_path
from shoal_operator.pools.deployment import MANAGED_BY, POOL_LABEL
from shoal_operator.pools.oom import (
    HANDLED,
    RouteUnavailable,
    handled_annotation,
    handled_keys,
    oom_kills,
    outcome,
    pool_route,
    route_words,
    summary,
    tags_route,
)
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.spec import PoolSpec
from shoal_operator.workflows.sync import PoolResolver

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
# What the watch of pool Pods asks the API server for: the labels of desired_deployment's
# pod template (every other pod of the cluster stays out of the operator's memory).
POD_RESOURCE = ("", "v1", "pods")
POD_SELECTOR = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), POOL_LABEL])
FAILURES = (ShoalError, KubeError, *TRANSIENT_ERRORS)


class OOMWatch:
    """Acts on the OOM kills of pool Pods' containers (see the module's docstring)."""

    def __init__(self, kube: Kube, pools: PoolRegistry, backends: Backends,
                 resolver: PoolResolver) -> None:
        self.kube = kube
        self.pools = pools
        self.backends = backends
        self.resolver = resolver
        self._handled: dict[str, set[str]] = {}  # pod uid -> keys of the runs acted on

    def forget(self, pod_uid: str) -> None:
        """The pod was deleted: its runs can show no more."""
        self._handled.pop(pod_uid, None)

    async def observe(self, pod: Obj) -> None:
        """Act on the pod's OOMKilled runs not acted on yet (each once: see above)."""
        meta = pod["metadata"]
        done = self._handled.setdefault(str(meta["uid"]), set())
        done |= handled_keys(meta.get("annotations"))
        kills = oom_kills(pod)
        pending = [kill for kill in kills if kill.key not in done]
        if not pending:
            return
        namespace, pool_name = str(meta["namespace"]), str(meta["labels"][POOL_LABEL])
        try:
            pool = await self.pools.read_pool(self.kube, namespace, pool_name)
            if pool is None:
                return  # the pool is gone: nothing says where its tasks live
            spec = self.pools.spec(pool)
            backend = await self.backends.backend_for_spec(namespace, spec)
            reroute = await self._reroute(pool, spec, backend, str(meta["name"]))
            ended = [(kill, await backend.end_killed_leases(kill.run(pool_name), reroute))
                     for kill in pending]
        except FAILURES as exc:
            log.warning("pod %s/%s was OOMKilled; its tasks wait for their leases to expire: "
                        "%s", namespace, meta["name"], exc)
            return
        done.update(kill.key for kill in pending)
        await self._record(namespace, str(meta["name"]), handled_annotation(kills, done))
        body = kopf.Body(cast(kopf.RawBody, pool))
        on = spec.on_oom_killed
        route = route_words(on) if on is not None and reroute is not None else None
        for kill, leases in ended:
            metrics.oom_kills.labels(namespace, pool_name).inc()
            for lease in leases:
                metrics.oom_tasks.labels(namespace, pool_name, outcome(lease)).inc()
            kopf.event(body, type="Warning", reason="TaskOOMKilled",
                       message=summary(kill, leases, route))

    async def _reroute(self, pool: Obj, spec: PoolSpec, backend: Backend,
                       pod: str) -> Reroute | None:
        """The reroute `spec.onOOMKilled` asks for; None without it, or, with a Warning
        Event OOMRouteUnavailable, when it cannot be honoured."""
        on = spec.on_oom_killed
        if on is None:
            return None
        try:
            if on.pool is None:
                return tags_route(on.tags or (), spec.tasks)
            target, target_backend = await self.resolver.resolve(
                str(pool["metadata"]["namespace"]), on.pool)
            return pool_route(on.pool, target.tasks, spec.tasks, target_backend is backend)
        except (RouteUnavailable, *FAILURES) as exc:
            kopf.event(kopf.Body(cast(kopf.RawBody, pool)), type="Warning",
                       reason="OOMRouteUnavailable",
                       message=f"the tasks of OOMKilled pod {pod} are retried as without "
                               f"onOOMKilled, which cannot send them to {route_words(on)}: "
                               f"{exc}")
            return None

    async def _record(self, namespace: str, pod: str, handled: str) -> None:
        """Write the HANDLED annotation (a pod deleted meanwhile needs none)."""
        try:
            await self.kube.merge_patch(pods_path(namespace, pod),
                                        {"metadata": {"annotations": {HANDLED: handled}}})
        except KubeError as exc:
            if not exc.not_found:
                log.warning("pod %s/%s: cannot record its OOM kills as handled (%s); an "
                            "operator restarted before the pod is gone posts them again",
                            namespace, pod, exc)
