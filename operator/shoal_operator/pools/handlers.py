"""kopf handlers of WorkerPool: the owned Deployment, its repair, status and the scaler.

- create/update/resume: apply the desired Deployment (server-side apply, the
  operator's field manager) and wake the scaler; a spec that cannot be served
  (InvalidSpec, or a Deployment the API server refuses: DeploymentRejected)
  becomes Stalled=True, Ready=False and a Warning Event, never a retry loop.
- the Deployment watcher: a deleted or edited Deployment is re-applied
  (Warning Event DeploymentRepaired); otherwise its replica counts and
  Ready/Reconciling/Stalled (`status.readiness` of its rollout) go to the
  pool's status.
- a daemon per pool runs its `PoolScaler` until the pool is deleted.
- every WorkerPool watch event updates the operator's `PoolRegistry`, so the
  other handlers and the Workflow handlers find a pool without reading it.

Each handler parses the spec through the registry (once per generation) and
passes the pool it holds to the status writer, which never reads it first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

import kopf

from shoal_operator import context, metrics
from shoal_operator.context import Operator
from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.kube import (
    KubeError,
    deployment_path,
    namespaced,
)
from shoal_operator.pools import autoscaler, status
from shoal_operator.pools.deployment import (
    MANAGED_BY,
    POOL_LABEL,
    desired_deployment,
    drifted,
    rollout_state,
    selector_string,
)
from shoal_operator.pools.spec import PoolSpec
from shoal_operator.resource import GROUP, VERSION

Obj = Mapping[str, Any]


async def _current_replicas(op: Operator, namespace: str, name: str, pool: Obj,
                            spec: PoolSpec) -> int:
    """Manual mode: spec.replicas. Auto mode: what the scaler last set, else minReplicas."""
    scaling = spec.scaling
    if scaling.mode == "manual":
        return spec.replicas
    existing = await op.pools.read_replicas(op.kube, namespace, name)
    if existing is not None:
        return existing
    last = (pool.get("status") or {}).get("desiredReplicas")
    wanted = scaling.min_replicas if last is None else int(last)
    return min(max(wanted, scaling.min_replicas), scaling.max_replicas)


async def _apply(op: Operator, pool: Obj, spec: PoolSpec, replicas: int) -> None:
    meta = pool["metadata"]
    manifest = desired_deployment(pool, spec, replicas=replicas,
                                  schema=op.backends.schema_of(spec.database))
    applied = await op.kube.apply(deployment_path(meta["namespace"], meta["name"]), manifest)
    op.pools.observe_deployment(meta["namespace"], meta["name"], applied)


@kopf.on.event(GROUP, VERSION, "workerpools")
async def track_pool(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                     name: str, namespace: str | None, **_: Any) -> None:
    """Keep the pool registry in step with the watch stream (no API call)."""
    op = context.of(memo)
    if event.get("type") == "DELETED":
        op.pools.forget(namespaced(namespace), name)
    else:
        op.pools.observe(cast(Obj, event["object"]))


@kopf.on.resume(GROUP, VERSION, "workerpools")
@kopf.on.create(GROUP, VERSION, "workerpools")
@kopf.on.update(GROUP, VERSION, "workerpools")
async def reconcile_pool(body: kopf.Body, memo: kopf.Memo, name: str, namespace: str | None,
                         **_: Any) -> None:
    """Apply the pool's Deployment; report InvalidSpec instead of retrying bad input."""
    namespace = namespaced(namespace)
    op = context.of(memo)
    started = time.monotonic()
    generation = body.metadata.get("generation")
    try:
        spec = op.pools.spec(body)
    except InvalidPoolSpec as exc:
        metrics.reconciles.labels("WorkerPool", "invalid").inc()
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
        await op.status.patch(body, {"observedGeneration": generation},
                              status.readiness(False, "InvalidSpec", str(exc),
                                               generation=generation))
        return
    try:
        replicas = await _current_replicas(op, namespace, name, body, spec)
        await _apply(op, body, spec, replicas)
    except KubeError as exc:
        metrics.reconciles.labels("WorkerPool", "error").inc()
        rejected = exc.status in (400, 403, 422)
        reason = "DeploymentRejected" if rejected else "DeploymentFailed"
        message = f"cannot apply the pool's Deployment: {exc.message}"
        kopf.event(body, type="Warning", reason=reason, message=message)
        # Refused: stalled until the spec changes. Failed otherwise: retried.
        await op.status.patch(body, {"observedGeneration": generation},
                              status.readiness(False if rejected else None, reason,
                                               message, generation=generation))
        if not rejected:
            raise kopf.TemporaryError(message, delay=10) from exc
        # The API server refused what the spec asks for (e.g. an unknown toleration
        # operator): wait for a new spec rather than retry forever.
        return
    await op.status.patch(body, {
        "observedGeneration": generation, "selector": selector_string(name),
        "mode": spec.scaling.mode})
    op.autoscaler.wake(namespace, name)
    metrics.reconciles.labels("WorkerPool", "ok").inc()
    metrics.reconcile_seconds.labels("WorkerPool").observe(time.monotonic() - started)


@kopf.daemon(GROUP, VERSION, "workerpools", cancellation_backoff=5.0,
             cancellation_timeout=5.0)
async def scale_pool(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo,
                     name: str, namespace: str | None, **_: Any) -> None:
    """The pool's scaler, for as long as the pool exists (a service: see health.py)."""
    namespace = namespaced(namespace)
    op = context.of(memo)
    scaler = autoscaler.PoolScaler(body, op.autoscaler)
    try:
        await op.health.supervise(scaler.service, lambda: scaler.run(stopped))
    finally:
        if body.metadata.get("deletionTimestamp"):
            metrics.forget_pool(namespace, name)
            op.status.forget(namespace, name)
            op.health.forget(scaler.service)


@kopf.on.event("apps", "v1", "deployments", labels=dict(MANAGED_BY))
async def watch_deployment(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                           namespace: str | None, **_: Any) -> None:
    """Repair a deleted or edited pool Deployment; otherwise mirror its status."""
    pool_name = (body.metadata.get("labels") or {}).get(POOL_LABEL)
    if not pool_name:
        return
    namespace = namespaced(namespace)
    op = context.of(memo)
    started = time.monotonic()
    pool = await op.pools.read_pool(op.kube, namespace, pool_name)
    if pool is None:
        return
    if pool["metadata"].get("deletionTimestamp"):
        return
    owners = [o.get("uid") for o in body.metadata.get("ownerReferences") or []]
    if pool["metadata"]["uid"] not in owners:
        return  # a Deployment of an older pool of the same name, being collected
    deleted = event.get("type") == "DELETED"
    if deleted:
        op.pools.forget_deployment(namespace, pool_name)
    else:
        op.pools.observe_deployment(namespace, pool_name, body)
    try:
        spec = op.pools.spec(pool)
    except InvalidPoolSpec:
        return  # reconcile_pool reports it
    # Auto mode: the scaler owns the count, so an existing Deployment's count is not drift.
    replicas = (await _current_replicas(op, namespace, pool_name, pool, spec)
                if deleted or spec.scaling.mode == "manual"
                else int(body.get("spec", {}).get("replicas", 0)))
    desired = desired_deployment(pool, spec, replicas=replicas,
                                 schema=op.backends.schema_of(spec.database))
    if deleted or drifted(desired["spec"], body.get("spec")) or drifted(
            desired["metadata"]["labels"], body.metadata.get("labels")):
        what = "was deleted" if deleted else "drifted from the pool's spec"
        try:
            await _apply(op, pool, spec, replicas)
        except KubeError as exc:
            if exc.namespace_terminating:
                return  # the namespace's deletion takes the pool too
            raise
        kopf.event(kopf.Body(cast(kopf.RawBody, pool)), type="Warning", reason="DeploymentRepaired",
                   message=f"Deployment {namespace}/{pool_name} {what}; re-applied it")
        metrics.reconciles.labels("Deployment", "repaired").inc()
    else:
        metrics.reconciles.labels("Deployment", "synced").inc()
    if deleted:
        return
    state, reason, message = rollout_state(body)
    st = body.get("status") or {}
    generation = pool["metadata"].get("generation")
    await op.status.patch(pool, {
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": int(st.get("readyReplicas") or 0),
    }, status.readiness(state, reason, message, generation=generation))
    metrics.reconcile_seconds.labels("Deployment").observe(time.monotonic() - started)
