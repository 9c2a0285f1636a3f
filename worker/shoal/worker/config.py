"""Worker settings, validated once at start-up."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel, ConfigDict, Field


def default_worker_id() -> str:
    """`$POD_NAME` in Kubernetes, else `{hostname}-{pid}`."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class WorkerConfig(BaseModel):
    """How one worker process claims and runs tasks."""

    model_config = ConfigDict(frozen=True)

    dsn: str = Field(min_length=1)
    db_schema: str = "shoal"
    namespace: str = "default"
    tags: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None  # a subset of the app's tasks; None: all
    concurrency: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=10, ge=1, le=10_000)
    # Upper bounds keep every interval the database computes from these in range.
    claim_ttl: float = Field(default=30.0, gt=0, le=86_400)
    poll_interval: float = Field(default=1.0, gt=0, le=3_600)
    drain_timeout: float = Field(default=30.0, ge=0, le=86_400)
    metrics_host: str = Field(default_factory=lambda: os.environ.get("POD_IP") or "0.0.0.0")
    metrics_port: int = Field(default=9100, ge=0, le=65535)  # 0 disables the endpoint
    worker_id: str = Field(default_factory=default_worker_id, min_length=1)
    pool: str | None = None
    pod_name: str | None = Field(default_factory=lambda: os.environ.get("POD_NAME"))
    # finished tasks and workflows are kept this long
    retention: float = Field(default=7 * 86400.0, gt=0, le=100 * 365 * 86400.0)
