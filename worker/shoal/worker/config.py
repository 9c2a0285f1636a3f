"""Worker settings, validated once at start-up, and the `shoal worker` flags that carry them.

`WorkerSettings` is the one statement of every setting a flag carries: its
type, bounds, default and help. `shoal worker`'s flags are derived from its
fields (`shoal.cli.worker`), and `to_argv` writes settings back as flags,
which is how the operator configures a pool's workers: parsing `to_argv()`
gives back the same settings. Durations are seconds (flags: `30s`, `5m`).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shoal.dag import Tag

# Bounds a WorkerPool's spec shares with the worker's flags.
Concurrency = Annotated[int, Field(ge=1, le=10_000)]
BatchSize = Annotated[int, Field(ge=1, le=10_000)]
# Upper bounds (seconds) that keep every interval the database computes from these in range.
MAX_CLAIM_TTL = 86_400
MAX_DRAIN_TIMEOUT = 86_400


def default_worker_id() -> str:
    """`$POD_NAME` in Kubernetes, else `{hostname}-{pid}`."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseModel):
    """How one worker process claims and runs tasks: every `shoal worker` flag but --dsn."""

    model_config = ConfigDict(frozen=True)

    db_schema: str = Field("shoal", description="schema holding Shoal's tables",
                           json_schema_extra={"flag": "--schema"})
    namespace: str = Field("default", description="task namespace to serve")
    tags: tuple[Tag, ...] = Field((), description="this worker's tags, comma-separated")
    tasks: tuple[str, ...] | None = Field(None, description=(
        "serve only these task names, comma-separated (default: all the app registers)"))
    concurrency: Concurrency = Field(10, description="tasks run at once")
    batch_size: BatchSize = Field(10, description="tasks claimed per database round trip")
    claim_ttl: float = Field(30.0, gt=0, le=MAX_CLAIM_TTL, description="lease of a claimed task")
    poll_interval: float = Field(30.0, gt=0, le=3_600, description=(
        "how often an idle worker looks for tasks without a notification (a fallback: "
        "every enqueue, retry coming due and reconnect wakes it)"))
    drain_timeout: float = Field(30.0, ge=0, le=MAX_DRAIN_TIMEOUT, description=(
        "on SIGTERM, time to finish in-flight tasks before releasing them"))
    retention: float = Field(7 * 86400.0, gt=0, le=100 * 365 * 86400.0, description=(
        "how long finished tasks and workflows are kept"))
    metrics_host: str = Field(default_factory=lambda: os.environ.get("POD_IP") or "0.0.0.0",
                              description="address of /metrics, /healthz and /readyz "
                              "(default $POD_IP or 0.0.0.0)")
    metrics_port: int = Field(9100, ge=0, le=65535, description="port of /metrics, /healthz "
                              "and /readyz; 0 disables them")
    worker_id: str = Field(default_factory=default_worker_id, min_length=1,
                           description="default: $POD_NAME or HOST-PID")
    pool: str | None = Field(default_factory=lambda: os.environ.get("SHOAL_POOL"),
                             description="WorkerPool name recorded in the liveness row "
                             "(default $SHOAL_POOL)")

    @classmethod
    def flag(cls, field: str) -> str:
        """The flag of `field`: `--batch-size` for batch_size (`--schema` for db_schema)."""
        extra = cls.model_fields[field].json_schema_extra
        named = extra.get("flag") if isinstance(extra, dict) else None
        return str(named) if named else "--" + field.replace("_", "-")

    def to_argv(self) -> list[str]:
        """The flags that give back these settings: those of the fields set explicitly."""
        argv: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in self.model_fields_set and value is not None:
                argv += [self.flag(name), _text(value)]
        return argv


class WorkerConfig(WorkerSettings):
    """The settings plus what no flag of `shoal worker`'s own carries: the database DSN
    (`--dsn`, default $SHOAL_DSN) and the Pod's name."""

    dsn: str = Field(min_length=1)
    pod_name: str | None = Field(default_factory=lambda: os.environ.get("POD_NAME"))


def _text(value: Any) -> str:
    """A value as its flag writes it: seconds as `30s`, lists comma-separated."""
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)
