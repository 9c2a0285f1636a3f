"""The backend layer: Shoal's schema, migrations and every query (asyncpg).

It knows nothing of Kubernetes or of the worker runtime; both call `Backend`.
"""

from shoal.backend.codec import MAX_JSON_BYTES, check_text, json_text, printable
from shoal.backend.connections import TRANSIENT_ERRORS, Endpoint, LinkTimeouts, describe
from shoal.backend.driver import (
    FINAL_WORKFLOW_STATES,
    Backend,
    Connection,
    parse_handoff,
)
from shoal.backend.models import (
    DEFAULT_LEASE_EXPIRIES,
    Backlog,
    CancelResult,
    Candidacy,
    ClaimedTask,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    Election,
    HeartbeatReply,
    KilledLease,
    KilledWorker,
    NewTask,
    Outcome,
    QueueDepth,
    Reroute,
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
from shoal.backend.queries import RESIGNED

__all__ = [
    "DEFAULT_LEASE_EXPIRIES",
    "FINAL_WORKFLOW_STATES",
    "MAX_JSON_BYTES",
    "RESIGNED",
    "TRANSIENT_ERRORS",
    "Backend",
    "Backlog",
    "CancelResult",
    "Candidacy",
    "ClaimedTask",
    "CommandRecord",
    "Connection",
    "DeadLetter",
    "DeadLetterFilter",
    "Election",
    "Endpoint",
    "HeartbeatReply",
    "KilledLease",
    "KilledWorker",
    "LinkTimeouts",
    "NewTask",
    "Outcome",
    "QueueDepth",
    "Reroute",
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
    "check_text",
    "describe",
    "json_text",
    "parse_handoff",
    "printable",
]
