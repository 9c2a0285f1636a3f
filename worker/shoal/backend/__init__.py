"""The backend layer: Shoal's schema, migrations and every query (asyncpg).

It knows nothing of Kubernetes or of the worker runtime; both call `Backend`.
"""

from shoal.backend.driver import (
    FINAL_WORKFLOW_STATES,
    TRANSIENT_ERRORS,
    Backend,
    Connection,
    connect,
    parse_handoff,
)
from shoal.backend.models import (
    Backlog,
    CancelResult,
    ClaimedTask,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    HeartbeatReply,
    NewTask,
    Outcome,
    QueueDepth,
    Schedule,
    ScheduleStatus,
    StepStatus,
    TaskFilter,
    TaskRow,
    TaskSummary,
    WorkerIdentity,
    WorkerRow,
    WorkflowStatus,
)
from shoal.backend.notifications import Subscription

__all__ = [
    "FINAL_WORKFLOW_STATES",
    "TRANSIENT_ERRORS",
    "Backend",
    "Backlog",
    "CancelResult",
    "ClaimedTask",
    "CommandRecord",
    "Connection",
    "DeadLetter",
    "DeadLetterFilter",
    "HeartbeatReply",
    "NewTask",
    "Outcome",
    "QueueDepth",
    "Schedule",
    "ScheduleStatus",
    "StepStatus",
    "Subscription",
    "TaskFilter",
    "TaskRow",
    "TaskSummary",
    "WorkerIdentity",
    "WorkerRow",
    "WorkflowStatus",
    "connect",
    "parse_handoff",
]
