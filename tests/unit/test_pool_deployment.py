"""WorkerPool spec -> Deployment manifest, drift detection and the Ready condition."""

from __future__ import annotations

from typing import Any

import pytest

from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.pools.deployment import desired_deployment, drifted, rollout_state
from shoal_operator.pools.spec import PoolSpec, is_paused
from shoal_operator.pools.status import readiness

BODY: dict[str, Any] = {"metadata": {"name": "etl", "namespace": "jobs", "uid": "u-1"}}
SPEC: dict[str, Any] = {
    "app": "examples/tasks.py:app",
    "template": {"image": "shoal:1", "env": [{"name": "X", "value": "1"}],
                 "labels": {"team": "data"}, "nodeSelector": {"pool": "cpu"}},
    "database": {"secretRef": {"name": "pg", "key": "url"}},
    "tasks": {"namespace": "etl", "tags": ["gpu", "eu"], "names": ["sleep"]},
    "concurrency": 8, "batchSize": 2, "claimTTL": "1m", "drainTimeout": "20s",
}


def manifest(**spec: Any) -> dict[str, Any]:
    return desired_deployment(BODY, PoolSpec.from_body(SPEC | spec), replicas=3, schema="s1")


def test_owner_selector_and_replicas() -> None:
    m = manifest()
    assert m["metadata"]["ownerReferences"] == [{
        "apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool", "name": "etl", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    assert m["spec"]["selector"] == {"matchLabels": {"shoal.dev/pool": "etl"}}
    assert m["spec"]["replicas"] == 3
    labels = m["spec"]["template"]["metadata"]["labels"]
    assert labels["shoal.dev/pool"] == "etl" and labels["team"] == "data"


def test_worker_flags_come_from_the_spec() -> None:
    c = manifest()["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["shoal", "worker"]
    args = c["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags == {"--app": "examples/tasks.py:app", "--namespace": "etl", "--schema": "s1",
                     "--concurrency": "8", "--claim-ttl": "60s", "--drain-timeout": "20s",
                     "--metrics-port": "9100", "--pool": "etl", "--tags": "gpu,eu",
                     "--tasks": "sleep", "--batch-size": "2"}


def test_dsn_from_secret_and_pod_identity_from_downward_api() -> None:
    env = manifest()["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["SHOAL_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "url"}}
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert by_name["X"] == {"name": "X", "value": "1"}
    assert not any("postgres" in str(e) for e in env)


def test_security_probes_and_grace_period() -> None:
    pod = manifest()["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert (c["readinessProbe"]["periodSeconds"], c["readinessProbe"]["failureThreshold"]) == (
        1, 2)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] == 25  # drain 20 s + margin
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert "affinity" not in pod


def test_drift_ignores_server_defaults_but_sees_edits() -> None:
    desired = manifest()["spec"]
    actual = {**desired, "progressDeadlineSeconds": 600, "strategy": {"type": "RollingUpdate"}}
    assert not drifted(desired, actual)
    edited = {**actual, "template": {**desired["template"], "spec": {
        **desired["template"]["spec"],
        "containers": [{**desired["template"]["spec"]["containers"][0], "image": "evil:1"}]}}}
    assert drifted(desired, edited)
    assert drifted(desired, None)


def conditions(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{type: (status, reason)} of the pool's kstatus conditions for `deployment`."""
    state, reason, message = rollout_state(deployment)
    return {c["type"]: (c["status"], c["reason"])
            for c in readiness(state, reason, message, generation=3)}


def test_rollout_state_from_deployment_status() -> None:
    dep: dict[str, Any] = {
        "metadata": {"generation": 2}, "spec": {"replicas": 3},
        "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                   "updatedReplicas": 3}}
    assert rollout_state(dep)[:2] == (True, "AllReplicasReady")
    assert conditions(dep) == {"Ready": ("True", "AllReplicasReady"),
                               "Reconciling": ("False", "AllReplicasReady"),
                               "Stalled": ("False", "AllReplicasReady")}
    dep["status"]["readyReplicas"] = 1
    assert rollout_state(dep)[:2] == (None, "ReplicasNotReady")
    assert conditions(dep) == {"Ready": ("False", "ReplicasNotReady"),
                               "Reconciling": ("True", "ReplicasNotReady"),
                               "Stalled": ("False", "ReplicasNotReady")}
    dep["status"]["observedGeneration"] = 1
    assert rollout_state(dep)[:2] == (None, "RollingOut")
    dep["status"] |= {"observedGeneration": 2, "readyReplicas": 3, "replicas": 5}
    assert rollout_state(dep)[:2] == (None, "ScalingDown")  # pods still draining
    dep["status"]["conditions"] = [{"type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "w-1" has timed out progressing.'}]
    assert rollout_state(dep) == (False, "ProgressDeadlineExceeded",
                                  'ReplicaSet "w-1" has timed out progressing.')
    assert conditions(dep) == {"Ready": ("False", "ProgressDeadlineExceeded"),
                               "Reconciling": ("False", "ProgressDeadlineExceeded"),
                               "Stalled": ("True", "ProgressDeadlineExceeded")}
    assert all(c["observedGeneration"] == 3 for c in readiness(False, "X", "", generation=3))


def test_task_code_can_come_from_a_volume() -> None:
    code = {"name": "code", "configMap": {"name": "etl-tasks"}}
    mount = {"name": "code", "mountPath": "/opt/tasks", "readOnly": True}
    pod = manifest(template=SPEC["template"] | {"volumes": [code], "volumeMounts": [mount]},
                   app="/opt/tasks/etl.py:app")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}, code]
    container = pod["containers"][0]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, mount]
    assert container["args"][container["args"].index("--app") + 1] == "/opt/tasks/etl.py:app"
    for field, items, message in (
            ("volumes", [{"name": "tmp", "emptyDir": {}}], "volume name 'tmp' is the operator's"),
            ("volumes", [code, code], "each name must be unique"),
            ("volumeMounts", [{"name": "code", "mountPath": "/tmp"}], "/tmp is the operator's"),
            ("volumeMounts", [mount, mount], "each mountPath must be unique")):
        with pytest.raises(InvalidPoolSpec, match=rf"spec\.template\.{field}: .*{message}"):
            PoolSpec.from_body({**SPEC, "template": SPEC["template"] | {field: items}})


def test_invalid_specs_name_the_field() -> None:
    with pytest.raises(InvalidPoolSpec, match=r"spec\.template\.image"):
        PoolSpec.from_body({**SPEC, "template": {}})
    with pytest.raises(InvalidPoolSpec, match="minReplicas"):
        PoolSpec.from_body({**SPEC, "scaling": {"minReplicas": 5, "maxReplicas": 2}})
    with pytest.raises(InvalidPoolSpec, match=r"spec\.claimTTL"):
        PoolSpec.from_body({**SPEC, "claimTTL": "soon"})


def test_defaults_and_pause_annotation() -> None:
    spec = PoolSpec.from_body({k: SPEC[k] for k in ("app", "template", "database")})
    assert spec.target_per_replica == spec.concurrency == 4
    assert (spec.scaling.mode, spec.scaling.min_replicas, spec.scaling.max_replicas) == (
        "auto", 1, 10)
    assert spec.scaling.scale_down_stabilization_seconds == 300
    assert spec.scaling.target_queue_age_seconds is None
    assert spec.scaling.pod_startup_seconds is None
    timed = PoolSpec.from_body({k: SPEC[k] for k in ("app", "template", "database")}
                               | {"scaling": {"targetQueueAge": "1m30s", "podStartupTime": "0s"}})
    assert (timed.scaling.target_queue_age_seconds, timed.scaling.pod_startup_seconds) == (90, 0)
    # With a latency target, the scaler's target per replica is the slots: concurrency.
    both = PoolSpec.from_body({k: SPEC[k] for k in ("app", "template", "database")}
                              | {"scaling": {"targetQueueAge": "30s", "targetTasksPerReplica": 9}})
    assert both.target_per_replica == both.concurrency == 4
    assert is_paused({"pause": "true"}) and is_paused({"shoal.dev/pause": "True"})
    assert not is_paused({"pause": "false"}) and not is_paused(None)
    with pytest.raises(InvalidPoolSpec, match="'maybe' is not true or false"):
        is_paused({"pause": "maybe"})
    with pytest.raises(InvalidPoolSpec, match="disagree"):
        is_paused({"pause": "true", "shoal.dev/pause": "false"})
