"""Shoal: pooled workers that claim tasks from PostgreSQL, steered by a Kubernetes operator.

Layers, imported in one direction only: `shoal.backend` (SQL, asyncpg) ←
`shoal.worker` (task registry, runtime) ← `shoal_operator` (kopf handlers).
"""

from shoal.client import Client, Job, parse_workflow
from shoal.dag import StepSpec, WorkflowSpec
from shoal.errors import (
    BackendUnavailable,
    InvalidCommand,
    InvalidInput,
    InvalidWorkflow,
    NotFound,
    ShoalError,
    TaskFailed,
    UnknownTask,
    WaitTimeout,
    WorkflowFailed,
)
from shoal.version import VERSION
from shoal.worker import App, PermanentError, TaskContext, Worker, WorkerConfig

__version__ = VERSION

__all__ = [
    "App",
    "BackendUnavailable",
    "Client",
    "InvalidCommand",
    "InvalidInput",
    "InvalidWorkflow",
    "Job",
    "NotFound",
    "PermanentError",
    "ShoalError",
    "StepSpec",
    "TaskContext",
    "TaskFailed",
    "UnknownTask",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "WorkflowFailed",
    "WorkflowSpec",
    "parse_workflow",
]
