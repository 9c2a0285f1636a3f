"""The backend layer: Shoal's schema, migrations and every query (asyncpg).

It knows nothing of Kubernetes or of the worker runtime; both call `Backend`.
"""

from shoal.backend.driver import FINAL_WORKFLOW_STATES, Backend, connect, parse_handoff
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
from shoal.backend.notifications import Subscription

__all__ = [
    "FINAL_WORKFLOW_STATES",
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
    "Subscription",
    "TaskRow",
    "WorkerIdentity",
    "WorkerRow",
    "WorkflowStatus",
    "connect",
    "parse_handoff",
]
