"""Pydantic models of the WorkerPool custom resource (v1alpha1): the source of its CRD.

Every field's type, default, bound, CEL rule and description is declared
here; `hack/gen_crds.py` writes the CRD from these models, so the API server
and `PoolSpec.from_body` accept exactly the same specs and apply the same
defaults. Durations stay the strings users wrote (`30s`, `5m`); the
`*_seconds` properties read them. What only the API server can check (the
Kubernetes types of `template.env`, `tolerations`, `volumes`...) is typed in
the CRD by `KubeField` and passed through here as plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from shoal.dag import TASK_NAME_PATTERN, Tag
from shoal.units import parse_duration
from shoal.validation import Checked, Duration, KubeField, Rule, problems
from shoal.worker.config import MAX_CLAIM_TTL, MAX_DRAIN_TIMEOUT, BatchSize, Concurrency
from shoal_operator.conditions import Conditions
from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.flags import read_flag
from shoal_operator.resource import Column, Resource, Scale

RESERVED_VOLUME = "tmp"  # the emptyDir every worker Pod gets at /tmp
RESERVED_MOUNT = "/tmp"
POD = "io.k8s.api.core.v1.PodSpec"
CONTAINER = "io.k8s.api.core.v1.Container"
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(Checked):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="ignore", frozen=True)


class SecretRef(_Model):
    """A Secret in the pool's namespace whose key holds a postgresql:// DSN. The operator
    reads it for scaling; the workers get it as SHOAL_DSN."""

    name: str = Field(min_length=1, max_length=253, description="The Secret's name.")
    key: str = Field("dsn", min_length=1, max_length=253, description="The key holding the DSN.")


class Database(_Model):
    """The PostgreSQL database holding the pool's tasks."""

    secret_ref: SecretRef = Field(description=SecretRef.__doc__)
    schema_: str | None = Field(None, alias="schema", pattern=SCHEMA_PATTERN, description=(
        "The schema holding Shoal's tables (unset: the operator's --schema, `shoal` by "
        "default). Created on first use when the pool's role may (else `shoal migrate`)."))


class TaskSelector(_Model):
    """The tasks this pool serves (and scales for)."""

    namespace: str = Field("default", min_length=1, max_length=253, description=(
        "The task namespace the workers claim from (a Shoal namespace, not a Kubernetes one): "
        "enqueue with the same namespace."))
    tags: tuple[Tag, ...] = Field((), max_length=64, description=(
        "The workers' tags: a worker claims a task only when the task's tags are a subset of "
        "these; untagged tasks go to any worker."))
    names: tuple[Annotated[str, Field(pattern=TASK_NAME_PATTERN)], ...] = Field(
        (), max_length=256, description=(
            "Task names to run (default every task the app registers); the backlog the pool "
            "scales on counts only these."))


class WorkerTemplate(_Model):
    """The worker Pod: container and scheduling fields of a PodSpec. The operator adds the
    rest: worker flags from this spec, the DSN from the Secret, probes, a non-root read-only
    security context and the grace period."""

    image: str = Field(min_length=1, description=(
        "An image with `shoal` and the app's code: the Shoal image, or one built FROM it."))
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="As in a Container.")
    command: tuple[str, ...] = Field(("shoal", "worker"), description=(
        "The container's command; the worker flags are its args."))
    args: tuple[str, ...] = Field((), description=(
        "Extra worker flags, after the ones derived from the spec."))
    env: Annotated[tuple[dict[str, Any], ...], KubeField(CONTAINER, "env")] = Field(
        (), description=("Extra environment variables, as in a Container (after SHOAL_DSN, "
                         "POD_NAME, POD_NAMESPACE and POD_IP, which the operator sets)."))
    env_from: Annotated[tuple[dict[str, Any], ...], KubeField(CONTAINER, "envFrom")] = Field(
        (), description="As in a Container.")
    resources: Annotated[dict[str, Any], KubeField(CONTAINER, "resources")] = Field(
        default_factory=dict, description="Container resources, as in a Container.")
    node_selector: Annotated[dict[str, str], KubeField(POD, "nodeSelector")] = Field(
        default_factory=dict, description="As in a PodSpec.")
    tolerations: Annotated[tuple[dict[str, Any], ...], KubeField(POD, "tolerations")] = Field(
        (), description="As in a PodSpec.")
    affinity: Annotated[dict[str, Any], KubeField(POD, "affinity")] = Field(
        default_factory=dict, description="As in a PodSpec.")
    service_account_name: str | None = Field(None, max_length=253, description=(
        "The Pods' ServiceAccount (its token is not mounted: workers need no API access)."))
    image_pull_secrets: Annotated[tuple[dict[str, Any], ...],
                                  KubeField(POD, "imagePullSecrets")] = Field(
        (), description="As in a PodSpec.")
    volumes: Annotated[tuple[dict[str, Any], ...], KubeField(POD, "volumes"), Rule(
        f"self.all(v, v.name != '{RESERVED_VOLUME}')",
        f"the volume name {RESERVED_VOLUME!r} is the operator's (an emptyDir at /tmp)",
        check=lambda volumes: all(v.get("name") != RESERVED_VOLUME for v in volumes))] = Field(
        (), max_length=64, description=(
            "Extra Pod volumes, as in a PodSpec, e.g. a ConfigMap holding task code."))
    volume_mounts: Annotated[tuple[dict[str, Any], ...], KubeField(CONTAINER, "volumeMounts"),
                             Rule(f"self.all(m, m.mountPath != '{RESERVED_MOUNT}')",
                                  f"{RESERVED_MOUNT} is the operator's mount (an emptyDir)",
                                  check=lambda mounts: all(
                                      m.get("mountPath") != RESERVED_MOUNT for m in mounts))
                             ] = Field((), max_length=64, description=(
        "Where the worker container mounts those volumes, as in a Container. With `app` as a "
        "file path under a mount (e.g. /opt/tasks/tasks.py:app), task code comes from a "
        "ConfigMap instead of the image."))
    labels: dict[str, str] = Field(default_factory=dict, description=(
        "Extra labels on the Deployment and its Pods (shoal.dev/pool and app.kubernetes.io/* "
        "are the operator's)."))
    annotations: dict[str, str] = Field(default_factory=dict,
                                        description="Annotations on the worker Pods.")

    @field_validator("volumes", "volume_mounts")
    @classmethod
    def _unique_keys(cls, items: tuple[dict[str, Any], ...], info: ValidationInfo
                     ) -> tuple[dict[str, Any], ...]:
        """The CRD refuses the same through the PodSpec's list-map keys (name, mountPath)."""
        key = "name" if info.field_name == "volumes" else "mountPath"
        keys = [item.get(key) for item in items]
        if len(set(keys)) < len(keys):
            raise ValueError(f"each {key} must be unique")
        return items


PERIOD = Annotated[str, Duration(gt=0, le=1800)]


class RateLimit(_Model):
    """At most max(pods, percent of the replicas at the start of the period) added or
    removed per period."""

    cel_rules = (Rule("self.pods > 0 || self.percent > 0",
                      "a rate limit of 0 pods and 0 percent would never scale",
                      check=lambda limit: limit.pods > 0 or limit.percent > 0),)

    pods: int
    percent: int
    period: PERIOD = Field("15s", description="The period the limit applies to (at most 30m).")

    @property
    def period_seconds(self) -> float:
        return parse_duration(self.period)


class ScaleUp(RateLimit):
    """At most max(pods, percent of the replicas at the start of the period) added per
    period."""

    pods: int = Field(4, ge=0, description="Pods that may always be added per period.")
    percent: int = Field(100, ge=0, description=(
        "Percent of the replicas that may be added per period."))


class ScaleDown(RateLimit):
    """At most max(pods, percent of the replicas at the start of the period) removed per
    period."""

    pods: int = Field(0, ge=0, description="Pods that may always be removed per period.")
    percent: int = Field(100, ge=0, le=100, description=(
        "Percent of the replicas that may be removed per period."))


class Fallback(_Model):
    """What to run while the backlog cannot be read (database unreachable, Secret missing).
    Without replicas, the current count is held."""

    replicas: int | None = Field(None, ge=0, description=(
        "Replicas to run once the reads failed afterFailures times in a row (at most "
        "scaling.maxReplicas)."))
    after_failures: int = Field(3, ge=1, description=(
        "Consecutive failed evaluations before the fallback applies."))


class Scaling(_Model):
    """How the operator sets the Deployment's replica count."""

    cel_rules = (
        Rule("self.minReplicas <= self.maxReplicas",
             "scaling.minReplicas must not exceed scaling.maxReplicas",
             check=lambda s: s.min_replicas <= s.max_replicas, field_path=".minReplicas"),
        Rule("!has(self.fallback.replicas) || self.fallback.replicas <= self.maxReplicas",
             "scaling.fallback.replicas must not exceed scaling.maxReplicas",
             check=lambda s: s.fallback.replicas is None
             or s.fallback.replicas <= s.max_replicas, field_path=".fallback.replicas"),
    )

    mode: Literal["auto", "manual"] = Field("auto", description=(
        "auto scales from the backlog (and mirrors its count into spec.replicas); manual "
        "uses spec.replicas, set by `kubectl scale` or an HPA through the scale subresource."))
    min_replicas: int = Field(1, ge=0, description=(
        "Fewest replicas in auto mode; 0 lets an idle pool scale to zero."))
    max_replicas: int = Field(10, ge=0, description="Most replicas in auto mode.")
    target_tasks_per_replica: int | None = Field(None, ge=1, description=(
        "The load (ready + running tasks the pool serves) one replica should carry; desired "
        "replicas = ceil(load / this). Default: concurrency. Not used with targetQueueAge."))
    activation_threshold: int = Field(0, ge=0, description=(
        "At zero replicas, start only when the load exceeds this (0: the first task starts "
        "a pod)."))
    tolerance_percent: int = Field(10, ge=0, le=100, alias="tolerance", description=(
        "Percent deviation of the load per replica from the target that changes nothing (as "
        "in the HPA), so small swings do not resize the pool."))
    scale_down_stabilization: Annotated[str, Duration(ge=0, le=3600)] = Field(
        "300s", description=(
            "Scale down only to the highest count recommended within this window (at most "
            "1h), so a brief dip removes no pods. Scale-up does not wait."))
    target_queue_age: Annotated[str, Duration(gt=0, le=86400)] | None = Field(
        None, description=(
            "Keep the age of the oldest ready task this pool serves under this (at most 24h): "
            "replicas are the fewest slots (concurrency per replica) that start every ready "
            "and due task before it ages past the target, from the measured service time "
            "per task name, the running tasks and the pods' start-up time. Unset: scale by "
            "count (targetTasksPerReplica). Until a task has finished (no service history), "
            "scales by count at one task per slot."))
    pod_startup_time: Annotated[str, Duration(ge=0, le=3600)] | None = Field(
        None, description=(
            "How long a new Pod takes to become Ready (at most 1h): delayed tasks and "
            "periodic ticks due within it count as ready, so the Pods are Ready when the "
            "work is due. Unset: learned from the pool's own Pods."))
    scale_up: ScaleUp = Field(default_factory=ScaleUp, description=ScaleUp.__doc__)
    scale_down: ScaleDown = Field(default_factory=ScaleDown, description=ScaleDown.__doc__)
    fallback: Fallback = Field(default_factory=Fallback, description=Fallback.__doc__)

    @property
    def scale_down_stabilization_seconds(self) -> float:
        return parse_duration(self.scale_down_stabilization)

    @property
    def target_queue_age_seconds(self) -> float | None:
        return None if self.target_queue_age is None else parse_duration(self.target_queue_age)

    @property
    def pod_startup_seconds(self) -> float | None:
        return None if self.pod_startup_time is None else parse_duration(self.pod_startup_time)


class OnOOMKilled(_Model):
    """Where a task goes when the worker running it is OOMKilled: its retry is claimable
    only by workers with the tags named here (a worker claims a task whose tags are a
    subset of its own). Set pool or tags. Without this field, the retry goes back to the
    workers that could claim it before, this pool's included."""

    cel_rules = (Rule("has(self.pool) != has(self.tags)",
                      "set exactly one of onOOMKilled.pool and onOOMKilled.tags",
                      check=lambda o: (o.pool is None) != (o.tags is None)),)

    pool: str | None = Field(None, pattern=DNS_LABEL, max_length=63, description=(
        "A WorkerPool in this namespace, e.g. one with a larger memory limit: the retried "
        "task takes that pool's tasks.tags (where that pool lists task names, only a task it "
        "runs). It must serve the same task namespace from the same database and have a tag "
        "this pool's workers lack; otherwise the task is retried as without onOOMKilled and "
        "a Warning Event OOMRouteUnavailable says why."))
    tags: tuple[Tag, ...] | None = Field(None, min_length=1, max_length=64, description=(
        "The tags the retried task takes instead of its own; at least one must be a tag "
        "this pool's workers lack (else OOMRouteUnavailable, as for pool)."))


class PoolSpec(_Model):
    """What the pool's workers run, where their tasks live, and how many run."""

    app: str = Field(max_length=512, pattern=r"^[^:\s]+:[A-Za-z_][A-Za-z0-9_.]*$", description=(
        "The workers' task app (`shoal worker --app`): MODULE:ATTR for a module installed in "
        "the image, or path/to/file.py:ATTR, relative to the image's working directory (/app "
        "in the Shoal image) or absolute."))
    template: WorkerTemplate = Field(description=WorkerTemplate.__doc__)
    database: Database = Field(description=Database.__doc__)
    tasks: TaskSelector = Field(default_factory=TaskSelector, description=TaskSelector.__doc__)
    concurrency: Concurrency = Field(4, description=(
        "Tasks one worker Pod runs at a time (`shoal worker --concurrency`); also the scaling "
        "target per replica unless scaling.targetTasksPerReplica is set."))
    batch_size: BatchSize | None = Field(None, description=(
        "Tasks claimed per database round trip (`shoal worker --batch-size`; unset: the "
        "worker's default)."))
    claim_ttl: Annotated[str, Duration(gt=0, le=MAX_CLAIM_TTL)] = Field(
        "30s", alias="claimTTL", description=(
        "Lease of a claimed task. A heartbeat every claimTTL/2 renews it; a task whose worker "
        "died is claimable again once its lease expires."))
    drain_timeout: Annotated[str, Duration(ge=0, le=MAX_DRAIN_TIMEOUT)] = Field("30s", description=(
        "Time a stopping worker gets to finish in-flight tasks before it releases them; the "
        "pod's grace period is this plus 5 s."))
    metrics_port: int = Field(9100, ge=1, le=65535, description=(
        "Port of the worker's /metrics, /healthz (liveness probe) and /readyz (readiness "
        "probe); the container port named metrics."))
    replicas: int = Field(1, ge=0, description=(
        "The replica count, read and written through the scale subresource. Manual mode: "
        "the count to run (`kubectl scale`, an HPA). Auto mode: the scaler's count, mirrored "
        "here; a write is overridden at its next evaluation."))
    scaling: Scaling = Field(default_factory=Scaling, description=Scaling.__doc__)
    on_oom_killed: OnOOMKilled | None = Field(None, alias="onOOMKilled",
                                              description=OnOOMKilled.__doc__)

    @property
    def target_per_replica(self) -> int:
        """Tasks one replica is expected to carry: the explicit target, else its concurrency.
        With a latency target, the slots per replica: its concurrency (the count the scaler
        falls back on without service history is then one task per slot)."""
        if self.scaling.target_queue_age is not None:
            return self.concurrency
        return self.scaling.target_tasks_per_replica or self.concurrency

    @property
    def claim_ttl_seconds(self) -> float:
        return parse_duration(self.claim_ttl)

    @property
    def drain_timeout_seconds(self) -> float:
        return parse_duration(self.drain_timeout)

    @classmethod
    def from_body(cls, spec: Mapping[str, Any]) -> PoolSpec:
        """Validate a CR's `spec`; raise InvalidPoolSpec naming the offending fields."""
        try:
            return cls.model_validate(dict(spec))
        except ValidationError as exc:
            raise InvalidPoolSpec(f"invalid WorkerPool spec: {problems(exc, 'spec')}") from None


def is_paused(annotations: Mapping[str, str] | None) -> bool:
    """Whether `pause=true` (or `shoal.dev/pause=true`) holds the replica count.

    Raises InvalidPoolSpec for a value other than true/false, or when the two
    spellings disagree: a typo must not silently resume scaling.
    """
    problems_: list[str] = []
    setting = read_flag(annotations, "pause", problems_)
    if problems_:
        raise InvalidPoolSpec("; ".join(problems_))
    return bool(setting and setting.flag)


class Backlog(_Model):
    """The tasks this pool serves, by state, at the last evaluation."""

    ready: int = Field(description="Claimable now.")
    running: int = Field(description="Leased by a worker.")
    waiting: int = Field(description="Delayed, or in a paused workflow.")
    dead: int = Field(description="Dead letters (`shoal dead-letters`).")


class PoolStatus(_Model):
    """Written by the operator."""

    observed_generation: int | None = Field(None, json_schema_extra={"format": "int64"},
                                            description="The spec generation the operator "
                                            "last acted on.")
    replicas: int | None = Field(None, description=(
        "Pods of the pool's Deployment (its status.replicas)."))
    ready_replicas: int | None = Field(None, description="Ready Pods of the pool's Deployment.")
    desired_replicas: int | None = Field(None, description=(
        "The replicas the scaler decided (manual mode: spec.replicas)."))
    selector: str | None = Field(None, description=(
        "Label selector of the pool's Pods (for the scale subresource)."))
    mode: Literal["auto", "manual"] | None = Field(None, description=(
        "The scaling mode in effect."))
    paused: bool | None = Field(None, description=(
        "True while the pause annotation holds the replica count."))
    last_scale_time: datetime | None = Field(None, description=(
        "When the scaler last changed the replica count."))
    last_scale_reason: str | None = Field(None, description="Why it did, in words.")
    backlog: Backlog | None = Field(None, description=Backlog.__doc__)
    conditions: Conditions = Field(
        default_factory=list, description=(
            "Ready, Reconciling, Stalled (kstatus), BackendReachable, ScalingActive and "
            "ScalingLimited."))


RESOURCE = Resource(
    kind="WorkerPool", plural="workerpools", short_names=("wp",),
    about=("WorkerPool: a Deployment of Shoal workers that claim tasks from PostgreSQL,\n"
           "scaled by the Shoal operator from the queue depth (or manually, through the\n"
           "scale subresource: `kubectl scale wp NAME --replicas=3` with scaling.mode=manual)."),
    spec=PoolSpec, status=PoolStatus,
    columns=(
        Column("Mode", ".spec.scaling.mode"),
        Column("Desired", ".status.desiredReplicas"),
        Column("Ready", ".status.readyReplicas"),
        Column("Backlog", ".status.backlog.ready", "Tasks ready to run now"),
        Column("Paused", ".status.paused"),
        Column("Status", '.status.conditions[?(@.type=="Ready")].reason'),
        Column("Age", ".metadata.creationTimestamp"),
        Column("Running", ".status.backlog.running", wide=True),
        Column("Dead", ".status.backlog.dead", wide=True),
        Column("Min", ".spec.scaling.minReplicas", wide=True),
        Column("Max", ".spec.scaling.maxReplicas", wide=True),
        Column("Backend", '.status.conditions[?(@.type=="BackendReachable")].reason', wide=True),
        Column("Last-Scale", ".status.lastScaleTime", wide=True),
    ),
    scale=Scale(spec_replicas=".spec.replicas", status_replicas=".status.replicas",
                selector=".status.selector"),
)
