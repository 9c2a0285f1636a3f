"""Pydantic models of the WorkerPool custom resource (v1alpha1).

`PoolSpec.from_body` turns a CR's spec into checked values with defaults
applied (the CRD applies the same defaults server-side); durations become
seconds. Anything the CRD's schema and CEL rules cannot catch raises
`InvalidPoolSpec` with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from shoal.errors import InvalidInput
from shoal.units import parse_duration
from shoal_operator.errors import InvalidPoolSpec, spec_problems
from shoal_operator.flags import read_flag

RESERVED_VOLUME = "tmp"  # the emptyDir every worker Pod gets at /tmp


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="ignore", frozen=True)


def _seconds(value: str | float) -> float:
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


class SecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = "dsn"


class Database(_Model):
    """Where the pool's tasks live: a Secret holding a postgresql:// DSN, and the schema."""

    secret_ref: SecretRef
    schema_: str | None = Field(None, alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class TaskSelector(_Model):
    """Which tasks the pool serves: a task namespace, the pool's tags, optional task names."""

    namespace: str = "default"
    tags: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


class WorkerTemplate(_Model):
    """The worker Pod: container fields plus Pod scheduling fields, as in a PodSpec."""

    image: str = Field(min_length=1)
    image_pull_policy: str | None = None
    command: tuple[str, ...] = ("shoal", "worker")
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    env_from: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = Field(default_factory=dict)
    service_account_name: str | None = None
    image_pull_secrets: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    volume_mounts: tuple[dict[str, Any], ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RateLimit(_Model):
    """At most max(pods, percent of the current replicas) added/removed per period."""

    pods: int = Field(4, ge=0)
    percent: int = Field(100, ge=0)
    period_seconds: float = Field(15.0, alias="period")

    _period = field_validator("period_seconds", mode="before")(_seconds)


class Fallback(_Model):
    """Replicas to run after `afterFailures` consecutive failed backend reads (None: hold)."""

    replicas: int | None = Field(None, ge=0)
    after_failures: int = Field(3, ge=1)


class Scaling(_Model):
    mode: Literal["auto", "manual"] = "auto"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(10, ge=0)
    target_tasks_per_replica: int | None = Field(None, ge=1)
    activation_threshold: int = Field(0, ge=0)
    tolerance_percent: int = Field(10, ge=0, le=100, alias="tolerance")
    scale_down_stabilization_seconds: float = Field(300.0, alias="scaleDownStabilization")
    scale_up: RateLimit = Field(default_factory=RateLimit)
    scale_down: RateLimit = Field(default_factory=lambda: RateLimit(pods=0, percent=100))
    fallback: Fallback = Field(default_factory=Fallback)

    _window = field_validator("scale_down_stabilization_seconds", mode="before")(_seconds)


class PoolSpec(_Model):
    """A WorkerPool's spec with defaults applied and durations in seconds."""

    app: str = Field(min_length=3, pattern=r"^[^:\s]+:[A-Za-z_][A-Za-z0-9_.]*$")
    template: WorkerTemplate
    database: Database
    tasks: TaskSelector = Field(default_factory=TaskSelector)
    concurrency: int = Field(4, ge=1)
    batch_size: int | None = Field(None, ge=1)
    claim_ttl_seconds: float = Field(30.0, alias="claimTTL", gt=0)
    drain_timeout_seconds: float = Field(30.0, alias="drainTimeout", ge=0)
    metrics_port: int = Field(9100, ge=1, le=65535)
    replicas: int | None = Field(None, ge=0)
    scaling: Scaling = Field(default_factory=Scaling)

    _durations = field_validator("claim_ttl_seconds", "drain_timeout_seconds",
                                 mode="before")(_seconds)

    @property
    def target_per_replica(self) -> int:
        """Tasks one replica is expected to carry: the explicit target, else its concurrency."""
        return self.scaling.target_tasks_per_replica or self.concurrency

    @classmethod
    def from_body(cls, spec: Mapping[str, Any]) -> PoolSpec:
        """Validate a CR's `spec`; raise InvalidPoolSpec naming the offending fields."""
        try:
            parsed = cls.model_validate(dict(spec))
        except ValidationError as exc:
            raise InvalidPoolSpec(f"invalid WorkerPool spec: {spec_problems(exc)}") from None
        if parsed.scaling.min_replicas > parsed.scaling.max_replicas:
            raise InvalidPoolSpec("invalid WorkerPool spec: scaling.minReplicas "
                                  f"({parsed.scaling.min_replicas}) exceeds maxReplicas "
                                  f"({parsed.scaling.max_replicas})")
        volumes = [v.get("name") for v in parsed.template.volumes]
        if RESERVED_VOLUME in volumes or len(set(volumes)) < len(volumes):
            raise InvalidPoolSpec("invalid WorkerPool spec: template.volumes names must be "
                                  f"unique and not {RESERVED_VOLUME!r} (the operator's /tmp)")
        return parsed


def is_paused(annotations: Mapping[str, str] | None) -> bool:
    """Whether `pause=true` (or `shoal.dev/pause=true`) holds the replica count.

    Raises InvalidPoolSpec for a value other than true/false, or when the two
    spellings disagree: a typo must not silently resume scaling.
    """
    problems: list[str] = []
    setting = read_flag(annotations, "pause", problems)
    if problems:
        raise InvalidPoolSpec("; ".join(problems))
    return bool(setting and setting.flag)
