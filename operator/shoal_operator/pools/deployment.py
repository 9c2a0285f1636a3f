"""The Deployment a WorkerPool owns, as a pure function of the pool.

`desired_deployment` guarantees: the pool is the controller owner; the
selector is the immutable `shoal.dev/pool` label; the worker's flags are
`WorkerSettings.to_argv()` of the spec's settings (the task selector,
concurrency, TTLs, the pool name for its liveness row); the DSN comes
only from the Secret; POD_NAME/POD_IP come from the downward API; the liveness
probe hits the worker's /healthz (the event loop runs), the readiness probe its
/readyz (connected to the database, not draining, no service failed); the
container runs non-root with a read-only root filesystem and no capabilities;
the grace period covers the drain timeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shoal.worker.config import WorkerSettings
from shoal_operator.pools.spec import RESERVED_VOLUME, PoolSpec
from shoal_operator.resource import GROUP, VERSION

POOL_LABEL = "shoal.dev/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "shoal-operator"}
GRACE_MARGIN_SECONDS = 5


def selector_labels(pool_name: str) -> dict[str, str]:
    """The labels that select a pool's pods (the Deployment selector; never changes)."""
    return {POOL_LABEL: pool_name}


def selector_string(pool_name: str) -> str:
    """The label selector as text, as status.selector (scale subresource) wants it."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(pool_name).items())


def worker_settings(pool_name: str, spec: PoolSpec, schema: str) -> WorkerSettings:
    """The worker settings the spec asks for; the worker's defaults cover the rest."""
    settings: dict[str, Any] = {
        "db_schema": schema, "namespace": spec.tasks.namespace,
        "concurrency": spec.concurrency, "claim_ttl": spec.claim_ttl_seconds,
        "drain_timeout": spec.drain_timeout_seconds, "metrics_port": spec.metrics_port,
        "pool": pool_name, "tags": spec.tasks.tags, "tasks": spec.tasks.names,
        "batch_size": spec.batch_size}
    return WorkerSettings.model_validate(
        {k: v for k, v in settings.items() if v is not None and v != ()})


def worker_args(pool_name: str, spec: PoolSpec, schema: str) -> list[str]:
    """The `shoal worker` arguments: the app, the settings' flags, the template's extra args."""
    return ["--app", spec.app, *worker_settings(pool_name, spec, schema).to_argv(),
            *spec.template.args]


def _env(spec: PoolSpec) -> list[dict[str, Any]]:
    ref = spec.database.secret_ref
    downward = [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                ("POD_IP", "status.podIP")]
    return [
        {"name": "SHOAL_DSN",
         "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
        *({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
          for name, path in downward),
        *spec.template.env,
    ]


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool", "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def desired_deployment(body: Mapping[str, Any], spec: PoolSpec, *, replicas: int,
                       schema: str) -> dict[str, Any]:
    """The complete Deployment manifest for WorkerPool `body` at `replicas`."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    t = spec.template
    labels = {**t.labels, **MANAGED_BY, "app.kubernetes.io/name": "shoal-worker",
              "app.kubernetes.io/instance": name, **selector_labels(name)}
    probe = {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 5,
             "timeoutSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "worker",
        "image": t.image,
        "command": list(t.command),
        "args": worker_args(name, spec, schema),
        "env": _env(spec),
        "ports": [{"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "metrics"},
                           "periodSeconds": 1, "failureThreshold": 2},
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "securityContext": {
            "runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": RESERVED_VOLUME, "mountPath": "/tmp"}, *t.volume_mounts],
    }
    if t.image_pull_policy:
        container["imagePullPolicy"] = t.image_pull_policy
    if t.env_from:
        container["envFrom"] = list(t.env_from)
    if t.resources:
        container["resources"] = t.resources
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds":
            math.ceil(spec.drain_timeout_seconds) + GRACE_MARGIN_SECONDS,
        "securityContext": {"runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": RESERVED_VOLUME, "emptyDir": {}}, *t.volumes],
        "automountServiceAccountToken": False,
    }
    optional: dict[str, Any] = {
        "nodeSelector": t.node_selector, "tolerations": list(t.tolerations),
        "affinity": t.affinity, "serviceAccountName": t.service_account_name,
        "imagePullSecrets": list(t.image_pull_secrets)}
    pod.update({k: v for k, v in optional.items() if v})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(body)]},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(name)},
            "template": {"metadata": {"labels": labels, "annotations": dict(t.annotations)},
                         "spec": pod},
        },
    }


def drifted(desired: Any, actual: Any) -> bool:
    """Whether `actual` lacks or changed anything `desired` sets (server defaults ignored)."""
    if desired in ({}, []) and actual in (None, {}, []):
        return False
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(drifted(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return True
        return any(drifted(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired != actual)


def rollout_state(deployment: Mapping[str, Any]) -> tuple[bool | None, str, str]:
    """(state, reason, message) of a pool from its Deployment, for `status.readiness`.

    True when the Deployment controller has seen the latest spec and every
    wanted replica is updated and ready; None while it rolls out or scales
    (pods missing, not ready, or still terminating after a scale-down); False
    when it gave up (Progressing=False, ProgressDeadlineExceeded).
    """
    wanted = int(deployment.get("spec", {}).get("replicas", 1))
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    seen = int(status.get("observedGeneration") or 0) >= int(
        deployment.get("metadata", {}).get("generation") or 0)
    progressing: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Progressing"), {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, "ProgressDeadlineExceeded", str(progressing.get("message") or "")
    if not seen:
        return None, "RollingOut", "the Deployment controller has not seen the latest spec"
    if current > wanted:
        return None, "ScalingDown", f"{current - wanted} replica(s) still terminating"
    if wanted == 0:
        return True, "ScaledToZero", "no replicas wanted"
    if ready >= wanted and updated >= wanted:
        return True, "AllReplicasReady", f"{ready}/{wanted} replicas ready"
    return None, "ReplicasNotReady", f"{ready}/{wanted} replicas ready, {updated} updated"
