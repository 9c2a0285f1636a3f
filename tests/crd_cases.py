"""One table of every spec field's default and bounds, for WorkerPool and Workflow.

The same rows are checked through the models (tests/unit/test_crd_table.py)
and through the API server with the generated CRDs (tests/operator/
test_crd_table.py), so the two must agree. `leaf_paths` and `bounded_paths`
walk the models: a field without a default row, or a bounded field without
an accepted and a refused row, fails the unit test.

A path is dotted by the CR's own keys (`scaling.scaleDown.pods`; list items
by index, `steps.0.retries`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel

from shoal.validation import Duration, Rule

Kind = Literal["WorkerPool", "Workflow"]
ABSENT = "<absent>"  # neither the CRD nor the model sets a value
REQUIRED = "<required>"  # no default: a spec without it is refused

BASE: dict[Kind, dict[str, Any]] = {
    "WorkerPool": {"app": "tasks.py:app", "template": {"image": "shoal:1"},
                   "database": {"secretRef": {"name": "pg"}}},
    "Workflow": {"poolRef": "demo", "steps": [{"name": "a", "task": "echo"}]},
}


@dataclass(frozen=True)
class Default:
    kind: Kind
    path: str
    value: Any
    given: dict[str, Any] = field(default_factory=dict)  # set before defaulting


@dataclass(frozen=True)
class Bound:
    kind: Kind
    path: str
    value: Any
    accepted: bool
    given: dict[str, Any] = field(default_factory=dict)


def steps(n: int) -> list[dict[str, str]]:
    return [{"name": f"s{i}", "task": "echo"} for i in range(n)]


def items(n: int, make: Any) -> list[Any]:
    return [make(i) for i in range(n)]


POOL_DEFAULTS = [
    ("app", REQUIRED), ("replicas", 1), ("concurrency", 4), ("batchSize", ABSENT),
    ("claimTTL", "30s"), ("drainTimeout", "30s"), ("metricsPort", 9100),
    ("tasks.namespace", "default"), ("tasks.tags", ABSENT), ("tasks.names", ABSENT),
    ("database.secretRef.name", REQUIRED), ("database.secretRef.key", "dsn"),
    ("database.schema", ABSENT), ("onOOMKilled.pool", ABSENT), ("onOOMKilled.tags", ABSENT),
    ("template.image", REQUIRED), ("template.imagePullPolicy", ABSENT),
    ("template.command", ["shoal", "worker"]), ("template.args", ABSENT),
    ("template.env", ABSENT), ("template.envFrom", ABSENT), ("template.resources", ABSENT),
    ("template.nodeSelector", ABSENT), ("template.tolerations", ABSENT),
    ("template.affinity", ABSENT), ("template.serviceAccountName", ABSENT),
    ("template.imagePullSecrets", ABSENT), ("template.volumes", ABSENT),
    ("template.volumeMounts", ABSENT), ("template.labels", ABSENT),
    ("template.annotations", ABSENT),
    ("scaling.mode", "auto"), ("scaling.minReplicas", 1), ("scaling.maxReplicas", 10),
    ("scaling.targetTasksPerReplica", ABSENT), ("scaling.activationThreshold", 0),
    ("scaling.tolerance", 10), ("scaling.scaleDownStabilization", "300s"),
    ("scaling.targetQueueAge", ABSENT), ("scaling.podStartupTime", ABSENT),
    ("scaling.scaleUp.pods", 4), ("scaling.scaleUp.percent", 100),
    ("scaling.scaleUp.period", "15s"),
    ("scaling.scaleDown.pods", 0), ("scaling.scaleDown.percent", 100),
    ("scaling.scaleDown.period", "15s"),
    ("scaling.fallback.replicas", ABSENT), ("scaling.fallback.afterFailures", 3),
]
WORKFLOW_DEFAULTS = [
    ("poolRef", REQUIRED), ("input", ABSENT), ("priority", 0), ("tags", ABSENT),
    ("steps", REQUIRED), ("steps.0.name", REQUIRED), ("steps.0.task", REQUIRED),
    ("steps.0.input", ABSENT),
    ("steps.0.dependsOn", ABSENT), ("steps.0.retries", 0), ("steps.0.timeout", ABSENT),
    ("steps.0.priority", ABSENT), ("steps.0.tags", ABSENT),
]
DEFAULTS = [
    *(Default("WorkerPool", p, v) for p, v in POOL_DEFAULTS),
    *(Default("Workflow", p, v) for p, v in WORKFLOW_DEFAULTS),
    # Given in part, a rate limit keeps the other defaults of its own kind.
    Default("WorkerPool", "scaling.scaleDown.pods", 0, {"scaling": {"scaleDown": {"percent": 50}}}),
    Default("WorkerPool", "scaling.scaleUp.pods", 4, {"scaling": {"scaleUp": {"percent": 50}}}),
    Default("WorkerPool", "scaling.scaleDown.period", "15s",
            {"scaling": {"scaleDown": {"pods": 1}}}),
    Default("WorkerPool", "scaling.fallback.afterFailures", 3,
            {"scaling": {"fallback": {"replicas": 2}}}),
]

VOLUME = {"name": "code", "configMap": {"name": "tasks"}}
MOUNT = {"name": "code", "mountPath": "/opt/tasks"}
POOL_BOUNDS: list[tuple[str, Any, bool]] = [
    ("app", "tasks.py:app", True), ("app", "tasks.py", False), ("app", "a b:app", False),
    ("app", "m:" + "a" * 510, True), ("app", "m:" + "a" * 511, False),
    ("replicas", 0, True), ("replicas", -1, False),
    ("concurrency", 1, True), ("concurrency", 0, False),
    ("concurrency", 10_000, True), ("concurrency", 10_001, False),
    ("batchSize", 1, True), ("batchSize", 0, False),
    ("batchSize", 10_000, True), ("batchSize", 10_001, False),
    ("claimTTL", "1ms", True), ("claimTTL", "0s", False), ("claimTTL", "1h30m", True),
    ("claimTTL", "1.5h", True), ("claimTTL", "1d", False), ("claimTTL", "30S", False),
    ("claimTTL", "30", False), ("claimTTL", 30, False), ("claimTTL", "-5s", False),
    ("claimTTL", "24h", True), ("claimTTL", "24h1s", False), ("claimTTL", "2562048h", False),
    ("claimTTL", "1" + "0" * 30 + "s", False), ("claimTTL", "1" * 31 + "s", False),
    ("drainTimeout", "0s", True), ("drainTimeout", "24h", True), ("drainTimeout", "1d", False),
    ("drainTimeout", "24h1s", False), ("drainTimeout", "2562048h", False),
    ("metricsPort", 1, True), ("metricsPort", 0, False),
    ("metricsPort", 65535, True), ("metricsPort", 65536, False),
    ("tasks.namespace", "x", True), ("tasks.namespace", "", False),
    ("tasks.namespace", "x" * 253, True), ("tasks.namespace", "x" * 254, False),
    ("tasks.tags", ["gpu", "eu-west.2"], True), ("tasks.tags", ["a,b"], False),
    ("tasks.tags", ["no spaces"], False), ("tasks.tags", ["x" * 63], True),
    ("tasks.tags", ["x" * 64], False), ("tasks.tags", items(64, lambda i: f"t{i}"), True),
    ("tasks.tags", items(65, lambda i: f"t{i}"), False),
    ("tasks.names", ["mail.send", "a:b"], True), ("tasks.names", ["no spaces"], False),
    ("tasks.names", ["x" * 200], True), ("tasks.names", ["x" * 201], False),
    ("tasks.names", items(256, lambda i: f"t{i}"), True),
    ("tasks.names", items(257, lambda i: f"t{i}"), False),
    ("database.secretRef.name", "x" * 253, True), ("database.secretRef.name", "", False),
    ("database.secretRef.name", "x" * 254, False),
    ("database.secretRef.key", "url", True), ("database.secretRef.key", "", False),
    ("database.secretRef.key", "x" * 254, False),
    ("database.schema", "shoal_2", True), ("database.schema", "Shoal", False),
    ("database.schema", "x" * 63, True), ("database.schema", "x" * 64, False),
    ("onOOMKilled", {"pool": "big"}, True), ("onOOMKilled", {"tags": ["highmem"]}, True),
    ("onOOMKilled", {}, False), ("onOOMKilled", {"pool": "big", "tags": ["highmem"]}, False),
    ("onOOMKilled.pool", "x" * 63, True), ("onOOMKilled.pool", "x" * 64, False),
    ("onOOMKilled.pool", "Big", False), ("onOOMKilled.pool", "", False),
    ("onOOMKilled.tags", ["highmem"], True), ("onOOMKilled.tags", [], False),
    ("onOOMKilled.tags", ["a,b"], False), ("onOOMKilled.tags", items(64, lambda i: f"t{i}"), True),
    ("onOOMKilled.tags", items(65, lambda i: f"t{i}"), False),
    ("template.image", "x", True), ("template.image", "", False),
    ("template.nodeSelector", {"disk": "ssd"}, True), ("template.nodeSelector", {"disk": 1}, False),
    ("template.imagePullPolicy", "Never", True), ("template.imagePullPolicy", "Sometimes", False),
    ("template.serviceAccountName", "x" * 253, True),
    ("template.serviceAccountName", "x" * 254, False),
    ("template.volumes", [VOLUME], True), ("template.volumes", [{"name": "tmp",
                                                                 "emptyDir": {}}], False),
    ("template.volumes", [VOLUME, VOLUME], False),
    ("template.volumes", items(64, lambda i: {"name": f"v{i}", "emptyDir": {}}), True),
    ("template.volumes", items(65, lambda i: {"name": f"v{i}", "emptyDir": {}}), False),
    ("template.volumeMounts", [MOUNT], True),
    ("template.volumeMounts", [{"name": "code", "mountPath": "/tmp"}], False),
    ("template.volumeMounts", [MOUNT, MOUNT], False),
    ("template.volumeMounts", items(64, lambda i: {"name": "v", "mountPath": f"/m{i}"}), True),
    ("template.volumeMounts", items(65, lambda i: {"name": "v", "mountPath": f"/m{i}"}), False),
    ("scaling", {"minReplicas": 2, "maxReplicas": 2, "fallback": {"replicas": 2}}, True),
    ("scaling", {"minReplicas": 3, "maxReplicas": 2}, False),
    ("scaling", {"maxReplicas": 2, "fallback": {"replicas": 3}}, False),
    ("scaling.mode", "manual", True), ("scaling.mode", "hpa", False),
    ("scaling.minReplicas", 0, True), ("scaling.minReplicas", -1, False),
    ("scaling.minReplicas", 10, True), ("scaling.minReplicas", 11, False),  # above maxReplicas
    ("scaling.maxReplicas", 1, True), ("scaling.maxReplicas", 0, False),  # below minReplicas
    ("scaling.maxReplicas", -1, False),
    ("scaling.targetTasksPerReplica", 1, True), ("scaling.targetTasksPerReplica", 0, False),
    ("scaling.activationThreshold", 0, True), ("scaling.activationThreshold", -1, False),
    ("scaling.tolerance", 0, True), ("scaling.tolerance", 100, True),
    ("scaling.tolerance", 101, False), ("scaling.tolerance", -1, False),
    ("scaling.scaleDownStabilization", "0s", True),
    ("scaling.scaleDownStabilization", "1h", True),
    ("scaling.scaleDownStabilization", "61m", False),
    ("scaling.scaleDownStabilization", "1d", False),
    ("scaling.targetQueueAge", "30s", True), ("scaling.targetQueueAge", "24h", True),
    ("scaling.targetQueueAge", "0s", False), ("scaling.targetQueueAge", "24h1s", False),
    ("scaling.targetQueueAge", "30", False),
    ("scaling.podStartupTime", "0s", True), ("scaling.podStartupTime", "1h", True),
    ("scaling.podStartupTime", "61m", False), ("scaling.podStartupTime", "-1s", False),
    ("scaling.scaleUp.pods", 0, True), ("scaling.scaleUp.pods", -1, False),
    ("scaling.scaleUp.percent", 1000, True), ("scaling.scaleUp.percent", -1, False),
    ("scaling.scaleUp", {"pods": 0, "percent": 0}, False),
    ("scaling.scaleUp", {"pods": 0, "percent": 1}, True),
    ("scaling.scaleUp.period", "30m", True), ("scaling.scaleUp.period", "31m", False),
    ("scaling.scaleUp.period", "0s", False),
    ("scaling.scaleDown.pods", 1, True), ("scaling.scaleDown.pods", -1, False),
    ("scaling.scaleDown.percent", 100, True), ("scaling.scaleDown.percent", 101, False),
    ("scaling.scaleDown.percent", -1, False), ("scaling.scaleDown", {"percent": 0}, False),
    ("scaling.scaleDown", {"pods": 1, "percent": 0}, True),
    ("scaling.scaleDown.period", "30m", True), ("scaling.scaleDown.period", "0s", False),
    ("scaling.fallback.replicas", 0, True), ("scaling.fallback.replicas", 10, True),
    ("scaling.fallback.replicas", 11, False),  # above maxReplicas
    ("scaling.fallback.replicas", -1, False),
    ("scaling.fallback.afterFailures", 1, True), ("scaling.fallback.afterFailures", 0, False),
]
WORKFLOW_BOUNDS: list[tuple[str, Any, bool]] = [
    ("poolRef", "x" * 63, True), ("poolRef", "x" * 64, False), ("poolRef", "Demo", False),
    ("poolRef", "", False),
    ("steps", steps(200), True), ("steps", steps(201), False), ("steps", [], False),
    ("steps", [{"name": "a", "task": "echo"}, {"name": "a", "task": "noop"}], False),
    ("steps.0.name", "x" * 63, True), ("steps.0.name", "x" * 64, False),
    ("steps.0.name", "A", False),
    ("steps.0.task", "mail.send:v2", True), ("steps.0.task", "", False),
    ("steps.0.task", "no spaces", False), ("steps.0.task", "x" * 200, True),
    ("steps.0.task", "x" * 201, False),
    ("steps.1.dependsOn", items(200, lambda i: "a"), True),
    ("steps.1.dependsOn", items(201, lambda i: "a"), False),
    ("steps.1.dependsOn", ["Bad"], False),
    ("steps.0.retries", 0, True), ("steps.0.retries", -1, False),
    ("steps.0.retries", 100, True), ("steps.0.retries", 101, False),
    ("steps.0.timeout", "250ms", True), ("steps.0.timeout", "0s", False),
    ("steps.0.timeout", "1d", False), ("steps.0.timeout", "2562048h", False),
    ("steps.0.priority", 2**31 - 1, True), ("steps.0.priority", 2**31, False),
    ("steps.0.priority", -(2**31), True), ("steps.0.priority", -(2**31) - 1, False),
    ("steps.0.tags", items(32, lambda i: f"t{i}"), True),
    ("steps.0.tags", items(33, lambda i: f"t{i}"), False),
    ("steps.0.tags", ["bad tag"], False), ("steps.0.tags", ["x" * 64], False),
    ("priority", 2**31 - 1, True), ("priority", 2**31, False),
    ("priority", -(2**31), True), ("priority", -(2**31) - 1, False),
    ("tags", items(32, lambda i: f"t{i}"), True), ("tags", items(33, lambda i: f"t{i}"), False),
    ("tags", ["a,b"], False),
]
TWO_STEPS = {"steps": [{"name": "a", "task": "echo"}, {"name": "b", "task": "echo"}]}
BOUNDS = [*(Bound("WorkerPool", p, v, ok) for p, v, ok in POOL_BOUNDS),
          *(Bound("Workflow", p, v, ok, TWO_STEPS if p.startswith("steps.1.") else {})
            for p, v, ok in WORKFLOW_BOUNDS)]

# Typed by the Kubernetes API's own schema (KubeField): the API server refuses these;
# the models pass such fields through as JSON, so the operator never sees them.
KUBE_TYPED = [
    ("template.env", [{"value": "no name"}]),
    ("template.env", [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
    ("template.env", [{"name": "A"}, {"name": "A"}]),
    ("template.envFrom", [{"secretRef": {"name": 7}}]),
    ("template.resources", {"limits": {"cpu": "lots"}}),
    ("template.resources", {"requests": {"memory": {"Gi": 1}}}),
    ("template.tolerations", [{"key": "gpu", "tolerationSeconds": "ten"}]),
    ("template.tolerations", [{"key": "gpu", "operater": "Exists"}]),
    ("template.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                                            {"nodeSelectorTerms": "any"}}}),
    ("template.imagePullSecrets", [{}]),
    ("template.volumes", [{"name": "v", "configMap": {"name": "c", "bogus": 1}}]),
    ("template.volumeMounts", [{"name": "v"}]),
]


def base_spec(kind: Kind, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the kind's base spec with `given` merged in."""
    return _merge(copy.deepcopy(BASE[kind]), copy.deepcopy(given or {}))


def with_value(kind: Kind, path: str, value: Any,
               given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The kind's base spec with `given` merged in and `value` set at `path`."""
    spec = base_spec(kind, given)
    *parents, last = path.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def without(kind: Kind, path: str) -> dict[str, Any]:
    """The kind's base spec without the field at `path`."""
    spec = base_spec(kind)
    *parents, last = path.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]
    return spec


def value_at(obj: Any, path: str) -> Any:
    """The value at `path`, or ABSENT when it is missing, None or an empty collection."""
    for part in path.split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return ABSENT
    return ABSENT if obj is None or obj in ([], {}, ()) else obj


def leaf_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field of `model` that holds no nested model, by its alias path."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        nested = _model_in(info.annotation)
        if nested is None:
            yield path
        else:
            many = get_origin(info.annotation) in (list, tuple)
            yield from leaf_paths(nested, f"{path}.0." if many else f"{path}.")


def bounded_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field (leaf or not) that has a bound, pattern, choice or rule."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        nested = _model_in(info.annotation)
        if _bounded(info.metadata) or _bounded_type(info.annotation) or (
                nested is not None and getattr(nested, "cel_rules", ())):
            yield path
        if nested is not None:
            many = get_origin(info.annotation) in (list, tuple)
            yield from bounded_paths(nested, f"{path}.0." if many else f"{path}.")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _bounded(metadata: list[Any]) -> bool:
    bounds = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le,
              annotated_types.MinLen, annotated_types.MaxLen, Duration, Rule)
    for item in metadata:
        if isinstance(item, bounds) or getattr(item, "pattern", None):
            return True
        if _bounded(getattr(item, "metadata", [])):
            return True
    return False


def _bounded_type(annotation: Any) -> bool:
    """A Literal, or an Annotated type (or its items) carrying a bound."""
    if get_origin(annotation) is Literal:
        return True
    metadata = list(getattr(annotation, "__metadata__", ()))
    return _bounded(metadata) or any(_bounded_type(a) for a in get_args(annotation))
