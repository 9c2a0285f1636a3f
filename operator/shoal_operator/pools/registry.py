"""What the operator knows of every WorkerPool and its Deployment, from kopf's watch events.

`PoolRegistry` is fed by the watch streams the operator already has (the
WorkerPool events and the pool Deployments' events), so knowing costs no API
request. Guarantees: `spec` parses a pool's spec once per generation (an
invalid spec raises the same InvalidPoolSpec every time, without parsing it
again); `pool` is the latest WorkerPool body seen; `replicas` is the replica
count of the pool's Deployment as of its newest generation seen, from the
watch or from the operator's own writes (an older event never overrides a
newer one), None when unknown. `read_pool` and `read_replicas` read through:
from the API server only what the watch has not shown yet (just after the
operator started), and record it. `startup` is the pool's `StartupClock`, told
of every readyReplicas its Deployment reports.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.kube import Kube, deployment_path, workerpool_path
from shoal_operator.pools.lead import StartupClock
from shoal_operator.pools.spec import PoolSpec

Obj = Mapping[str, Any]
Key = tuple[str, str]  # (namespace, pool name)


@dataclass(frozen=True, slots=True)
class _Parsed:
    uid: str
    generation: int
    spec: PoolSpec | InvalidPoolSpec


@dataclass(frozen=True, slots=True)
class _Scale:
    uid: str
    generation: int
    replicas: int


class PoolRegistry:
    """The latest WorkerPool bodies, their parsed specs and their Deployments' replicas."""

    def __init__(self) -> None:
        self._pools: dict[Key, Obj] = {}
        self._parsed: dict[Key, _Parsed] = {}
        self._scales: dict[Key, _Scale] = {}
        self._startups: dict[Key, StartupClock] = {}

    def observe(self, body: Obj) -> None:
        """Record a WorkerPool as a watch event (or a read) shows it."""
        meta = body["metadata"]
        self._pools[(meta["namespace"], meta["name"])] = body

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted pool."""
        for known in (self._pools, self._parsed, self._scales, self._startups):
            known.pop((namespace, name), None)

    def pool(self, namespace: str, name: str) -> Obj | None:
        return self._pools.get((namespace, name))

    async def read_pool(self, kube: Kube, namespace: str, name: str) -> Obj | None:
        """The pool as the watch shows it, else as the API server does; None: no such pool."""
        known = self.pool(namespace, name)
        if known is not None:
            return known
        body = await kube.find(workerpool_path(namespace, name))
        if body is not None:
            self.observe(body)
        return body

    def spec(self, body: Obj) -> PoolSpec:
        """The pool's parsed spec; raises InvalidPoolSpec. Parsed once per generation."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        uid, generation = str(meta.get("uid")), int(meta.get("generation") or 0)
        parsed = self._parsed.get(key)
        if parsed is None or (parsed.uid, parsed.generation) != (uid, generation):
            try:
                spec: PoolSpec | InvalidPoolSpec = PoolSpec.from_body(body.get("spec") or {})
            except InvalidPoolSpec as exc:
                spec = exc
            parsed = self._parsed[key] = _Parsed(uid, generation, spec)
        if isinstance(parsed.spec, InvalidPoolSpec):
            raise InvalidPoolSpec(str(parsed.spec))
        return parsed.spec

    def observe_deployment(self, namespace: str, pool: str, deployment: Obj) -> None:
        """Record the replicas of the pool's Deployment, unless a newer generation is known,
        and tell the pool's StartupClock how many are Ready."""
        meta = deployment.get("metadata") or {}
        ready = (deployment.get("status") or {}).get("readyReplicas") or 0
        self.startup(namespace, pool).ready(time.monotonic(), int(ready))
        scale = _Scale(str(meta.get("uid")), int(meta.get("generation") or 0),
                       int((deployment.get("spec") or {}).get("replicas", 1)))
        known = self._scales.get((namespace, pool))
        if known is None or known.uid != scale.uid or known.generation <= scale.generation:
            self._scales[(namespace, pool)] = scale

    def startup(self, namespace: str, pool: str) -> StartupClock:
        """The pool's StartupClock (a new one for a pool not seen before)."""
        return self._startups.setdefault((namespace, pool), StartupClock())

    def forget_deployment(self, namespace: str, pool: str) -> None:
        """The pool's Deployment was deleted."""
        self._scales.pop((namespace, pool), None)

    def replicas(self, namespace: str, pool: str) -> int | None:
        known = self._scales.get((namespace, pool))
        return None if known is None else known.replicas

    async def read_replicas(self, kube: Kube, namespace: str, pool: str) -> int | None:
        """The replicas of the pool's Deployment as known, else as the API server says;
        None: there is no Deployment."""
        known = self.replicas(namespace, pool)
        if known is not None:
            return known
        deployment = await kube.find(deployment_path(namespace, pool))
        if deployment is None:
            return None
        self.observe_deployment(namespace, pool, deployment)
        return self.replicas(namespace, pool)
