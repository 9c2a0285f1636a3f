"""The backend layer: Shoal's schema, migrations and every query (asyncpg).

It knows nothing of Kubernetes or of the worker runtime; both call `Backend`.
"""

from shoal.backend.driver import Backend, connect
from shoal.backend.models import (
    Backlog,
    ClaimedTask,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    HeartbeatReply,
    NewTask,
    Outcome,
    StepStatus,
    TaskRow,
    WorkerIdentity,
    WorkerRow,
    WorkflowStatus,
)

__all__ = [
    "Backend",
    "Backlog",
    "ClaimedTask",
    "CommandRecord",
    "DeadLetter",
    "DeadLetterFilter",
    "HeartbeatReply",
    "NewTask",
    "Outcome",
    "StepStatus",
    "TaskRow",
    "WorkerIdentity",
    "WorkerRow",
    "WorkflowStatus",
    "connect",
]
